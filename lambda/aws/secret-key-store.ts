/**
 * The metrics admin key (`Authorization: Bearer <key>` on `/metrics/*`), held in AWS Secrets Manager.
 *
 * The secret is read once and reused for a few minutes, so a rotation takes effect within that time without a
 * deploy. Only the SHA-256 of the secret is kept in memory. A presented key is hashed and the two digests are
 * compared with `timingSafeEqual`: equal-length inputs, constant time, whatever the presented key's length.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { KeyStore } from '../core/ports';

export interface SecretKeyStoreOptions {
  readonly client: SecretsManagerClient;
  /** ARN or name of the secret. */
  readonly secretId: string;
  /** How long the secret is reused before it is read again. @default 300000 */
  readonly cacheTtlMs?: number;
  /** @default Date.now */
  readonly now?: () => number;
}

/** The secret exists but holds no usable key. */
export class SecretValueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecretValueError';
  }
}

interface LoadedSecret {
  readonly digest: Buffer;
  readonly keyId: string;
}

/**
 * The key inside a secret value: the value itself, or the `key` field when the value is a JSON object (what CDK's
 * `generateSecretString({ secretStringTemplate, generateStringKey: 'key' })` produces).
 * @example keyFromSecretValue('{"key":"s3cret"}') // 's3cret'
 */
export function keyFromSecretValue(value: string): string {
  const trimmed = value.trim();
  if (trimmed.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch {
      throw new SecretValueError('The metrics key secret looks like JSON but does not parse.');
    }
    const key = (parsed as { key?: unknown }).key;
    if (typeof key !== 'string' || key === '') {
      throw new SecretValueError('The metrics key secret is a JSON object without a non-empty string "key".');
    }
    return key;
  }
  if (trimmed === '') throw new SecretValueError('The metrics key secret is empty.');
  return trimmed;
}

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/**
 * @example
 * const metricsKeys = new SecretKeyStore({ client: new SecretsManagerClient({}), secretId: secretArn });
 * const keyId = await metricsKeys.verify(bearerToken); // null when wrong
 */
export class SecretKeyStore implements KeyStore {
  readonly enabled = true;
  private readonly client: SecretsManagerClient;
  private readonly secretId: string;
  private readonly ttlMs: number;
  private readonly now: () => number;
  private loaded: { readonly expiresAt: number; readonly secret: Promise<LoadedSecret> } | undefined;

  constructor(options: SecretKeyStoreOptions) {
    this.client = options.client;
    this.secretId = options.secretId;
    this.ttlMs = options.cacheTtlMs ?? 300_000;
    this.now = options.now ?? Date.now;
  }

  /** The key id (first 12 hex of the secret's SHA-256) when `key` is the secret, else null. */
  async verify(key: string): Promise<string | null> {
    const secret = await this.secret();
    return timingSafeEqual(sha256(key), secret.digest) ? secret.keyId : null;
  }

  private secret(): Promise<LoadedSecret> {
    const now = this.now();
    if (this.loaded && this.loaded.expiresAt > now) return this.loaded.secret;
    // Concurrent requests share one read; a failed read is forgotten so the next request tries again.
    const secret = this.load();
    const entry = { expiresAt: now + this.ttlMs, secret };
    this.loaded = entry;
    secret.catch(() => {
      if (this.loaded === entry) this.loaded = undefined;
    });
    return secret;
  }

  private async load(): Promise<LoadedSecret> {
    const out = await this.client.send(new GetSecretValueCommand({ SecretId: this.secretId }));
    const value = out.SecretString ?? (out.SecretBinary ? Buffer.from(out.SecretBinary).toString('utf8') : undefined);
    if (value === undefined) throw new SecretValueError('The metrics key secret has no value.');
    const digest = sha256(keyFromSecretValue(value));
    return { digest, keyId: digest.toString('hex').slice(0, 12) };
  }
}
