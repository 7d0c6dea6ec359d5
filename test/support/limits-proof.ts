/**
 * The concurrency proof of limits, shared by the local (DuckDB) and AWS (dynalite) store tests: N requests sent
 * at once through the real proxy core to the fake upstream, against a limit that holds exactly k of them.
 *
 * The upstream call of every admitted request is held at a gate until each of the N requests has either reached
 * the upstream or been answered by the gateway. Nothing is settled before every decision is made, so the count of
 * forwarded requests is exact and independent of timing.
 */
import { proxyConfigFromEnv } from '../../lambda/core/config';
import { collectingContext } from '../../lambda/core/handler';
import { StaticKeyStore } from '../../lambda/core/keys';
import { createLimiter, NO_DEFAULT_LIMITS, worstCaseCostNano } from '../../lambda/core/limits';
import { silentLogger } from '../../lambda/core/log';
import type { LimitStore } from '../../lambda/core/ports';
import { createProxy } from '../../lambda/core/proxy';
import { estimatePromptTokens, lazyTokenCounter } from '../../lambda/core/tokens';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { o200kCounter } from '../../lambda/tokenizer';
import { RecordingCounters, RecordingSink } from './recording-stores';

export interface ProofResult {
  /** Requests that reached the upstream. */
  readonly forwarded: number;
  /** Status of each answer, in sending order. */
  readonly statuses: readonly number[];
  /** The usage events written for all N requests. */
  readonly events: readonly UsageEvent[];
  /** The budget the user was given (budget proof), nano-dollars. */
  readonly budgetNano: number;
}

export interface ProofOptions {
  readonly store: LimitStore;
  readonly upstreamUrl: string;
  readonly userId: string;
  /** Requests sent at once. */
  readonly n: number;
  /** Requests the limit holds. */
  readonly k: number;
  /** `budget`: a monthly budget of k worst cases and a half; `window`: a `Helicone-RateLimit-Policy` of k requests. */
  readonly limit: 'budget' | 'window';
}

export async function runConcurrencyProof(options: ProofOptions): Promise<ProofResult> {
  const { store, n, k, userId } = options;
  const body = { model: 'gpt-4o-mini', max_tokens: 64, messages: [{ role: 'user', content: 'Count to three, please' }] };

  let budgetNano = 0;
  if (options.limit === 'budget') {
    const prompt = estimatePromptTokens(o200kCounter, 'chat', body);
    const worst = worstCaseCostNano(
      { endpoint: 'chat', body, requestedModel: body.model, provider: 'openai', at: Date.now() },
      prompt,
      NO_DEFAULT_LIMITS.assumedOutputTokens,
    )!;
    budgetNano = k * worst + Math.floor(worst / 2);
    await store.putLimits(userId, { monthlyBudgetNanoUsd: budgetNano, updatedAt: new Date().toISOString() });
  }

  let forwarded = 0;
  let answered = 0;
  let gateOpen = false;
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  let allDecided!: () => void;
  const decided = new Promise<void>((resolve) => (allDecided = resolve));
  const progress = () => {
    if (forwarded + answered >= n) allDecided();
  };
  const gatedFetch: typeof fetch = async (input, init) => {
    forwarded++;
    progress();
    await gate;
    return fetch(input, init);
  };

  const sink = new RecordingSink();
  const proxy = createProxy({
    config: proxyConfigFromEnv({ UPSTREAM_OPENAI_URL: options.upstreamUrl }),
    gatewayKeys: new StaticKeyStore([]),
    recorder: new UsageRecorder({ sink, counters: new RecordingCounters(), log: silentLogger, retryDelayMs: 1 }),
    tokenCounter: lazyTokenCounter(async () => o200kCounter),
    limiter: createLimiter({ store, config: NO_DEFAULT_LIMITS, log: silentLogger }),
    log: silentLogger,
    fetch: gatedFetch,
  });

  const contexts = Array.from({ length: n }, () => collectingContext());
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    authorization: 'Bearer sk-test-provider-key',
    'Helicone-User-Id': userId,
    ...(options.limit === 'window' ? { 'Helicone-RateLimit-Policy': `${k};w=${366 * 86_400}` } : {}),
  };
  const responses = contexts.map((ctx) =>
    proxy(new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers, body: JSON.stringify(body) }), ctx).then(
      (response) => {
        if (!gateOpen) {
          answered++;
          progress();
        }
        return response;
      },
    ),
  );
  await decided;
  const forwardedBeforeGate = forwarded;
  gateOpen = true;
  openGate();
  const statuses: number[] = [];
  for (const response of responses) {
    const answer = await response;
    await answer.arrayBuffer();
    statuses.push(answer.status);
  }
  for (const ctx of contexts) await ctx.settled();
  return { forwarded: forwardedBeforeGate, statuses, events: sink.events, budgetNano };
}
