/**
 * The accounting check: every request the load generator got an answer to is one usage event in the event files
 * (no duplicate `request_id`) and one request in the live counters, per user.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { readEvents } from '../lambda/local/event-files';

/** One request as the load generator saw it. */
export interface SentRequest {
  readonly requestId: string;
  readonly userId: string;
  /** HTTP status, 0 when no answer arrived. */
  readonly status: number;
  /** `Helicone-Id` the gateway answered with. */
  readonly gatewayId: string | undefined;
}

export interface EventTally {
  /** Event lines per request id (more than 1 is a duplicate). */
  readonly linesById: Map<string, number>;
  /** Status of each request id's (first) event. */
  readonly statusById: Map<string, number>;
  /** Distinct request ids per user. */
  readonly byUser: Map<string, number>;
  readonly lines: number;
}

/** Reads the gateway's event files, keeping the events of users that `wanted` accepts. */
export async function tallyEvents(dataDir: string, wanted: (userId: string) => boolean): Promise<EventTally> {
  const linesById = new Map<string, number>();
  const statusById = new Map<string, number>();
  const byUser = new Map<string, number>();
  let lines = 0;
  for await (const event of readEvents(dataDir)) {
    if (event.user_id === null || !wanted(event.user_id)) continue;
    lines++;
    const seen = linesById.get(event.request_id) ?? 0;
    linesById.set(event.request_id, seen + 1);
    if (seen === 0) {
      statusById.set(event.request_id, event.status);
      byUser.set(event.user_id, (byUser.get(event.user_id) ?? 0) + 1);
    }
  }
  return { linesById, statusById, byUser, lines };
}

/** All-time `requests` per user from the metrics API (`GET /metrics/users`, every page). */
export async function liveCounters(gatewayUrl: string, wanted: (userId: string) => boolean): Promise<Map<string, number>> {
  const byUser = new Map<string, number>();
  let cursor: string | null = null;
  do {
    const url = new URL('/metrics/users', gatewayUrl);
    url.searchParams.set('period', 'all');
    url.searchParams.set('limit', '1000');
    if (cursor !== null) url.searchParams.set('cursor', cursor);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`GET ${url.pathname} answered ${response.status}: ${await response.text()}`);
    const page = (await response.json()) as {
      users: { user_id: string | null; requests: number }[];
      next_cursor: string | null;
    };
    for (const user of page.users) {
      if (user.user_id !== null && wanted(user.user_id)) byUser.set(user.user_id, (byUser.get(user.user_id) ?? 0) + user.requests);
    }
    cursor = page.next_cursor;
  } while (cursor !== null);
  return byUser;
}

function sum(values: Iterable<number>): number {
  let total = 0;
  for (const value of values) total += value;
  return total;
}

/**
 * Polls the live counters until they hold `expected` requests for the wanted users, or stop moving for
 * `quietMs`, or `timeoutMs` passes (they are written after each answer, batched, so they trail the last answer).
 * Returns the counters and how long after the call they settled.
 */
export async function settledCounters(
  gatewayUrl: string,
  wanted: (userId: string) => boolean,
  expected: number | undefined,
  { quietMs = 3000, timeoutMs = 30_000, pollMs = 100 } = {},
): Promise<{ counters: Map<string, number>; settledMs: number; reachedExpected: boolean }> {
  const started = performance.now();
  let last = -1;
  let lastChange = started;
  for (;;) {
    const counters = await liveCounters(gatewayUrl, wanted);
    const total = sum(counters.values());
    const now = performance.now();
    if (expected !== undefined && total === expected) return { counters, settledMs: now - started, reachedExpected: true };
    if (total !== last) {
      last = total;
      lastChange = now;
    }
    if (now - lastChange >= quietMs || now - started >= timeoutMs) {
      return { counters, settledMs: lastChange - started, reachedExpected: expected === undefined ? true : total === expected };
    }
    await sleep(pollMs);
  }
}

export interface AccountingReport {
  readonly pass: boolean;
  readonly sent: number;
  readonly answered2xx: number;
  readonly notAnswered2xx: number;
  /** Event lines of these users, and distinct request ids among them. */
  readonly eventLines: number;
  readonly distinctEvents: number;
  readonly duplicateEvents: number;
  /** 2xx answers whose request id has no event. */
  readonly missingEvents: number;
  /** Events whose request id the generator never got a 2xx for. */
  readonly unexpectedEvents: number;
  /** `Helicone-Id` answers that differ from the request id sent. */
  readonly idMismatches: number;
  readonly counterRequests: number;
  readonly users: number;
  /** Users whose 2xx answers, events and counters do not all agree. */
  readonly usersDisagreeing: number;
  /** Milliseconds after the last answer until the counters held every request. */
  readonly countersSettledMs: number;
  readonly failures: readonly string[];
}

/**
 * Compares what the load generator sent with the event files and the live counters. It passes only when every
 * request was answered 2xx and answers = distinct events = counter requests, in total and for each user, with no
 * duplicate event and no event for a request that was not sent.
 */
export function checkAccounting(
  sent: readonly SentRequest[],
  events: EventTally,
  counters: ReadonlyMap<string, number>,
  countersSettledMs: number,
): AccountingReport {
  const failures: string[] = [];
  const okByUser = new Map<string, number>();
  const okIds = new Set<string>();
  let idMismatches = 0;
  for (const request of sent) {
    if (request.gatewayId !== undefined && request.gatewayId !== request.requestId) idMismatches++;
    if (request.status >= 200 && request.status < 300) {
      okIds.add(request.requestId);
      okByUser.set(request.userId, (okByUser.get(request.userId) ?? 0) + 1);
    }
  }
  let missingEvents = 0;
  for (const id of okIds) if (!events.linesById.has(id)) missingEvents++;
  let unexpectedEvents = 0;
  let duplicateEvents = 0;
  for (const [id, lines] of events.linesById) {
    if (!okIds.has(id)) unexpectedEvents++;
    duplicateEvents += lines - 1;
  }
  const users = new Set([...okByUser.keys(), ...events.byUser.keys(), ...counters.keys()]);
  let usersDisagreeing = 0;
  for (const user of users) {
    const ok = okByUser.get(user) ?? 0;
    if (ok !== (events.byUser.get(user) ?? 0) || ok !== (counters.get(user) ?? 0)) usersDisagreeing++;
  }
  const counterRequests = sum(counters.values());
  const notAnswered2xx = sent.length - okIds.size;
  if (notAnswered2xx > 0) failures.push(`${notAnswered2xx} requests were not answered 2xx`);
  if (missingEvents > 0) failures.push(`${missingEvents} answered requests have no event`);
  if (unexpectedEvents > 0) failures.push(`${unexpectedEvents} events for requests not answered 2xx`);
  if (duplicateEvents > 0) failures.push(`${duplicateEvents} duplicate event lines`);
  if (idMismatches > 0) failures.push(`${idMismatches} answers carried a different Helicone-Id`);
  if (counterRequests !== okIds.size) failures.push(`counters hold ${counterRequests} requests, ${okIds.size} were answered`);
  if (usersDisagreeing > 0) failures.push(`${usersDisagreeing} users disagree between answers, events and counters`);
  return {
    pass: failures.length === 0,
    sent: sent.length,
    answered2xx: okIds.size,
    notAnswered2xx,
    eventLines: events.lines,
    distinctEvents: events.linesById.size,
    duplicateEvents,
    missingEvents,
    unexpectedEvents,
    idMismatches,
    counterRequests,
    users: users.size,
    usersDisagreeing,
    countersSettledMs,
    failures,
  };
}
