/**
 * The local event log that keeps accepting usage when its directory does not: a disk that is full, an `events`
 * directory replaced by a file, an I/O error. Wraps the {@link FileEventSink} (the primary) and, while it fails,
 * spools the events under `${dataDir}/spool/`, retries the primary in the background and replays the spool into it,
 * oldest first, once it works again. Nothing accepted is dropped silently: an event is in the primary log, in a
 * spool file, in memory, or — past every bound — logged whole as `usage_event_undelivered` (events hold no secrets
 * or bodies, so the logs can rebuild them).
 *
 * Design choices, and why:
 *
 * - **A separate directory.** `events/` is the thing that may be broken (replaced, unwritable, on a failed mount),
 *   and everything that reads it (history queries, compaction, catch-up) must never see a half-delivered spool. The
 *   spool is NDJSON like the log, one event per line, so an operator can read or replay it with the same tools.
 * - **The event log's crash rules.** A spool file has one writer for its whole life (created with `wx` by this
 *   process, never appended to after a failed append), every append is fsync'd before the write is acknowledged
 *   (a group commit: appends that arrive during one share the next fsync), and a reader skips lines that are not
 *   complete events, so a crash leaves at most one torn line at the end of a file.
 * - **Memory as well as disk.** Spooled events are also kept in memory up to {@link SpoolingEventSinkOptions.maxMemoryEvents},
 *   so a short outage replays without reading anything back; spooled copies are let go first when memory is needed.
 *   When the spool fails too (it is usually the same disk) events are held in memory only, within the same bound,
 *   and the retry loop keeps trying to spool them. Beyond the bound a write rejects with
 *   {@link EventLogOverflowError} after logging each of its events whole.
 * - **No primary attempt per write while degraded.** Once a write has failed, later writes go straight to the spool
 *   until a background retry succeeds: a request's bookkeeping never pays a failing attempt (or a hung disk's
 *   timeout), and the log keeps the order the events were accepted in, spooled ones before newer ones.
 * - **Capped exponential backoff, no jitter.** One process retries one local directory, so there is no herd to
 *   spread; retries start at {@link SpoolingEventSinkOptions.initialRetryMs} and double up to
 *   {@link SpoolingEventSinkOptions.maxRetryMs}, so a repaired disk is used again within seconds.
 * - **Catching up without a gap.** When a retry gets through, new writes keep going to the spool (durable) while the
 *   backlog is replayed. Once what is left is about one replay batch
 *   ({@link SpoolingEventSinkOptions.replayBatchEvents}), new writes wait in memory for that last batch instead, then
 *   go to the primary right behind it. Under steady traffic the spool would otherwise never be empty at the instant
 *   the loop looks, and holding new writes for the whole backlog would leave them unconfirmed (and lost to a crash)
 *   for as long as the replay takes.
 * - **A write that outlives its timeout is not written twice.** A direct write the primary has not answered within
 *   {@link SpoolingEventSinkOptions.primaryTimeoutMs} is usually a slow disk, not a failed one: the write is still
 *   queued in the primary and lands later. So its events are spooled (the caller is answered, and they survive a
 *   crash while the write hangs) but stay tied to that attempt: replay does not pass a spool file holding them until
 *   the attempt has settled, skips them if it landed, and replays them only if it failed. Spooling them only once the
 *   attempt failed would be exact, but would lose them if the process died while the disk hung. A replay write is
 *   bounded the same way: one not answered in time fails the retry, keeps its events in the spool tied to it, and
 *   counts as replayed if it lands later.
 * - **A hung event log holds up neither start nor close.** {@link SpoolingEventSink.start} waits at most
 *   `primaryTimeoutMs` for the leftover spool, then lets the replay carry on in the background; close gives its last
 *   replay the same time, then leaves the rest in the spool.
 * - **At least once, never lost.** A spool file is deleted only after every event in it is durably (fsync'd) in the
 *   primary log, and a spool file that is partly in the log when the sink closes is rewritten without those events,
 *   so a clean restart does not replay them again. The log can still hold a request twice: after a crash (between a
 *   replay write and the deletion or rewrite of its spool file, or while a timed-out write was in flight); after a
 *   close that gave up on a write the log had not answered, which may land as well; and when a
 *   {@link FileEventSink} group commit fails after writing part of its batch, since the failed write's events are
 *   then spooled (or kept in the spool) and replayed although some already reached the log. Every reader (history
 *   queries, compaction, catch-up, reconcile) therefore deduplicates by `request_id`.
 * - **Counting replayed events.** Live counters are recorded from the in-process event, independently of this sink;
 *   an event that was only spooled when the gateway died may have missed its counter transaction, and the start-up
 *   catch-up reads only the log. {@link SpoolingEventSinkOptions.onReplayed} hands every replayed batch to the owner
 *   (the local gateway records it in the counters, which count a `request_id` once).
 * - **One process per data directory.** Leftover spool files are replayed at {@link SpoolingEventSink.start}; a second
 *   live process would replay the first one's spool. The gateway's DuckDB file lock already forbids two gateways on
 *   one data directory, and the spool relies on it.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { InternalError } from '../core/errors';
import { describeError, silentLogger, type Logger } from '../core/log';
import type { EventSink } from '../core/ports';
import { eventDate, type UsageEvent } from '../core/usage-event';
import { parseEventLine } from './event-files';
import { syncDirectory, writeAll } from './file-event-sink';

export interface SpoolingEventSinkOptions<Primary extends EventSink = EventSink> {
  /** The event log proper (a {@link FileEventSink}); closed by {@link SpoolingEventSink.close}. */
  readonly primary: Primary;
  /** Root data directory; the spool is `${dataDir}/spool/`. */
  readonly dataDir: string;
  readonly log?: Logger;
  /**
   * Events held in memory while degraded, spooled or not. Past it spooled events are read back from their files,
   * and events that could not be spooled are logged whole and their write rejects.
   * @default 100000
   */
  readonly maxMemoryEvents?: number;
  /**
   * A spool file is closed and a new one started once it reaches this size, so replay can delete the spool file
   * by file as it goes and never has to read back more than this at once.
   * @default 4194304 (4 MiB)
   */
  readonly spoolFileBytes?: number;
  /** Events per primary write during replay (each is one fsync'd group commit). @default 2000 */
  readonly replayBatchEvents?: number;
  /** First retry of a failed primary; doubles per failed retry. @default 100 */
  readonly initialRetryMs?: number;
  /** Longest wait between two retries. @default 5000 */
  readonly maxRetryMs?: number;
  /**
   * A direct write the primary has not answered in this time is spooled and the sink degrades, so a hung disk does
   * not pile up waiting writes and their callers. The write itself is not abandoned: if it lands later its spooled
   * copy is dropped instead of replayed (see the class comment), so a timeout costs a spool round trip, not a
   * duplicate. It is still a false alarm on a disk that is only slow, so the default is well above the few seconds
   * an fsync'd group commit can take on a loaded machine (journal commits behind writeback, file system work queued
   * behind other work in libuv's thread pool), while a hung mount still degrades within half a minute. The same
   * bound applies to each replay write, to how long {@link SpoolingEventSink.start} waits for a leftover spool, and
   * to the last replay at close (and to closing the primary after it). Zero or Infinity: no bound.
   * @default 30000
   */
  readonly primaryTimeoutMs?: number;
  /**
   * Told about each batch of events that reached the primary by replay (from this process's spool or memory, or a
   * previous process's spool) once it is durable there. Called without being awaited by the replay; close() waits
   * for the calls in flight. A rejection is logged.
   */
  readonly onReplayed?: (events: readonly UsageEvent[]) => void | Promise<void>;
}

/** What the sink has done since it was opened, for logs, health checks and tests. */
export interface SpoolingEventSinkStats {
  /** `degraded` from the first failed write (or a leftover spool) until everything pending is replayed. */
  readonly state: 'healthy' | 'degraded' | 'closed';
  /** Events written straight to the primary. */
  readonly written: number;
  /**
   * Of {@link written}: events whose direct write answered only after `primaryTimeoutMs`, so they were spooled as
   * well; their spooled copies are dropped, not replayed.
   */
  readonly writtenLate: number;
  /** Events appended (fsync'd) to spool files. */
  readonly spooled: number;
  /** Events accepted into memory only, because the spool failed as well. */
  readonly heldInMemoryOnly: number;
  /** Events moved into the primary by replay, from any source (including replay writes that landed after their timeout). */
  readonly replayed: number;
  /** Of {@link replayed}: events from spool files a previous process left. */
  readonly replayedFromPreviousRun: number;
  /** Events accepted but not yet in the primary: spooled, in memory, or waiting to be spooled. */
  readonly pending: number;
  /** Of {@link pending}: events with no spool copy (lost if the process dies now). */
  readonly pendingInMemoryOnly: number;
  /** Events held in memory right now (bounded by `maxMemoryEvents`). */
  readonly heldInMemory: number;
  /** Spool files waiting to be replayed. */
  readonly spoolFiles: number;
  /** Events logged whole as `usage_event_undelivered` (memory bound reached, or closing with the spool broken). */
  readonly undelivered: number;
  /** Events of spool files that disappeared before they could be replayed. */
  readonly lost: number;
  /** Spool lines skipped as incomplete (a torn last line after a crash). */
  readonly skippedLines: number;
  /** Times the sink became degraded. */
  readonly outages: number;
  /** Background retries that failed. */
  readonly failedRetries: number;
  /** Wait before the next retry while degraded. */
  readonly retryDelayMs: number;
}

/**
 * Raised when events could be neither written, nor spooled, nor held in memory. Each of them is already in the
 * logs whole, and retrying would only repeat the same failure.
 */
export class EventLogOverflowError extends InternalError {
  readonly retryable = false;
  readonly eventsLogged = true;

  constructor(
    readonly undeliveredCount: number,
    cause: unknown,
  ) {
    super('usage_event_undelivered', `${undeliveredCount} usage event(s) could be neither written, spooled nor held in memory.`, { cause });
  }
}

/**
 * The primary did not answer a write in time: the sink degraded and spooled the write's events, which are replayed
 * only if the write then fails. Logged as the cause of `event_log_degraded`; never handed to a caller.
 */
export class EventLogTimeoutError extends InternalError {
  constructor(readonly timeoutMs: number) {
    super('event_log_timeout', `The event log did not answer a write within ${timeoutMs} ms.`);
  }
}

/**
 * A direct write to the primary that was not answered within `primaryTimeoutMs`, and is still owed an answer. Its
 * events are spooled as well, tied to it (see {@link Tie}) until it settles.
 */
interface LateAttempt {
  outcome: 'in-flight' | 'landed' | 'failed';
  /** Resolves (never rejects) once the primary has answered the write. */
  readonly settled: Promise<void>;
}

/**
 * Events of a chunk, `count` of them from index `from`, that a {@link LateAttempt} may still land in the primary:
 * replay waits for the attempt, then skips them if it landed and replays them if it failed.
 */
interface Tie {
  from: number;
  readonly count: number;
  readonly attempt: LateAttempt;
}

/** A run of accepted events in acceptance order: one spool file, or (while the spool fails) memory only. */
interface SpoolChunk {
  /** The spool file holding every event of the chunk; null while the chunk is in memory only. */
  path: string | null;
  /** Open while the chunk is the append target. */
  file: FileHandle | null;
  /** Every event of the chunk, or null when only the file has them (read back at replay). */
  events: UsageEvent[] | null;
  count: number;
  bytes: number;
  /** Leading events already durable in the primary: a retry resumes after them. */
  replayed: number;
  /** Earliest `dt` partition among the chunk's events. */
  oldestDay: string | null;
  readonly fromPreviousRun: boolean;
  /** Runs of events a timed-out direct write may still land, by index, in order. */
  ties: Tie[];
}

interface AcceptedWrite {
  readonly events: readonly UsageEvent[];
  /** Set when these events are a timed-out direct write's, which may still land them. */
  readonly attempt: LateAttempt | null;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

interface Outage {
  readonly since: number;
  readonly writtenLate: number;
  readonly spooled: number;
  readonly heldInMemoryOnly: number;
  readonly replayed: number;
  readonly undelivered: number;
  readonly failedRetries: number;
  logged: boolean;
}

const DEFAULT_MAX_MEMORY_EVENTS = 100_000;
const DEFAULT_SPOOL_FILE_BYTES = 4 * 1024 * 1024;
const DEFAULT_REPLAY_BATCH_EVENTS = 2_000;
const DEFAULT_INITIAL_RETRY_MS = 100;
const DEFAULT_MAX_RETRY_MS = 5_000;
const DEFAULT_PRIMARY_TIMEOUT_MS = 30_000;
/** A memory-only chunk is closed at this many events, so a repaired spool gets files of a sensible size. */
const MEMORY_CHUNK_EVENTS = 5_000;
/** While degraded, a reminder with the backlog at most this often (state changes are logged when they happen). */
const DEGRADED_REMINDER_MS = 60_000;

/**
 * An {@link EventSink} that never loses an accepted event to a failing event log.
 * @example
 * const sink = await SpoolingEventSink.open({ primary: new FileEventSink({ dataDir }), dataDir, log });
 * await sink.write([event]);   // resolves once the event is in the log, or in the spool
 * sink.stats().pending;        // 0 once a degraded log has been replayed
 * await sink.close();          // a last replay; what is left stays in the spool for the next start
 */
export class SpoolingEventSink<Primary extends EventSink = EventSink> implements EventSink {
  /** The wrapped event log, e.g. for its own `stats()`. */
  readonly primary: Primary;
  /** `${dataDir}/spool`. */
  readonly spoolDir: string;
  private readonly log: Logger;
  private readonly maxMemoryEvents: number;
  private readonly spoolFileBytes: number;
  private readonly replayBatchEvents: number;
  private readonly initialRetryMs: number;
  private readonly maxRetryMs: number;
  private readonly primaryTimeoutMs: number;
  private readonly onReplayed: ((events: readonly UsageEvent[]) => void | Promise<void>) | undefined;

  private state: 'healthy' | 'degraded' = 'healthy';
  private closing: Promise<void> | null = null;
  private closed = false;
  private started = false;
  /** Pending chunks, oldest first: replay always takes the head. */
  private chunks: SpoolChunk[] = [];
  /** The chunk appends go to; sealed (set to null) before it is replayed or when it fails. */
  private current: SpoolChunk | null = null;
  /** Writes accepted while degraded that no chunk holds yet (waiting for the next group commit to the spool). */
  private incoming: AcceptedWrite[] = [];
  private incomingEvents = 0;
  private appendQueued = false;
  /** Serialises every change to chunks and spool files: appends, sealing, deleting, re-spooling. */
  private lane: Promise<void> = Promise.resolve();
  private spoolBroken = false;
  private spoolError: unknown = null;
  /** The backlog is down to its last batch: new writes wait for it in memory instead of going to the spool. */
  private catchingUp = false;
  /** Set when close() stops waiting for the primary: replay writes nothing more and stops waiting. */
  private replayHalted = false;
  /** What replay is waiting for that close() may cut short (a set, not a promise: no reaction per wait is kept). */
  private readonly haltWaits = new Set<() => void>();
  private retryTimer: NodeJS.Timeout | null = null;
  private retrying: Promise<boolean> | null = null;
  private retryDelayMs: number;
  private lastError: unknown = null;
  private lastReminderAt = 0;
  private lastFileMs = 0;
  private heldEvents = 0;
  private outage: Outage | null = null;
  private readonly direct = new Set<Promise<void>>();
  private readonly notifications = new Set<Promise<void>>();
  private readonly counts = {
    written: 0,
    writtenLate: 0,
    spooled: 0,
    heldInMemoryOnly: 0,
    replayed: 0,
    replayedFromPreviousRun: 0,
    undelivered: 0,
    lost: 0,
    skippedLines: 0,
    outages: 0,
    failedRetries: 0,
  };

  constructor(options: SpoolingEventSinkOptions<Primary>) {
    this.primary = options.primary;
    this.spoolDir = join(options.dataDir, 'spool');
    this.log = options.log ?? silentLogger;
    this.maxMemoryEvents = Math.max(0, Math.floor(options.maxMemoryEvents ?? DEFAULT_MAX_MEMORY_EVENTS));
    this.spoolFileBytes = Math.max(1, options.spoolFileBytes ?? DEFAULT_SPOOL_FILE_BYTES);
    this.replayBatchEvents = Math.max(1, Math.floor(options.replayBatchEvents ?? DEFAULT_REPLAY_BATCH_EVENTS));
    this.initialRetryMs = Math.max(1, options.initialRetryMs ?? DEFAULT_INITIAL_RETRY_MS);
    this.maxRetryMs = Math.max(this.initialRetryMs, options.maxRetryMs ?? DEFAULT_MAX_RETRY_MS);
    this.primaryTimeoutMs = options.primaryTimeoutMs ?? DEFAULT_PRIMARY_TIMEOUT_MS;
    this.onReplayed = options.onReplayed;
    this.retryDelayMs = this.initialRetryMs;
  }

  /**
   * Creates the sink and replays what a previous process left in the spool (see {@link start}).
   * @example const sink = await SpoolingEventSink.open({ primary: new FileEventSink({ dataDir }), dataDir });
   */
  static async open<Primary extends EventSink>(options: SpoolingEventSinkOptions<Primary>): Promise<SpoolingEventSink<Primary>> {
    const sink = new SpoolingEventSink(options);
    await sink.start();
    return sink;
  }

  /**
   * Takes over the spool files a previous process left (it crashed, or closed while degraded) and makes one attempt
   * to replay them, so the log is usually complete before the caller reads it (e.g. to catch counters up). Waits for
   * that attempt at most `primaryTimeoutMs`: a hung event log must not keep the gateway from starting. Never rejects:
   * when the primary still fails, or has not finished, the sink stays degraded and the replay carries on in the
   * background (counted through `onReplayed`), and new writes are spooled behind the old ones. Call once, before
   * the first write.
   */
  async start(): Promise<void> {
    if (this.started || this.closing) return;
    this.started = true;
    const found = await this.inLane(() => this.takeOverLeftovers());
    if (found.files === 0) return;
    this.log.info('event_log_spool_found', { spool: this.spoolDir, files: found.files, events: found.events });
    this.enterDegraded(null);
    if (!(await settlesWithin(this.retryNow(), this.primaryTimeoutMs))) {
      this.log.warn('event_log_replay_in_background', { spool: this.spoolDir, pending: this.stats().pending, timeout_ms: this.primaryTimeoutMs });
    }
  }

  /**
   * Resolves once the events are durably in the primary log, or in the spool (or, while the spool fails too, held
   * in memory). Rejects with {@link EventLogOverflowError} only when none of that was possible, after logging each
   * event whole; and after {@link close}.
   */
  write(events: readonly UsageEvent[]): Promise<void> {
    if (this.closing) return Promise.reject(new Error('The event sink is closed.'));
    if (events.length === 0) return Promise.resolve();
    return this.state === 'healthy' ? this.writeDirect(events) : this.accept(events);
  }

  /**
   * Waits for the writes in flight: direct writes to the primary (including those that fail over to the spool)
   * and spool appends, then flushes the primary. Does not wait for a degraded log to be replayed.
   */
  async flush(): Promise<void> {
    while (this.direct.size > 0 || this.appendQueued) {
      await Promise.allSettled([...this.direct]);
      await this.lane;
    }
    await this.primary.flush?.();
  }

  /**
   * Retries the primary now instead of at the next tick of the backoff, replaying everything pending. Spooled events
   * of a timed-out write still in flight are not replayed ahead of it: the retry waits for the write to settle. A
   * replay write the primary does not answer within `primaryTimeoutMs` fails the retry (and becomes such a write).
   * @returns true when nothing is pending any more
   */
  retryNow(): Promise<boolean> {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.retrying !== null) return this.retrying;
    if (this.closed) return Promise.resolve(this.stats().pending === 0);
    if (this.state === 'healthy') return Promise.resolve(true);
    this.retrying = this.replay().finally(() => {
      this.retrying = null;
      this.scheduleRetry();
    });
    return this.retrying;
  }

  /**
   * Stops accepting writes, makes a last replay attempt, then closes the primary. Whatever is still pending stays
   * in the spool for the next start (a spool file partly in the log is rewritten without those events); events the
   * spool cannot take either are logged whole. Never rejects for pending events: nothing is dropped silently, and
   * the caller could do no better. A timed-out write still in flight is waited for, so its events are not replayed
   * twice, but the last replay as a whole (and closing the primary) gets only `primaryTimeoutMs`: a hung event log
   * must not keep the process from shutting down. A write the log has not answered by then stays in the spool and
   * may end up in the log twice.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  stats(): SpoolingEventSinkStats {
    // Writes not yet in a chunk are in memory only: waiting for the next group commit to the spool, held while the
    // spool fails, or held for the catch-up.
    let pending = this.incomingEvents;
    let pendingInMemoryOnly = this.incomingEvents;
    let spoolFiles = 0;
    for (const chunk of this.chunks) {
      const left = chunk.count - chunk.replayed - landedAhead(chunk);
      pending += left;
      if (chunk.path === null) pendingInMemoryOnly += left;
      else spoolFiles++;
    }
    return {
      ...this.counts,
      state: this.closed ? 'closed' : this.state,
      pending,
      pendingInMemoryOnly,
      heldInMemory: this.heldEvents,
      spoolFiles,
      retryDelayMs: this.retryDelayMs,
    };
  }

  /**
   * The earliest `dt` partition that replay may still write to, or null when nothing is pending. Compaction must
   * leave that day and later ones alone until replay is done: it would otherwise delete a segment replay appends to.
   */
  oldestPendingDay(): string | null {
    let oldest: string | null = null;
    for (const chunk of this.chunks) if (chunk.oldestDay !== null && (oldest === null || chunk.oldestDay < oldest)) oldest = chunk.oldestDay;
    for (const write of this.incoming) oldest = oldestDayOf(write.events, oldest);
    return oldest;
  }

  // ---- writing -------------------------------------------------------------------------------------------------

  private writeDirect(events: readonly UsageEvent[]): Promise<void> {
    let write: Promise<void>;
    try {
      // Called synchronously (not after an await): the primary sees writes in the order they were made.
      write = this.primary.write(events);
    } catch (error) {
      write = Promise.reject(error);
    }
    const attempt = this.answeredInTime(write).then(
      (inTime) => {
        if (inTime) {
          this.counts.written += events.length;
          return;
        }
        this.degrade(new EventLogTimeoutError(this.primaryTimeoutMs));
        const attempt = this.lateAttempt(write, () => {
          this.counts.written += events.length;
          this.counts.writtenLate += events.length;
        });
        return this.accept(events, attempt);
      },
      (error: unknown) => {
        this.degrade(error);
        return this.accept(events);
      },
    );
    this.direct.add(attempt);
    const settled = () => void this.direct.delete(attempt);
    attempt.then(settled, settled);
    return attempt;
  }

  /**
   * Resolves true when `write` lands within `primaryTimeoutMs`, false when it is still in flight then (or, for a
   * replay write, when close() halts replay first); rejects if it fails in time.
   */
  private answeredInTime(write: Promise<void>, haltable = false): Promise<boolean> {
    const timeoutMs = this.primaryTimeoutMs;
    const bounded = timeoutMs > 0 && Number.isFinite(timeoutMs);
    if (!bounded && !haltable) return write.then(() => true);
    return new Promise<boolean>((resolve, reject) => {
      const settle = () => {
        clearTimeout(timer);
        this.haltWaits.delete(halt);
      };
      const halt = () => {
        settle();
        resolve(false);
      };
      const timer = bounded ? setTimeout(halt, timeoutMs) : undefined;
      if (haltable) this.haltWaits.add(halt);
      write.then(
        () => {
          settle();
          resolve(true);
        },
        (error: unknown) => {
          settle();
          reject(error);
        },
      );
    });
  }

  /** Follows a timed-out write to its end: if it lands, its events are in the log and `landed` counts them. */
  private lateAttempt(write: Promise<void>, landed: () => void): LateAttempt {
    const attempt: { outcome: LateAttempt['outcome']; settled: Promise<void> } = { outcome: 'in-flight', settled: Promise.resolve() };
    attempt.settled = write.then(
      () => {
        attempt.outcome = 'landed';
        landed();
      },
      (error: unknown) => {
        attempt.outcome = 'failed';
        this.lastError = error;
      },
    );
    return attempt;
  }

  /** Queues a degraded write for the spool; it resolves once the spool (or memory) holds its events. */
  private accept(events: readonly UsageEvent[], attempt: LateAttempt | null = null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.incoming.push({ events, attempt, resolve, reject });
      this.incomingEvents += events.length;
      if (!this.catchingUp || this.incomingEvents > this.maxMemoryEvents) this.scheduleAppend();
    });
  }

  private scheduleAppend(): void {
    if (this.appendQueued) return;
    this.appendQueued = true;
    void this.inLane(() => {
      // Cleared as the append starts: writes arriving during it queue the next one (group commit).
      this.appendQueued = false;
      return this.appendIncoming();
    });
  }

  /** One group commit of the waiting writes to the spool, or to memory when the spool fails. Never throws. */
  private async appendIncoming(): Promise<void> {
    if (this.incoming.length === 0) return;
    // A retry got through: these go to the primary right after the last chunks (see recover()).
    if (this.catchingUp && this.incomingEvents <= this.maxMemoryEvents) return;
    const batch: AcceptedWrite[] = [];
    for (const write of this.incoming) {
      // A timed-out write that has landed meanwhile is done: spooling it would only make a copy to drop.
      if (write.attempt?.outcome === 'landed') write.resolve();
      else batch.push(write);
    }
    this.incoming = [];
    this.incomingEvents = 0;
    if (batch.length === 0) return;
    if (!this.spoolBroken) {
      const events: UsageEvent[] = [];
      const ties: Tie[] = [];
      for (const write of batch) {
        if (write.attempt?.outcome === 'in-flight') ties.push({ from: events.length, count: write.events.length, attempt: write.attempt });
        for (const event of write.events) events.push(event);
      }
      try {
        await this.appendToSpool(events, ties);
        for (const write of batch) write.resolve();
        return;
      } catch (error) {
        this.breakSpool(error);
      }
    }
    for (const write of batch) this.holdInMemory(write);
  }

  /** Appends events to the current spool file, with `ties` indexed from the first of `events`. */
  private async appendToSpool(events: readonly UsageEvent[], ties: readonly Tie[] = []): Promise<void> {
    const data = Buffer.from(events.map((event) => JSON.stringify(event) + '\n').join(''), 'utf8');
    let chunk = this.current;
    if (chunk !== null && (chunk.path === null || chunk.file === null || (chunk.bytes > 0 && chunk.bytes + data.length > this.spoolFileBytes))) {
      await this.seal(chunk);
      chunk = null;
    }
    if (chunk === null) {
      const created = await this.createSpoolFile();
      chunk = { path: created.path, file: created.file, events: [], count: 0, bytes: 0, replayed: 0, oldestDay: null, fromPreviousRun: false, ties: [] };
      this.chunks.push(chunk);
      this.current = chunk;
    }
    try {
      await writeAll(chunk.file!, data);
      await chunk.file!.datasync();
    } catch (error) {
      // The file may now end in a partial line: never append after it, or the next line would be glued to it.
      await this.seal(chunk);
      if (chunk.count === 0) {
        this.chunks.splice(this.chunks.indexOf(chunk), 1);
        await unlink(chunk.path!).catch(() => undefined);
      }
      throw error;
    }
    for (const tie of ties) chunk.ties.push({ from: chunk.count + tie.from, count: tie.count, attempt: tie.attempt });
    chunk.bytes += data.length;
    chunk.count += events.length;
    chunk.oldestDay = oldestDayOf(events, chunk.oldestDay);
    this.counts.spooled += events.length;
    if (chunk.events !== null) {
      if (this.heldEvents + events.length <= this.maxMemoryEvents) {
        for (const event of events) chunk.events.push(event);
        this.heldEvents += events.length;
      } else {
        this.release(chunk);
      }
    }
  }

  /** Keeps a write in memory only (the spool failed), or logs it whole when memory is at its bound. */
  private holdInMemory(write: AcceptedWrite): void {
    if (write.attempt?.outcome === 'landed') {
      write.resolve();
      return;
    }
    const count = write.events.length;
    if (!this.makeRoom(count)) {
      this.logUndelivered(write.events, this.spoolError);
      write.reject(new EventLogOverflowError(count, this.spoolError));
      return;
    }
    let chunk = this.current;
    if (chunk === null || chunk.path !== null || chunk.count >= MEMORY_CHUNK_EVENTS) {
      if (chunk !== null) void this.seal(chunk);
      chunk = { path: null, file: null, events: [], count: 0, bytes: 0, replayed: 0, oldestDay: null, fromPreviousRun: false, ties: [] };
      this.chunks.push(chunk);
      this.current = chunk;
    }
    if (write.attempt?.outcome === 'in-flight') chunk.ties.push({ from: chunk.count, count, attempt: write.attempt });
    for (const event of write.events) chunk.events!.push(event);
    chunk.count += count;
    chunk.oldestDay = oldestDayOf(write.events, chunk.oldestDay);
    this.heldEvents += count;
    this.counts.heldInMemoryOnly += count;
    write.resolve();
  }

  /** True when `count` more events fit in memory, after letting go of copies the spool files also hold. */
  private makeRoom(count: number): boolean {
    // Newest first: the oldest are replayed soonest, and keeping them saves reading their files back.
    for (let i = this.chunks.length - 1; i >= 0 && this.heldEvents + count > this.maxMemoryEvents; i--) {
      const chunk = this.chunks[i]!;
      if (chunk.path !== null) this.release(chunk);
    }
    return this.heldEvents + count <= this.maxMemoryEvents;
  }

  private release(chunk: SpoolChunk): void {
    if (chunk.events === null) return;
    this.heldEvents -= chunk.events.length;
    chunk.events = null;
  }

  /** Ends appends to a chunk; its file (if any) is closed, already fsync'd by every acknowledged append. */
  private async seal(chunk: SpoolChunk): Promise<void> {
    if (this.current === chunk) this.current = null;
    const file = chunk.file;
    chunk.file = null;
    if (file !== null) {
      await file.close().catch((error: unknown) => {
        this.log.warn('event_log_spool_close_failed', { error: describeError(error), path: chunk.path });
      });
    }
  }

  private breakSpool(error: unknown): void {
    this.spoolError = error;
    if (this.spoolBroken) return;
    this.spoolBroken = true;
    this.log.error('event_log_spool_failed', {
      error: describeError(error),
      spool: this.spoolDir,
      held_in_memory: this.heldEvents,
      max_memory_events: this.maxMemoryEvents,
    });
  }

  private logUndelivered(events: readonly UsageEvent[], cause: unknown): void {
    // Last resort: the log lines can rebuild the events (they hold no secrets or bodies).
    for (const event of events) {
      this.log.error('usage_event_undelivered', { error: describeError(cause ?? this.lastError), spool: this.spoolDir, event });
    }
    this.counts.undelivered += events.length;
  }

  // ---- spool files ---------------------------------------------------------------------------------------------

  /** A new, empty spool file whose directory entry is durable. Names sort in creation order. */
  private async createSpoolFile(): Promise<{ path: string; file: FileHandle }> {
    const created = await mkdir(this.spoolDir, { recursive: true });
    if (created !== undefined) {
      // A new directory entry is only durable once its parent is fsync'd: sync the parent of each directory created.
      for (let made = this.spoolDir; ; made = dirname(made)) {
        await syncDirectory(dirname(made));
        if (made === created || dirname(made) === made) break;
      }
    }
    // Strictly increasing within the process, so replay after a restart keeps the order of acceptance.
    this.lastFileMs = Math.max(Date.now(), this.lastFileMs + 1);
    const path = join(this.spoolDir, `spool-${this.lastFileMs}-${process.pid}-${randomBytes(4).toString('hex')}.ndjson`);
    // 'wx' fails rather than share a file: a spool file has exactly one writer for its whole life.
    const file = await open(path, 'wx');
    try {
      await syncDirectory(this.spoolDir);
    } catch (error) {
      await file.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw error;
    }
    return { path, file };
  }

  /** Reads the spool files left by an earlier process into chunks at the head of the queue. Never throws. */
  private async takeOverLeftovers(): Promise<{ files: number; events: number }> {
    let names: string[];
    try {
      names = (await readdir(this.spoolDir)).filter((name) => name.endsWith('.ndjson')).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.log.error('event_log_spool_unreadable', { error: describeError(error), spool: this.spoolDir });
      }
      return { files: 0, events: 0 };
    }
    const own = new Set(this.chunks.map((chunk) => chunk.path));
    const leftovers: SpoolChunk[] = [];
    let events = 0;
    for (const name of names) {
      const path = join(this.spoolDir, name);
      if (own.has(path)) continue;
      let read: SpoolFileContents;
      try {
        read = await readSpoolFile(path);
      } catch (error) {
        // Left where it is: the next start tries again.
        this.log.error('event_log_spool_file_unreadable', { error: describeError(error), path });
        continue;
      }
      this.noteSkipped(path, read.skipped);
      if (read.events.length === 0) {
        await unlink(path).catch(() => undefined);
        continue;
      }
      const keep = this.heldEvents + read.events.length <= this.maxMemoryEvents;
      if (keep) this.heldEvents += read.events.length;
      leftovers.push({
        path,
        file: null,
        events: keep ? read.events : null,
        count: read.events.length,
        bytes: read.bytes,
        replayed: 0,
        oldestDay: oldestDayOf(read.events, null),
        fromPreviousRun: true,
        ties: [],
      });
      events += read.events.length;
    }
    this.chunks.unshift(...leftovers);
    return { files: leftovers.length, events };
  }

  private noteSkipped(path: string, skipped: number): void {
    if (skipped === 0) return;
    this.counts.skippedLines += skipped;
    this.log.warn('skipped incomplete spool lines', { path, lines: skipped });
  }

  /** Spools the chunks held in memory only, oldest first, once the spool works again. Never throws. */
  private async respool(): Promise<void> {
    if (!this.spoolBroken) return;
    let respooled = 0;
    for (const chunk of this.chunks) {
      if (chunk.path !== null) continue;
      if (this.current === chunk) this.current = null;
      const { events: remaining, ties } = unreplayed(chunk, chunk.events!);
      let created: { path: string; file: FileHandle } | null = null;
      let bytes = 0;
      try {
        created = await this.createSpoolFile();
        const data = Buffer.from(remaining.map((event) => JSON.stringify(event) + '\n').join(''), 'utf8');
        await writeAll(created.file, data);
        await created.file.datasync();
        bytes = data.length;
      } catch (error) {
        this.spoolError = error;
        if (created !== null) {
          await created.file.close().catch(() => undefined);
          await unlink(created.path).catch(() => undefined);
        }
        return;
      }
      await created.file.close().catch(() => undefined);
      this.heldEvents -= chunk.events!.length - remaining.length;
      chunk.path = created.path;
      chunk.events = remaining;
      chunk.count = remaining.length;
      chunk.bytes = bytes;
      chunk.replayed = 0;
      chunk.ties = ties;
      this.counts.spooled += remaining.length;
      respooled += remaining.length;
    }
    this.spoolBroken = false;
    this.spoolError = null;
    this.log.info('event_log_spool_recovered', { spool: this.spoolDir, respooled });
  }

  // ---- degraded state and replay -------------------------------------------------------------------------------

  /** A direct write failed: from now on writes go to the spool until a retry gets through. */
  private degrade(error: unknown): void {
    this.lastError = error;
    if (this.state === 'degraded') return;
    this.enterDegraded(error);
  }

  private enterDegraded(error: unknown): void {
    if (this.state === 'degraded') return;
    this.state = 'degraded';
    this.counts.outages++;
    this.lastReminderAt = Date.now();
    this.outage = {
      since: Date.now(),
      writtenLate: this.counts.writtenLate,
      spooled: this.counts.spooled,
      heldInMemoryOnly: this.counts.heldInMemoryOnly,
      replayed: this.counts.replayed,
      undelivered: this.counts.undelivered,
      failedRetries: this.counts.failedRetries,
      logged: false,
    };
    if (error !== null) this.logDegraded(error);
    this.scheduleRetry();
  }

  private logDegraded(error: unknown): void {
    if (this.outage === null || this.outage.logged) return;
    this.outage.logged = true;
    this.log.error('event_log_degraded', {
      error: describeError(error),
      spool: this.spoolDir,
      pending: this.stats().pending,
      retry_ms: this.retryDelayMs,
    });
  }

  private scheduleRetry(): void {
    if (this.closing || this.state !== 'degraded' || this.retryTimer !== null || this.retrying !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.retryNow();
    }, this.retryDelayMs);
    // Everything the timer would replay is spooled or is close()'s business: it must not keep a process alive.
    this.retryTimer.unref();
  }

  /** Replays every pending chunk into the primary, oldest first; true when nothing is left. Never rejects. */
  private async replay(): Promise<boolean> {
    try {
      for (;;) {
        const chunk = await this.inLane(() => this.sealHead());
        if (chunk === null) {
          // An append in flight becomes a chunk when it ends; wait for it rather than declare the spool empty.
          if (this.appendQueued) {
            await this.lane;
            continue;
          }
          if (this.chunks.length > 0) continue;
          // A timed-out write still in flight must not be written again by recover(): spool it (as a tie) instead
          // of holding it for the catch-up, and go round again, which waits for its attempt.
          if (this.incoming.some((write) => write.attempt?.outcome === 'in-flight')) {
            this.catchingUp = false;
            this.scheduleAppend();
            continue;
          }
          break;
        }
        await this.replayChunk(chunk);
        await this.inLane(() => this.dropChunk(chunk));
      }
    } catch (error) {
      await this.retryFailed(error);
      return false;
    }
    // Synchronous from the emptiness check on: no write can slip in between.
    this.recover();
    return true;
  }

  /** The oldest pending chunk, sealed so nothing more is appended to it while it is replayed. */
  private async sealHead(): Promise<SpoolChunk | null> {
    const head = this.chunks[0];
    if (head === undefined) return null;
    if (this.current === head) await this.seal(head);
    return head;
  }

  private async replayChunk(chunk: SpoolChunk): Promise<void> {
    // Never ahead of a timed-out write of these events still in flight: it may yet land them. (The primary
    // serialises writes, so replaying anything else meanwhile only queues behind it.)
    if (chunk.ties.some((tie) => tie.attempt.outcome === 'in-flight')) {
      // However long that takes, new writes wait in the spool, not in memory.
      this.stopCatchingUp();
      if (!(await this.unlessHalted(Promise.all(chunk.ties.map((tie) => tie.attempt.settled))))) {
        throw new EventLogTimeoutError(this.primaryTimeoutMs);
      }
    }
    if (chunk.replayed + landedAhead(chunk) >= chunk.count) {
      chunk.replayed = chunk.count;
      return;
    }
    let events: UsageEvent[];
    try {
      events = await this.eventsOf(chunk);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      // Deleted behind the sink's back: nothing can bring these back, say so once and move on.
      const lost = chunk.count - chunk.replayed - landedAhead(chunk);
      this.counts.lost += lost;
      this.log.error('event_log_spool_file_lost', { path: chunk.path, events: lost });
      return;
    }
    while (chunk.replayed < events.length) {
      const tie = chunk.ties.find((t) => t.from + t.count > chunk.replayed && t.attempt.outcome === 'landed');
      if (tie !== undefined && tie.from <= chunk.replayed) {
        // Landed by their own (late) write: already in the log.
        chunk.replayed = tie.from + tie.count;
        continue;
      }
      const end = Math.min(events.length, chunk.replayed + this.replayBatchEvents, tie?.from ?? Infinity);
      const batch = events.slice(chunk.replayed, end);
      await this.replayBatch(chunk, batch);
      chunk.replayed += batch.length;
      this.countReplayed(chunk, batch);
      this.catchUpIfNearlyDone();
    }
  }

  /**
   * One replay write, bounded like a direct write. One the primary has not answered in time fails the retry; its
   * events stay in the chunk, tied to the write, so that a late landing counts as replayed and is not replayed again.
   */
  private async replayBatch(chunk: SpoolChunk, batch: UsageEvent[]): Promise<void> {
    if (this.replayHalted) throw new EventLogTimeoutError(this.primaryTimeoutMs);
    let write: Promise<void>;
    try {
      write = this.primary.write(batch);
    } catch (error) {
      write = Promise.reject(error);
    }
    if (await this.answeredInTime(write, true)) return;
    const attempt = this.lateAttempt(write, () => this.countReplayed(chunk, batch));
    // Every other tie of this range has settled (replayChunk waited) and none landed (the batch stops short of
    // those): failed ties change nothing, so they make way for this one, which keeps the ties in order.
    const ties = chunk.ties.filter((tie) => tie.attempt.outcome !== 'failed');
    const at = ties.findIndex((tie) => tie.from >= chunk.replayed);
    ties.splice(at < 0 ? ties.length : at, 0, { from: chunk.replayed, count: batch.length, attempt });
    chunk.ties = ties;
    throw new EventLogTimeoutError(this.primaryTimeoutMs);
  }

  private countReplayed(chunk: SpoolChunk, batch: readonly UsageEvent[]): void {
    this.counts.replayed += batch.length;
    if (chunk.fromPreviousRun) this.counts.replayedFromPreviousRun += batch.length;
    // A replay write that lands after close is in the log, where the next start's catch-up counts it.
    if (!this.closed) this.notifyReplayed(batch);
  }

  /**
   * Once the backlog is down to about one replay batch, new writes wait in memory for it and then go to the primary
   * right behind it (see recover()). Not before: until then they go to the spool, where they are durable.
   */
  private catchUpIfNearlyDone(): void {
    if (this.catchingUp) return;
    let backlog = this.incomingEvents;
    for (const chunk of this.chunks) backlog += chunk.count - chunk.replayed - landedAhead(chunk);
    if (backlog <= this.replayBatchEvents) this.catchingUp = true;
  }

  /** Resolves true once `settled` (which never rejects) resolves, false if close() halts replay first. */
  private unlessHalted(settled: Promise<unknown>): Promise<boolean> {
    if (this.replayHalted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const halt = () => resolve(false);
      this.haltWaits.add(halt);
      void settled.then(() => {
        this.haltWaits.delete(halt);
        resolve(true);
      });
    });
  }

  /** Replay writes nothing more, and what it waits for resolves as if the log had not answered. */
  private haltReplay(): void {
    this.replayHalted = true;
    for (const halt of [...this.haltWaits]) halt();
    this.haltWaits.clear();
  }

  /** New writes go to the spool again; those waiting for the catch-up go first. */
  private stopCatchingUp(): void {
    if (!this.catchingUp) return;
    this.catchingUp = false;
    if (this.incoming.length > 0) this.scheduleAppend();
  }

  /** Forgets a chunk whose every event is durably in the primary, deleting its spool file. Never throws. */
  private async dropChunk(chunk: SpoolChunk): Promise<void> {
    const index = this.chunks.indexOf(chunk);
    if (index >= 0) this.chunks.splice(index, 1);
    this.release(chunk);
    chunk.ties = [];
    if (chunk.path === null) return;
    try {
      await unlink(chunk.path);
      // Not strictly needed (a file that reappears after a crash is replayed again and deduplicated by readers),
      // but it keeps such duplicates rare.
      await syncDirectory(this.spoolDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      // Its events are in the log; replaying the file again at the next start only adds copies readers drop.
      this.log.warn('event_log_spool_file_not_removed', { error: describeError(error), path: chunk.path });
    }
  }

  private notifyReplayed(events: readonly UsageEvent[]): void {
    const onReplayed = this.onReplayed;
    if (onReplayed === undefined) return;
    const notification = Promise.resolve()
      .then(() => onReplayed(events))
      .catch((error: unknown) => {
        this.log.error('event_log_replay_notification_failed', { error: describeError(error), events: events.length });
      });
    this.notifications.add(notification);
    void notification.then(() => this.notifications.delete(notification));
  }

  private async retryFailed(error: unknown): Promise<void> {
    this.lastError = error;
    this.catchingUp = false;
    this.counts.failedRetries++;
    // Writes that waited for the catch-up go to the spool after all.
    if (this.incoming.length > 0) this.scheduleAppend();
    if (this.spoolBroken) await this.inLane(() => this.respool());
    this.logDegraded(error);
    this.retryDelayMs = Math.min(this.maxRetryMs, this.retryDelayMs * 2);
    const now = Date.now();
    if (now - this.lastReminderAt >= DEGRADED_REMINDER_MS) {
      this.lastReminderAt = now;
      const stats = this.stats();
      this.log.warn('event_log_still_degraded', {
        error: describeError(error),
        since: this.outage === null ? undefined : new Date(this.outage.since).toISOString(),
        pending: stats.pending,
        pending_in_memory_only: stats.pendingInMemoryOnly,
        spool_files: stats.spoolFiles,
      });
    } else {
      this.log.debug('event_log_retry_failed', { error: describeError(error), next_retry_ms: this.retryDelayMs });
    }
  }

  /** Everything pending is in the primary: back to direct writes, the waiting ones first, in order. */
  private recover(): void {
    const waiting = this.incoming;
    this.incoming = [];
    this.incomingEvents = 0;
    this.state = 'healthy';
    this.catchingUp = false;
    this.spoolBroken = false;
    this.spoolError = null;
    this.retryDelayMs = this.initialRetryMs;
    const outage = this.outage;
    this.outage = null;
    if (outage !== null) {
      this.log.info('event_log_recovered', {
        outage_ms: Date.now() - outage.since,
        written_late: this.counts.writtenLate - outage.writtenLate,
        replayed: this.counts.replayed - outage.replayed,
        spooled: this.counts.spooled - outage.spooled,
        held_in_memory_only: this.counts.heldInMemoryOnly - outage.heldInMemoryOnly,
        undelivered: this.counts.undelivered - outage.undelivered,
        failed_retries: this.counts.failedRetries - outage.failedRetries,
      });
    }
    // primary.write is called synchronously for each, so they keep their order ahead of any later write. A
    // timed-out write here has settled (replay() spools those in flight): landed, it is done; failed, it goes again.
    for (const write of waiting) {
      if (write.attempt?.outcome === 'landed') write.resolve();
      else this.writeDirect(write.events).then(write.resolve, write.reject);
    }
  }

  private async shutDown(): Promise<void> {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const lastReplay = this.lastReplay();
    const answered = await settlesWithin(lastReplay, this.primaryTimeoutMs);
    if (!answered) {
      this.log.warn('event_log_close_timeout', { spool: this.spoolDir, pending: this.stats().pending, timeout_ms: this.primaryTimeoutMs });
      // Replay stops writing and waiting now: its write in flight stays tied to its events, which stay in the spool.
      this.haltReplay();
      await lastReplay;
    }
    if (this.spoolBroken) await this.inLane(() => this.respool());
    await this.inLane(async () => {
      for (const chunk of this.chunks) {
        if (chunk.path !== null) continue;
        this.logUndelivered(unreplayed(chunk, chunk.events!).events, this.spoolError);
        this.release(chunk);
      }
      this.chunks = this.chunks.filter((chunk) => chunk.path !== null);
      if (this.current !== null) await this.seal(this.current);
      for (const chunk of [...this.chunks]) await this.dropReplayedLines(chunk);
    });
    const left = this.stats();
    if (left.pending > 0) {
      this.log.warn('event_log_spool_left', { spool: this.spoolDir, files: left.spoolFiles, events: left.pending });
    }
    await Promise.allSettled([...this.notifications]);
    this.closed = true;
    const primaryClosed = Promise.resolve().then(() => this.primary.close?.());
    // A log that did not answer the last replay would only hold close up as well (it waits for its writes in flight).
    if (!answered || !(await settlesWithin(primaryClosed, this.primaryTimeoutMs))) {
      primaryClosed.catch((error: unknown) => this.log.warn('event_log_close_failed', { error: describeError(error) }));
      if (answered) this.log.warn('event_log_close_timeout', { timeout_ms: this.primaryTimeoutMs });
      return;
    }
    await primaryClosed;
  }

  /** Waits for the replay and the writes in flight, then makes a last replay attempt if anything is pending. */
  private async lastReplay(): Promise<void> {
    if (this.retrying !== null) await this.retrying;
    await this.settleWrites();
    if (this.state === 'degraded' && !this.replayHalted) {
      await this.retryNow();
      await this.settleWrites();
    }
  }

  /**
   * Rewrites a spool file some of whose events are durably in the primary (replayed before a retry failed, or
   * landed by a late write) to hold only the others, so that the next start does not replay those again. The new
   * file is durable before the old one goes, and its name sorts where the old one did. On failure the file is kept
   * whole: its events are replayed again, and readers drop the copies. Never throws.
   */
  private async dropReplayedLines(chunk: SpoolChunk): Promise<void> {
    if (chunk.path === null || (chunk.replayed === 0 && landedAhead(chunk) === 0)) return;
    const old = chunk.path;
    let left: { events: UsageEvent[]; ties: Tie[] };
    let rewritten: { path: string; bytes: number } | null = null;
    try {
      left = unreplayed(chunk, await this.eventsOf(chunk));
      if (left.events.length > 0) rewritten = await this.writeSpoolFile(besideName(old), left.events);
    } catch (error) {
      this.log.warn('event_log_spool_file_not_trimmed', { error: describeError(error), path: old });
      return;
    }
    // The new file, if any, holds every event still owed: the old one may go.
    if (rewritten === null) {
      this.chunks = this.chunks.filter((other) => other !== chunk);
      this.release(chunk);
      chunk.ties = [];
    } else {
      if (chunk.events !== null) {
        this.heldEvents -= chunk.events.length - left.events.length;
        chunk.events = left.events;
      }
      chunk.path = rewritten.path;
      chunk.count = left.events.length;
      chunk.bytes = rewritten.bytes;
      chunk.replayed = 0;
      chunk.ties = left.ties;
      chunk.oldestDay = oldestDayOf(left.events, null);
    }
    try {
      await unlink(old);
      await syncDirectory(this.spoolDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.log.warn('event_log_spool_file_not_removed', { error: describeError(error), path: old });
    }
  }

  /** Writes a complete spool file under a new name, durably (file and directory entry); removes it on failure. */
  private async writeSpoolFile(path: string, events: readonly UsageEvent[]): Promise<{ path: string; bytes: number }> {
    const data = Buffer.from(events.map((event) => JSON.stringify(event) + '\n').join(''), 'utf8');
    const file = await open(path, 'wx');
    try {
      await writeAll(file, data);
      await file.datasync();
    } catch (error) {
      await file.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw error;
    }
    await file.close().catch(() => undefined);
    try {
      await syncDirectory(this.spoolDir);
    } catch (error) {
      await unlink(path).catch(() => undefined);
      throw error;
    }
    return { path, bytes: data.length };
  }

  /** Every event of a chunk, read back from its spool file when memory no longer holds them. */
  private async eventsOf(chunk: SpoolChunk): Promise<UsageEvent[]> {
    if (chunk.events !== null) return chunk.events;
    const read = await readSpoolFile(chunk.path!);
    // This process wrote the file: lines past `count` are from an append that failed (and was held elsewhere).
    return chunk.fromPreviousRun ? read.events : read.events.slice(0, chunk.count);
  }

  /** Waits until no direct write, spool append or catch-up hand-over is in flight. */
  private async settleWrites(): Promise<void> {
    while (this.direct.size > 0 || this.appendQueued || this.incoming.length > 0) {
      if (this.incoming.length > 0 && !this.appendQueued) this.scheduleAppend();
      await Promise.allSettled([...this.direct]);
      await this.lane;
    }
  }

  private inLane<T>(task: () => Promise<T>): Promise<T> {
    const run = this.lane.then(task);
    this.lane = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

interface SpoolFileContents {
  readonly events: UsageEvent[];
  readonly bytes: number;
  /** Non-empty lines that were not complete events. */
  readonly skipped: number;
}

/** Reads a spool file, skipping lines that are not complete events (the torn last line of a crashed writer). */
async function readSpoolFile(path: string): Promise<SpoolFileContents> {
  const events: UsageEvent[] = [];
  let bytes = 0;
  let skipped = 0;
  const input = createReadStream(path);
  const lines = createInterface({ input, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      bytes += Buffer.byteLength(line, 'utf8') + 1;
      const event = parseEventLine(line);
      if (event !== null) events.push(event);
      else if (line.trim() !== '') skipped++;
    }
  } finally {
    lines.close();
    input.destroy();
  }
  return { events, bytes, skipped };
}

/** Events of a chunk not yet in the primary (neither replayed nor landed by a late write), with their ties renumbered. */
function unreplayed(chunk: SpoolChunk, events: readonly UsageEvent[]): { events: UsageEvent[]; ties: Tie[] } {
  const left: UsageEvent[] = [];
  const ties: Tie[] = [];
  let next = chunk.replayed;
  for (const tie of chunk.ties) {
    const end = tie.from + tie.count;
    if (end <= next) continue;
    for (; next < tie.from; next++) left.push(events[next]!);
    if (tie.attempt.outcome === 'in-flight') {
      ties.push({ from: left.length, count: end - next, attempt: tie.attempt });
      for (; next < end; next++) left.push(events[next]!);
    } else if (tie.attempt.outcome === 'landed') {
      next = end;
    }
  }
  for (; next < events.length; next++) left.push(events[next]!);
  return { events: left, ties };
}

/** Events of a chunk that replay will skip because their late write landed them. */
function landedAhead(chunk: SpoolChunk): number {
  let landed = 0;
  for (const tie of chunk.ties) {
    if (tie.attempt.outcome === 'landed') landed += Math.max(0, tie.from + tie.count - Math.max(tie.from, chunk.replayed));
  }
  return landed;
}

/** True when `promise` settles within `timeoutMs` (always, once it settles, when that is not a bound). */
async function settlesWithin(promise: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  const settled = promise.then(
    () => true,
    () => true,
  );
  if (!(timeoutMs > 0 && Number.isFinite(timeoutMs))) return settled;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([settled, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A new spool file name that sorts where `path` does among the others (replay after a restart goes by name): the
 * same name with a random part added, or replacing the one an earlier rewrite added.
 */
function besideName(path: string): string {
  return `${path.replace(/(-r[0-9a-f]{8})?\.ndjson$/, '')}-r${randomBytes(4).toString('hex')}.ndjson`;
}

function oldestDayOf(events: readonly UsageEvent[], oldest: string | null): string | null {
  for (const event of events) {
    const day = eventDate(event);
    if (oldest === null || day < oldest) oldest = day;
  }
  return oldest;
}
