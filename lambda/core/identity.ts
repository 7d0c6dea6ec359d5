/**
 * Who a request is billed to, and how it is segmented: the `Helicone-*` request headers and OpenAI's `user` /
 * `safety_identifier` body fields. Everything here is validated before anything is sent upstream.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { BadRequestError, UnauthorizedError } from './errors';

export const USER_ID_HEADER = 'helicone-user-id';
export const PROPERTY_HEADER_PREFIX = 'helicone-property-';
export const REQUEST_ID_HEADER = 'helicone-request-id';

export const MAX_USER_ID_LENGTH = 256;
export const MAX_PROPERTIES = 20;
export const MAX_PROPERTY_VALUE_LENGTH = 256;
const PROPERTY_NAME = /^[A-Za-z0-9_-]{1,64}$/;
// C0 controls, DEL and C1 controls: they break logs, CSV exports and header round trips.
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function checkUserId(value: string, source: string): string {
  if (value.length === 0) throw new BadRequestError('invalid_user_id', `${source} is empty.`, { param: source });
  if (value.length > MAX_USER_ID_LENGTH) {
    throw new BadRequestError(
      'invalid_user_id',
      `${source} is ${value.length} characters long; the limit is ${MAX_USER_ID_LENGTH}.`,
      { param: source },
    );
  }
  if (CONTROL_CHARACTERS.test(value)) {
    throw new BadRequestError('invalid_user_id', `${source} contains control characters.`, { param: source });
  }
  return value;
}

/** The parts of a JSON request body identity looks at. */
export interface IdentityBody {
  readonly user?: unknown;
  readonly safety_identifier?: unknown;
}

/**
 * The end user a request is billed to: the `Helicone-User-Id` header wins, then body `user`, then body
 * `safety_identifier`; null when none is given (the request still counts, under no user).
 * @example userIdFrom(new Headers({ 'Helicone-User-Id': 'u1' }), { user: 'u2' }) // 'u1'
 */
export function userIdFrom(headers: Headers, body: IdentityBody | undefined): string | null {
  const header = headers.get(USER_ID_HEADER);
  if (header !== null) return checkUserId(header.trim(), 'Helicone-User-Id');
  for (const field of ['user', 'safety_identifier'] as const) {
    const value = body?.[field];
    if (value === undefined || value === null || value === '') continue;
    if (typeof value !== 'string') {
      throw new BadRequestError('invalid_user_id', `Body field "${field}" must be a string.`, { param: field });
    }
    return checkUserId(value, field);
  }
  return null;
}

/**
 * Custom properties from every `Helicone-Property-<Name>` header, keyed by `<name>` in lower case: header names
 * are case-insensitive (and always lower case over HTTP/2), so `Plan` and `plan` must be one property.
 * @example propertiesFrom(new Headers({ 'Helicone-Property-Plan': 'premium' })) // { plan: 'premium' }
 */
export function propertiesFrom(headers: Headers): Record<string, string> {
  const properties: Record<string, string> = {};
  let count = 0;
  for (const [headerName, rawValue] of headers) {
    if (!headerName.startsWith(PROPERTY_HEADER_PREFIX)) continue;
    const name = headerName.slice(PROPERTY_HEADER_PREFIX.length);
    if (!PROPERTY_NAME.test(name)) {
      throw new BadRequestError(
        'invalid_property',
        `Property name "${name.slice(0, 80)}" must be 1-64 characters of A-Z, a-z, 0-9, "_" or "-".`,
        { param: headerName.slice(0, 100) },
      );
    }
    count += 1;
    if (count > MAX_PROPERTIES) {
      throw new BadRequestError('too_many_properties', `At most ${MAX_PROPERTIES} Helicone-Property-* headers are allowed.`, {
        param: headerName,
      });
    }
    const value = rawValue.trim();
    if (value.length > MAX_PROPERTY_VALUE_LENGTH) {
      throw new BadRequestError(
        'invalid_property',
        `${headerName} is ${value.length} characters long; the limit is ${MAX_PROPERTY_VALUE_LENGTH}.`,
        { param: headerName },
      );
    }
    if (CONTROL_CHARACTERS.test(value)) {
      throw new BadRequestError('invalid_property', `${headerName} contains control characters.`, { param: headerName });
    }
    properties[name] = value;
  }
  return properties;
}

/**
 * The request's id: a valid UUID in `Helicone-Request-Id` is kept (lower-cased), otherwise a new one.
 * An invalid value is an error rather than silently replaced, so callers notice their ids are not being used.
 */
export function requestIdFrom(headers: Headers, newId: () => string): string {
  const given = headers.get(REQUEST_ID_HEADER);
  if (given === null) return newId();
  const trimmed = given.trim();
  if (!UUID.test(trimmed)) {
    throw new BadRequestError('invalid_request_id', 'Helicone-Request-Id must be a UUID.', { param: 'Helicone-Request-Id' });
  }
  return trimmed.toLowerCase();
}

export const USER_ID_SIGNATURE_HEADER = 'helicone-user-id-signature';

/**
 * How user ids are trusted and stored.
 * - Signing: when the browser or a mobile app talks to the gateway directly, an end user could name someone else
 *   in `Helicone-User-Id`. With signing secrets set, the app's backend signs each user id
 *   (`hex(HMAC-SHA256(secret, userId))`, sent as `Helicone-User-Id-Signature`) and the gateway refuses a request
 *   whose user id is missing, unsigned or wrongly signed. Several secrets may be valid at once, for rotation.
 * - Pseudonymisation: with a hashing secret set, the id is replaced by `u_` + 32 hex of HMAC-SHA256(secret, id)
 *   before anything is stored or logged; the metrics API hashes ids in its paths the same way, so a known id can
 *   still be looked up.
 */
export interface UserIdPolicy {
  /** Checks the signature (when required) and returns the id to store. */
  admit(userId: string | null, headers: Headers): string | null;
  /** The stored form of a user id given to the metrics API. */
  stored(userId: string): string;
}

export interface UserIdPolicyOptions {
  readonly signingSecrets?: readonly string[];
  readonly hashSecret?: string;
}

/** @example const policy = userIdPolicy({ signingSecrets: ['s3cret'] }); policy.admit('u1', headers) */
export function userIdPolicy(options: UserIdPolicyOptions): UserIdPolicy {
  const signing = (options.signingSecrets ?? []).map((secret) => Buffer.from(secret, 'utf8'));
  const hashSecret = options.hashSecret;
  const stored = (userId: string): string =>
    hashSecret === undefined ? userId : `u_${createHmac('sha256', hashSecret).update(userId, 'utf8').digest('hex').slice(0, 32)}`;
  return {
    stored,
    admit(userId, headers) {
      if (signing.length > 0) {
        if (userId === null) {
          throw new UnauthorizedError('missing_user_id', 'This gateway requires a signed Helicone-User-Id.', {
            param: 'Helicone-User-Id',
          });
        }
        // The signature covers the id from the header only: a body `user` cannot carry one.
        if (headers.get(USER_ID_HEADER) === null) {
          throw new UnauthorizedError('unsigned_user_id', 'Send the user id in Helicone-User-Id with its signature.', {
            param: 'Helicone-User-Id',
          });
        }
        const presented = (headers.get(USER_ID_SIGNATURE_HEADER) ?? '').trim().toLowerCase();
        if (!/^[0-9a-f]{64}$/.test(presented)) {
          throw new UnauthorizedError('invalid_user_signature', 'Helicone-User-Id-Signature must be 64 hex characters.', {
            param: 'Helicone-User-Id-Signature',
          });
        }
        const given = Buffer.from(presented, 'hex');
        let valid = false;
        for (const secret of signing) {
          const expected = createHmac('sha256', secret).update(userId, 'utf8').digest();
          if (timingSafeEqual(expected, given)) valid = true;
        }
        if (!valid) {
          throw new UnauthorizedError('invalid_user_signature', 'Helicone-User-Id-Signature does not match the user id.', {
            param: 'Helicone-User-Id-Signature',
          });
        }
      }
      return userId === null ? null : stored(userId);
    },
  };
}

/** Signs a user id the way the gateway checks it; for the app's backend (and tests). */
export function signUserId(secret: string, userId: string): string {
  return createHmac('sha256', secret).update(userId, 'utf8').digest('hex');
}
