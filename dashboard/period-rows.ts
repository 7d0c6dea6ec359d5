/**
 * Loads the per-user rows of a period, from the live totals (today, this month) or from the event log (a custom
 * range), and keeps them for the session so the Overview and the Users table share one load per period.
 */
import type { ApiClient, RequestOptions } from './api';
import type { ResolvedPeriod } from './period';
import { rowsFromLiveUsers, rowsFromUsageGroups, type LiveUser, type UsageGroup, type UserRow } from './users-model';

/** Most rows loaded for one period; the table says so when a period has more users. */
export const MAX_ROWS = 10_000;
const LIVE_PAGE = 1000;

export interface PeriodRows {
  readonly period: ResolvedPeriod;
  /** Every user of the period, largest cost first, up to {@link MAX_ROWS}. */
  readonly rows: UserRow[];
  /** More users had usage in the period than were loaded. */
  readonly truncated: boolean;
  readonly loadedAt: number;
}

export async function loadRows(api: ApiClient, period: ResolvedPeriod, options: RequestOptions = {}): Promise<PeriodRows> {
  if (period.source === 'history') {
    const answer = await api.get<{ groups: UsageGroup[] }>(
      '/usage',
      { from: period.from, to: period.to, group_by: 'user', sort: 'cost', order: 'desc', limit: MAX_ROWS },
      options,
    );
    return { period, rows: rowsFromUsageGroups(answer.groups), truncated: answer.groups.length >= MAX_ROWS, loadedAt: Date.now() };
  }
  const users: LiveUser[] = [];
  let cursor: string | undefined;
  do {
    const page = await api.get<{ users: LiveUser[]; next_cursor: string | null }>(
      '/users',
      { period: period.source === 'live-day' ? 'day' : 'month', date: period.to, sort: 'cost', order: 'desc', limit: LIVE_PAGE, cursor },
      options,
    );
    users.push(...page.users);
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined && users.length < MAX_ROWS);
  return { period, rows: rowsFromLiveUsers(users, period.source), truncated: cursor !== undefined, loadedAt: Date.now() };
}

/**
 * One load per period per session, until {@link RowsCache.forget}. A failed load is not kept. Loads are not tied
 * to the view that started them (another view may be waiting on the same one); the latest view to ask is the one
 * told about a long-running query.
 */
export class RowsCache {
  private readonly loads = new Map<string, { promise: Promise<PeriodRows>; onWaiting: (seconds: number) => void }>();

  get(api: ApiClient, period: ResolvedPeriod, onWaiting: (seconds: number) => void = () => {}): Promise<PeriodRows> {
    const existing = this.loads.get(period.key);
    if (existing !== undefined) {
      existing.onWaiting = onWaiting;
      return existing.promise;
    }
    const entry = { promise: Promise.resolve() as unknown as Promise<PeriodRows>, onWaiting };
    entry.promise = loadRows(api, period, { onWaiting: (seconds) => entry.onWaiting(seconds) });
    this.loads.set(period.key, entry);
    entry.promise.catch(() => {
      if (this.loads.get(period.key) === entry) this.loads.delete(period.key);
    });
    return entry.promise;
  }

  forget(): void {
    this.loads.clear();
  }
}
