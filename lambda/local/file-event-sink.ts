/**
 * The local event log: usage events appended as NDJSON to day-partitioned segment files under
 * `${dataDir}/events/dt=YYYY-MM-DD/`, fsync'd before a write is acknowledged.
 *
 * Durability without one fsync per event: writes that arrive while a commit is in flight wait for the next one and
 * share its fsync (group commit), so throughput grows with concurrency instead of being capped by disk latency.
 *
 * Crash safety rests on two rules: a segment is only ever appended to by the sink that created it (a new sink, or a
 * sink whose write failed, always starts a new file), and readers skip a last line that is not complete JSON. So a
 * process killed mid-write leaves at most one torn line, at the very end of a file nobody appends to again.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { silentLogger, describeError, type Logger } from '../core/log';
import { eventDate, type UsageEvent } from '../core/usage-event';
import type { EventSink } from '../core/ports';
import { partitionDir } from './event-files';

export { readEvents, listEventFiles, type DayRange, type EventFile, type ReadEventsOptions } from './event-files';

export interface FileEventSinkOptions {
  /** Root data directory; events go to `${dataDir}/events/dt=YYYY-MM-DD/`. */
  readonly dataDir: string;
  readonly log?: Logger;
  /**
   * A segment is closed and a new one started once it reaches this size.
   * @default 67108864 (64 MiB)
   */
  readonly segmentBytes?: number;
  /**
   * Segments kept open at once, one per day being written. Events around midnight (and late ones, stamped with
   * their arrival time) go to yesterday's partition, so two is enough; the least recently used one is closed.
   * @default 2
   */
  readonly maxOpenSegments?: number;
  /**
   * Least time between the starts of two group commits. Writes made meanwhile wait and join the next commit, so a
   * steady trickle of requests shares fsyncs as a burst does; a write after a quiet spell is committed at once.
   * @default 0 (a commit starts as soon as the previous one ends)
   */
  readonly minCommitIntervalMs?: number;
}

/** Counters of what the sink has done, for logs and tests. */
export interface FileEventSinkStats {
  /** Events made durable. */
  readonly events: number;
  /** Group commits (each writes every queued event, then fsyncs each touched segment once). */
  readonly commits: number;
  /** fsync calls on segment files. */
  readonly syncs: number;
  /** Segment files created. */
  readonly segmentsOpened: number;
  /** Segment files open right now. */
  readonly openSegments: number;
}

interface Segment {
  readonly dt: string;
  readonly path: string;
  readonly file: FileHandle;
  bytes: number;
  lastUsed: number;
  /** Written to since its last fsync. */
  dirty: boolean;
  closed: boolean;
}

interface PendingWrite {
  /** Serialised lines grouped by partition day. */
  readonly lines: ReadonlyMap<string, string>;
  readonly count: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;

/**
 * Appends usage events to NDJSON segment files, one JSON event per line.
 * @example
 * const sink = new FileEventSink({ dataDir: '/var/lib/gateway' });
 * await sink.write([event]);   // resolves once the line is on disk
 * await sink.close();
 */
export class FileEventSink implements EventSink {
  private readonly dataDir: string;
  private readonly log: Logger;
  private readonly segmentBytes: number;
  private readonly maxOpenSegments: number;
  private readonly minCommitIntervalMs: number;
  /** When the last commit started (performance.now()). */
  private lastCommitAt = -Infinity;
  /** Ends the wait for the next commit's turn early; set while the drain waits. */
  private endWait: (() => void) | null = null;
  private readonly segments = new Map<string, Segment>();
  private pending: PendingWrite[] = [];
  private draining: Promise<void> | null = null;
  private closed = false;
  private useCounter = 0;
  private counts = { events: 0, commits: 0, syncs: 0, segmentsOpened: 0 };

  constructor(options: FileEventSinkOptions) {
    this.dataDir = options.dataDir;
    this.log = options.log ?? silentLogger;
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.maxOpenSegments = Math.max(1, options.maxOpenSegments ?? 2);
    this.minCommitIntervalMs = Math.max(0, options.minCommitIntervalMs ?? 0);
  }

  /** Resolves once every event is written and fsync'd; rejects with the file system's error otherwise. */
  write(events: readonly UsageEvent[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('The event sink is closed.'));
    if (events.length === 0) return Promise.resolve();
    const byDay = new Map<string, string>();
    for (const event of events) {
      const dt = eventDate(event);
      byDay.set(dt, (byDay.get(dt) ?? '') + JSON.stringify(event) + '\n');
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ lines: byDay, count: events.length, resolve, reject });
      this.draining ??= this.drain();
    });
  }

  /** Resolves once every write issued before the call has been committed (or has failed). */
  async flush(): Promise<void> {
    while (this.draining !== null) await this.draining;
  }

  /** Commits what is queued, then closes every segment. Later writes reject. */
  async close(): Promise<void> {
    this.closed = true;
    this.endWait?.();
    await this.flush();
    await Promise.all([...this.segments.values()].map((segment) => this.closeSegment(segment)));
  }

  stats(): FileEventSinkStats {
    return { ...this.counts, openSegments: this.segments.size };
  }

  private async drain(): Promise<void> {
    // Yield once so that writes issued in the same tick (and I/O callbacks already due) join the first commit.
    await new Promise<void>((resolve) => setImmediate(resolve));
    try {
      while (this.pending.length > 0) {
        const wait = this.lastCommitAt + this.minCommitIntervalMs - performance.now();
        // Closing commits at once (close() cuts the wait short): nothing more is coming to share the fsync with.
        if (wait > 0 && !this.closed) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(() => this.endWait?.(), wait);
            this.endWait = () => {
              clearTimeout(timer);
              this.endWait = null;
              resolve();
            };
          });
        }
        const batch = this.pending;
        this.pending = [];
        this.lastCommitAt = performance.now();
        await this.commit(batch);
      }
    } finally {
      this.draining = null;
    }
  }

  private async commit(batch: readonly PendingWrite[]): Promise<void> {
    const byDay = new Map<string, string[]>();
    let count = 0;
    for (const write of batch) {
      count += write.count;
      for (const [dt, text] of write.lines) {
        const texts = byDay.get(dt);
        if (texts) texts.push(text);
        else byDay.set(dt, [text]);
      }
    }
    const touched: Segment[] = [];
    try {
      for (const [dt, texts] of byDay) {
        const data = Buffer.from(texts.join(''), 'utf8');
        const segment = await this.segmentFor(dt, data.length);
        touched.push(segment);
        segment.dirty = true;
        await writeAll(segment.file, data);
        segment.bytes += data.length;
      }
      // Segments rotated out during this commit were synced as they closed; the rest are synced here.
      for (const segment of touched) if (segment.dirty) await this.sync(segment);
    } catch (error) {
      // The segment may now end in a partial line: never append after it, or the next line would be glued to it.
      this.log.error('event log write failed', { error: describeError(error), events: count });
      await Promise.all(touched.map((segment) => this.closeSegment(segment, { sync: false })));
      for (const write of batch) write.reject(error);
      return;
    }
    this.counts.events += count;
    this.counts.commits++;
    for (const write of batch) write.resolve();
  }

  /** The open segment of a day with room for `bytes` more, rotating by size and opening one when needed. */
  private async segmentFor(dt: string, bytes: number): Promise<Segment> {
    let segment = this.segments.get(dt);
    if (segment && segment.bytes > 0 && segment.bytes + bytes > this.segmentBytes) {
      await this.closeSegment(segment);
      segment = undefined;
    }
    if (!segment) {
      await this.closeLeastRecentlyUsed(this.maxOpenSegments - 1);
      segment = await this.openSegment(dt);
    }
    segment.lastUsed = ++this.useCounter;
    return segment;
  }

  private async closeLeastRecentlyUsed(keep: number): Promise<void> {
    const byAge = [...this.segments.values()].sort((a, b) => a.lastUsed - b.lastUsed);
    for (const segment of byAge.slice(0, Math.max(0, byAge.length - keep))) await this.closeSegment(segment);
  }

  private async openSegment(dt: string): Promise<Segment> {
    const dir = partitionDir(this.dataDir, dt);
    const created = await mkdir(dir, { recursive: true });
    // A new directory entry is only durable once its parent is fsync'd: sync the parent of each directory created.
    if (created !== undefined) {
      for (let made = dir; ; made = dirname(made)) {
        await syncDirectory(dirname(made));
        if (made === created || dirname(made) === made) break;
      }
    }
    const name = `part-${Date.now()}-${process.pid}-${randomBytes(4).toString('hex')}.ndjson`;
    const path = join(dir, name);
    // 'wx' fails rather than share a file: a segment has exactly one writer for its whole life.
    const file = await open(path, 'wx');
    await syncDirectory(dir);
    const segment: Segment = { dt, path, file, bytes: 0, lastUsed: 0, dirty: false, closed: false };
    this.segments.set(dt, segment);
    this.counts.segmentsOpened++;
    this.log.debug('event segment opened', { path });
    return segment;
  }

  private async sync(segment: Segment): Promise<void> {
    await segment.file.datasync();
    segment.dirty = false;
    this.counts.syncs++;
  }

  /**
   * Closes a segment for good. Lines of the commit in progress may still be unsynced in it (one batch can span
   * more days than there are open segments), so it is synced first unless it is being abandoned after a failure.
   */
  private async closeSegment(segment: Segment, options: { sync: boolean } = { sync: true }): Promise<void> {
    if (this.segments.get(segment.dt) === segment) this.segments.delete(segment.dt);
    if (segment.closed) return;
    try {
      if (options.sync && segment.dirty) await this.sync(segment);
    } finally {
      segment.closed = true;
      await segment.file.close().catch((error: unknown) => {
        this.log.warn('event segment close failed', { error: describeError(error), path: segment.path });
      });
    }
  }
}

/** Writes all of `data` at the file's position (one write may take only part of it). */
export async function writeAll(file: FileHandle, data: Buffer): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await file.write(data, offset, data.length - offset);
    offset += bytesWritten;
  }
}

/** fsyncs a directory, which makes the entries created in it durable. */
export async function syncDirectory(path: string): Promise<void> {
  const dir = await open(path, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
