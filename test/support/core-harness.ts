/**
 * Builds the proxy core in-process against a fake upstream, with recording stores, so tests can call it with a
 * `Request` and look at the response and the usage event it wrote.
 */
import { proxyConfigFromEnv } from '../../lambda/core/config';
import { collectingContext } from '../../lambda/core/handler';
import { StaticKeyStore } from '../../lambda/core/keys';
import { silentLogger, type Logger } from '../../lambda/core/log';
import { createProxy } from '../../lambda/core/proxy';
import { lazyTokenCounter } from '../../lambda/core/tokens';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { RecordingCounters, RecordingSink } from './recording-stores';

export interface CoreHarness {
  readonly sink: RecordingSink;
  readonly counters: RecordingCounters;
  /** Sends a request through the proxy, reads the whole body, waits for metering, returns both. */
  send(path: string, init?: RequestInit): Promise<{ response: Response; text: string; event: UsageEvent | undefined }>;
  handle: ReturnType<typeof createProxy>;
}

export function coreHarness(options: {
  upstreamUrl: string;
  gatewayKeys?: string[];
  env?: Record<string, string>;
  log?: Logger;
  fetch?: typeof fetch;
}): CoreHarness {
  const sink = new RecordingSink();
  const counters = new RecordingCounters();
  const log = options.log ?? silentLogger;
  const handle = createProxy({
    config: proxyConfigFromEnv({ UPSTREAM_OPENAI_URL: options.upstreamUrl, ...options.env }),
    gatewayKeys: new StaticKeyStore(options.gatewayKeys ?? []),
    recorder: new UsageRecorder({ sink, counters, log, retryDelayMs: 1 }),
    tokenCounter: lazyTokenCounter(async () => (await import('../../lambda/tokenizer')).o200kCounter),
    log,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  return {
    sink,
    counters,
    handle,
    async send(path, init) {
      const before = sink.events.length;
      const ctx = collectingContext();
      const response = await handle(new Request(`http://gateway.test${path}`, init), ctx);
      const text = await response.text();
      await ctx.settled();
      return { response, text, event: sink.events[before] };
    },
  };
}

export function chatBody(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the gateway' }], ...extra });
}

export const JSON_HEADERS = { 'content-type': 'application/json', authorization: 'Bearer sk-test-provider-key' };
