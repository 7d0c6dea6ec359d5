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
  /** Answered with another HTTP status. */
  readonly answeredOther: number;
  /** No answer at all (the load generator gave up or the connection failed). */
  readonly unanswered: number;
  /** Event lines of these users, and distinct request ids among them. */
  readonly eventLines: number;
  readonly distinctEvents: number;
  readonly duplicateEvents: number;
  /** Answered requests with no event, or whose event has another status than the answer. */
  readonly missingEvents: number;
  readonly statusMismatches: number;
  /** Events whose request id was never sent. */
  readonly unexpectedEvents: number;
  /** Unanswered requests the gateway still recorded (it cannot know the client stopped listening). */
  readonly unansweredWithEvent: number;
  /** `Helicone-Id` answers that differ from the request id sent. */
  readonly idMismatches: number;
  readonly counterRequests: number;
  readonly users: number;
  /** Users whose distinct events and counter requests differ. */
  readonly usersDisagreeing: number;
  /** Milliseconds after the last answer until the counters held every event. */
  readonly countersSettledMs: number;
  readonly failures: readonly string[];
}

/**
 * Compares what the load generator saw with the event files and the live counters. Passes when every answered
 * request has exactly one event with the status the client received, no request has two, no event belongs to a
 * request that was not sent, and the live counters hold exactly the events, in total and for each user. A request
 * that got no answer may or may not have an event (the gateway cannot tell that its answer was not read); those
 * are counted, not failed.
 */
export function checkAccounting(
  sent: readonly SentRequest[],
  events: EventTally,
  counters: ReadonlyMap<string, number>,
  countersSettledMs: number,
): AccountingReport {
  const failures: string[] = [];
  const sentIds = new Set<string>();
  let answered2xx = 0;
  let answeredOther = 0;
  let unanswered = 0;
  let missingEvents = 0;
  let statusMismatches = 0;
  let unansweredWithEvent = 0;
  let idMismatches = 0;
  for (const request of sent) {
    sentIds.add(request.requestId);
    if (request.gatewayId !== undefined && request.gatewayId !== request.requestId) idMismatches++;
    const eventStatus = events.statusById.get(request.requestId);
    if (request.status === 0) {
      unanswered++;
      if (eventStatus !== undefined) unansweredWithEvent++;
      continue;
    }
    if (request.status >= 200 && request.status < 300) answered2xx++;
    else answeredOther++;
    if (eventStatus === undefined) missingEvents++;
    else if (eventStatus !== request.status) statusMismatches++;
  }
  let unexpectedEvents = 0;
  let duplicateEvents = 0;
  for (const [id, lines] of events.linesById) {
    if (!sentIds.has(id)) unexpectedEvents++;
    duplicateEvents += lines - 1;
  }
  const users = new Set([...events.byUser.keys(), ...counters.keys()]);
  let usersDisagreeing = 0;
  for (const user of users) if ((events.byUser.get(user) ?? 0) !== (counters.get(user) ?? 0)) usersDisagreeing++;
  const counterRequests = sum(counters.values());
  if (missingEvents > 0) failures.push(`${missingEvents} answered requests have no event`);
  if (statusMismatches > 0) failures.push(`${statusMismatches} events carry another status than the answer`);
  if (unexpectedEvents > 0) failures.push(`${unexpectedEvents} events for requests that were not sent`);
  if (duplicateEvents > 0) failures.push(`${duplicateEvents} duplicate event lines`);
  if (idMismatches > 0) failures.push(`${idMismatches} answers carried another Helicone-Id than the request id sent`);
  if (counterRequests !== events.linesById.size) {
    failures.push(`counters hold ${counterRequests} requests, the event files ${events.linesById.size}`);
  }
  if (usersDisagreeing > 0) failures.push(`${usersDisagreeing} users have other counter totals than events`);
  return {
    pass: failures.length === 0,
    sent: sent.length,
    answered2xx,
    answeredOther,
    unanswered,
    eventLines: events.lines,
    distinctEvents: events.linesById.size,
    duplicateEvents,
    missingEvents,
    statusMismatches,
    unexpectedEvents,
    unansweredWithEvent,
    idMismatches,
    counterRequests,
    users: users.size,
    usersDisagreeing,
    countersSettledMs,
    failures,
  };
}

/**
 * Reads the event files and the live counters once both have caught up: first until the files hold at least
 * `minEvents` events of the wanted users (both writes happen after each answer), then until the counters hold
 * what the files hold, re-reading the files to be sure neither moved on meanwhile.
 */
export async function settledEventsAndCounters(
  dataDir: string,
  gatewayUrl: string,
  wanted: (userId: string) => boolean,
  minEvents: number,
): Promise<{ events: EventTally; counters: Map<string, number>; countersSettledAt: number }> {
  let events = await tallyEvents(dataDir, wanted);
  for (let i = 0; i < 20 && events.linesById.size < minEvents; i++) {
    await sleep(250);
    events = await tallyEvents(dataDir, wanted);
  }
  for (let attempt = 0; ; attempt++) {
    const started = performance.now();
    const settled = await settledCounters(gatewayUrl, wanted, events.linesById.size);
    const again = await tallyEvents(dataDir, wanted);
    if (again.lines === events.lines || attempt >= 3) {
      return { events, counters: settled.counters, countersSettledAt: started + settled.settledMs };
    }
    events = again;
  }
}
