/**
 * Writes a finished request's usage event to the event log and the live counters. Runs after the client's
 * response; never throws, so bookkeeping can never break or delay an answer.
 *
 * Both writes start together (a Lambda is billed until they finish). The event log is the source of truth: if the
 * sink fails after its own retries and fallbacks the event is logged whole (`usage_event_undelivered`) so it can be
 * replayed from the logs. A counter failure is retried, then logged with the request id; counters are rebuilt
 * from the log by `reconcile`.
 */
import type { CounterStore, EventSink } from './ports';
import type { UsageEvent } from './usage-event';
import { describeError, type Logger } from './log';

export interface UsageRecorderOptions {
  readonly sink: EventSink;
  readonly counters: CounterStore;
  readonly log: Logger;
  /** Attempts per store before giving up. @default 3 */
  readonly attempts?: number;
  /** First retry delay; doubles per attempt. @default 50 */
  readonly retryDelayMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class UsageRecorder {
  private readonly attempts: number;
  private readonly retryDelayMs: number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly options: UsageRecorderOptions) {
    this.attempts = options.attempts ?? 3;
    this.retryDelayMs = options.retryDelayMs ?? 50;
    this.sleep = options.sleep ?? defaultSleep;
  }

  /** Resolves when both writes are done or given up on; never rejects. */
  async record(event: UsageEvent): Promise<void> {
    const { sink, counters, log } = this.options;
    const [logged, counted] = await Promise.all([
      this.withRetries(() => sink.write([event])),
      this.withRetries(() => counters.record([event])),
    ]);
    if (logged !== undefined) {
      // Events hold no secrets or bodies, so the whole record can go to the logs for replay, once.
      const alreadyLogged = (logged as { eventsLogged?: unknown }).eventsLogged === true;
      log.error('usage_event_undelivered', {
        request_id: event.request_id,
        error: describeError(logged),
        ...(alreadyLogged ? {} : { event }),
      });
    }
    if (counted !== undefined) {
      log.error('usage_counters_not_updated', { request_id: event.request_id, error: describeError(counted) });
    }
  }

  /** Runs `write` until it succeeds; returns the last error, or undefined on success. */
  private async withRetries(write: () => Promise<void>): Promise<unknown> {
    let lastError: unknown;
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      try {
        await write();
        return undefined;
      } catch (error) {
        lastError = error;
        if (isNotRetryable(error)) break;
        if (attempt < this.attempts) {
          this.options.log.warn('usage_write_retry', { attempt, error: describeError(error) });
          await this.sleep(this.retryDelayMs * 2 ** (attempt - 1));
        }
      }
    }
    return lastError;
  }
}

/** Stores mark failures whose outcome is unknown (a write that may have been applied) as not to be retried. */
function isNotRetryable(error: unknown): boolean {
  return error instanceof Error && (error as { retryable?: unknown }).retryable === false;
}
