/**
 * The metrics API routes of per-user limits, served with the metrics API's auth and error handling:
 *
 * - `GET /metrics/users/{userId}/limits`: the user's own limits, the defaults, what applies, and the month's spend;
 * - `PUT /metrics/users/{userId}/limits`: sets the user's own limits (fields left out follow the defaults);
 * - `DELETE /metrics/users/{userId}/limits`: removes them (back to the defaults).
 */
import { BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError } from './errors';
import {
  effectiveDocumentOf,
  effectiveLimits,
  limitsDocumentOf,
  monthOf,
  parseLimitsDocument,
  type LimitsConfig,
} from './limits';
import { json, type MetricsRoute } from './metrics-api';
import type { LimitStore } from './ports';
import { QueryParams } from './query-params';
import { nanoToUsd } from './usage-event';

export interface LimitRoutesDeps {
  readonly store: LimitStore;
  readonly config: LimitsConfig;
  /** @default Date.now */
  readonly now?: () => number;
}

/** Largest PUT body: a handful of fields. */
const MAX_LIMITS_BODY_BYTES = 16 * 1024;
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

function checkUserId(userId: string): string {
  if (userId.length > 256 || CONTROL_CHARACTERS.test(userId)) {
    throw new BadRequestError('invalid_user_id', 'The user id must be at most 256 characters without control characters.', {
      param: 'userId',
    });
  }
  return userId;
}

async function readJson(request: Request): Promise<unknown> {
  const type = (request.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new UnsupportedMediaTypeError('unsupported_media_type', 'Send the limits as JSON (Content-Type: application/json).', {
      param: 'Content-Type',
    });
  }
  const text = await request.text();
  if (Buffer.byteLength(text, 'utf8') > MAX_LIMITS_BODY_BYTES) {
    throw new PayloadTooLargeError('body_too_large', `The limits must be at most ${MAX_LIMITS_BODY_BYTES} bytes.`, { param: 'body' });
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new BadRequestError('invalid_json', 'The request body is not valid JSON.', { param: 'body' });
  }
}

/**
 * @example createMetricsApi({ counters, metricsKeys, log, routes: limitRoutes({ store, config }) })
 */
export function limitRoutes(deps: LimitRoutesDeps): MetricsRoute[] {
  const now = deps.now ?? Date.now;

  async function view(userId: string): Promise<Response> {
    const month = monthOf(now());
    const [own, [used]] = await Promise.all([
      deps.store.getLimits(userId),
      deps.store.read([{ kind: 'budget', userId, month }]),
    ]);
    const effective = effectiveLimits(deps.config.defaults, own);
    const budget = effective.monthlyBudgetNanoUsd;
    return json({
      user_id: userId,
      limits: own === null ? null : limitsDocumentOf(own),
      defaults: effectiveDocumentOf(deps.config.defaults),
      effective: effectiveDocumentOf(effective),
      budget: {
        month,
        used_usd: nanoToUsd(used!),
        remaining_usd: budget === null ? null : nanoToUsd(Math.max(0, budget - used!)),
      },
    });
  }

  const path = ['users', ':userId', 'limits'];
  return [
    {
      method: 'GET',
      path,
      async handle({ url, params }) {
        QueryParams.of(url).rejectUnknown();
        return view(checkUserId(params.userId!));
      },
    },
    {
      method: 'PUT',
      path,
      async handle({ request, url, params }) {
        QueryParams.of(url).rejectUnknown();
        const userId = checkUserId(params.userId!);
        const limits = parseLimitsDocument(await readJson(request), new Date(now()).toISOString());
        await deps.store.putLimits(userId, limits);
        return view(userId);
      },
    },
    {
      method: 'DELETE',
      path,
      async handle({ url, params }) {
        QueryParams.of(url).rejectUnknown();
        const userId = checkUserId(params.userId!);
        await deps.store.putLimits(userId, null);
        return view(userId);
      },
    },
  ];
}
