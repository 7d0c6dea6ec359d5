/**
 * The on-disk layout of the local event log, shared by the writer ({@link FileEventSink}), the history store and
 * reconciliation.
 *
 * ```
 * ${dataDir}/events/dt=2026-11-22/part-1795356187123-4242-9f1c2a7e.ndjson   one UsageEvent per line
 * ${dataDir}/events/dt=2026-11-22/*.parquet                                 compacted days, same columns
 * ```
 *
 * The `dt=` directories are the same Hive-style partitions as the S3 log on AWS, so tools that read one read both.
 */
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Logger } from '../core/log';
import type { UsageEvent } from '../core/usage-event';

export type EventFileFormat = 'ndjson' | 'parquet';

export interface EventFile {
  /** The partition day, `YYYY-MM-DD`. */
  readonly dt: string;
  readonly path: string;
  readonly format: EventFileFormat;
}

/** Inclusive UTC days, `YYYY-MM-DD`; an open end takes every day on that side. */
export interface DayRange {
  readonly from?: string;
  readonly to?: string;
}

const PARTITION_DIR = /^dt=(\d{4}-\d{2}-\d{2})$/;

/** `${dataDir}/events`. */
export function eventsDir(dataDir: string): string {
  return join(dataDir, 'events');
}

/** `${dataDir}/events/dt=YYYY-MM-DD`. */
export function partitionDir(dataDir: string, dt: string): string {
  return join(eventsDir(dataDir), `dt=${dt}`);
}

function formatOf(name: string): EventFileFormat | null {
  if (name.endsWith('.ndjson')) return 'ndjson';
  if (name.endsWith('.parquet')) return 'parquet';
  return null;
}

async function listDir(path: string): Promise<string[]> {
  try {
    return await readdir(path);
  } catch (error) {
    // No events yet (or the day was never written): an empty log, not a failure.
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/**
 * Lists the event files of the days in `range`, oldest day first and, within a day, in name order (segment names
 * start with their creation time, so that is write order).
 * @example await listEventFiles('/var/lib/gateway', { from: '2026-11-01', to: '2026-11-30' })
 */
export async function listEventFiles(dataDir: string, range: DayRange = {}): Promise<EventFile[]> {
  const days = (await listDir(eventsDir(dataDir)))
    .map((name) => PARTITION_DIR.exec(name)?.[1])
    .filter((dt): dt is string => dt !== undefined)
    .filter((dt) => (range.from === undefined || dt >= range.from) && (range.to === undefined || dt <= range.to))
    .sort();
  const files: EventFile[] = [];
  for (const dt of days) {
    const dir = partitionDir(dataDir, dt);
    for (const name of (await listDir(dir)).sort()) {
      const format = formatOf(name);
      if (format !== null) files.push({ dt, path: join(dir, name), format });
    }
  }
  return files;
}

/**
 * Parses one NDJSON line into an event, or null when the line is not a complete event. A line cut short by a crash
 * mid-write is never valid JSON (an object only closes with its last byte), so it is rejected here.
 */
export function parseEventLine(line: string): UsageEvent | null {
  if (line.trim() === '') return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const candidate = value as Partial<UsageEvent>;
  if (typeof candidate.request_id !== 'string' || typeof candidate.ts !== 'string') return null;
  return value as UsageEvent;
}

export interface ReadEventsOptions extends DayRange {
  /** Told about each line that was skipped (a torn last line after a crash, or a foreign line). */
  readonly log?: Logger;
}

/**
 * Reads every event of the event files in a day range, in file order per day: the NDJSON segments line by line,
 * skipping lines that are not complete events (the torn last line of a segment whose writer was killed), and the
 * compacted Parquet files page by page through DuckDB. Duplicates are returned as stored: deduplicating by
 * `request_id` is the reader's business.
 * @example for await (const event of readEvents(dataDir, { from: '2026-11-22', to: '2026-11-22' })) count++;
 */
export async function* readEvents(dataDir: string, options: ReadEventsOptions = {}): AsyncIterable<UsageEvent> {
  const files = await listEventFiles(dataDir, options);
  for (const file of files) {
    if (file.format === 'parquet') {
      // Loaded only when there is Parquet to read: the NDJSON path needs no database.
      const { readParquetEvents } = await import('./duckdb-history-store');
      yield* readParquetEvents(file.path);
      continue;
    }
    const lines = createInterface({ input: createReadStream(file.path), crlfDelay: Infinity });
    let lineNumber = 0;
    for await (const line of lines) {
      lineNumber++;
      const event = parseEventLine(line);
      if (event !== null) yield event;
      else if (line.trim() !== '') options.log?.warn('skipped an incomplete event line', { path: file.path, line: lineNumber });
    }
  }
}
