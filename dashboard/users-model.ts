/**
 * The Users table without the DOM: rows from either data source, which columns a source can fill, sorting,
 * search, paging and the CSV export. Pure, so the tests can compute what the page must show.
 */
import { toCsv, type CsvValue } from './format';
import type { RowSource } from './period';

/** One row of the Users table. `null` means "this period's source does not have it", never zero. */
export interface UserRow {
  readonly user_id: string | null;
  readonly requests: number;
  readonly cost_usd: number;
  readonly unpriced_requests: number;
  readonly total_tokens: number;
  readonly active_days: number | null;
  readonly first_active: string | null;
  readonly last_active: string | null;
  readonly errors: number;
  readonly rate_limited: number | null;
}

export type ColumnKey = 'user_id' | 'requests' | 'cost_usd' | 'total_tokens' | 'active_days' | 'first_active' | 'last_active' | 'errors' | 'rate_limited';

export interface Column {
  readonly key: ColumnKey;
  readonly label: string;
  readonly numeric: boolean;
}

export const COLUMNS: readonly Column[] = [
  { key: 'user_id', label: 'User', numeric: false },
  { key: 'requests', label: 'Requests', numeric: true },
  { key: 'cost_usd', label: 'Cost', numeric: true },
  { key: 'total_tokens', label: 'Tokens', numeric: true },
  { key: 'active_days', label: 'Active days', numeric: true },
  { key: 'first_active', label: 'First active (UTC)', numeric: false },
  { key: 'last_active', label: 'Last active (UTC)', numeric: false },
  { key: 'errors', label: 'Errors', numeric: true },
  { key: 'rate_limited', label: 'Rate limited', numeric: true },
];

/** Columns each source cannot fill, and why, as the page explains it. */
export const MISSING_COLUMNS: Readonly<Record<RowSource, { readonly columns: readonly ColumnKey[]; readonly reason: string }>> = {
  'live-day': { columns: [], reason: '' },
  'live-month': {
    columns: ['active_days'],
    reason: 'The live monthly totals do not count active days; a user’s page shows them.',
  },
  history: {
    columns: ['active_days', 'first_active', 'last_active', 'rate_limited'],
    reason:
      'A custom range is totalled from the event log, which gives requests, cost, tokens and errors per user; a user’s page shows their active days and activity.',
  },
};

export function isAvailable(source: RowSource, key: ColumnKey): boolean {
  return !MISSING_COLUMNS[source].columns.includes(key);
}

/** A user as `GET /metrics/users` returns it. */
export interface LiveUser {
  readonly user_id: string | null;
  readonly requests: number;
  readonly errors: number;
  readonly total_tokens: number;
  readonly cost_usd: number;
  readonly unpriced_requests: number;
  readonly rate_limited: number;
  readonly first_active: string | null;
  readonly last_active: string | null;
}

/** A group as `GET /metrics/usage` returns it. */
export interface UsageGroup {
  readonly group: string | null;
  readonly requests: number;
  readonly errors: number;
  readonly users?: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
  readonly cost_usd: number;
  readonly unpriced_requests: number;
}

/** Rows from the live totals. A user listed for a day was active that one day; a month's list has no day count. */
export function rowsFromLiveUsers(users: readonly LiveUser[], source: 'live-day' | 'live-month'): UserRow[] {
  return users.map((u) => ({
    user_id: u.user_id,
    requests: u.requests,
    cost_usd: u.cost_usd,
    unpriced_requests: u.unpriced_requests,
    total_tokens: u.total_tokens,
    active_days: source === 'live-day' && u.requests > 0 ? 1 : null,
    first_active: u.first_active,
    last_active: u.last_active,
    errors: u.errors,
    rate_limited: u.rate_limited,
  }));
}

/** Rows from event log totals grouped by user. */
export function rowsFromUsageGroups(groups: readonly UsageGroup[]): UserRow[] {
  return groups.map((g) => ({
    user_id: g.group,
    requests: g.requests,
    cost_usd: g.cost_usd,
    unpriced_requests: g.unpriced_requests,
    total_tokens: g.total_tokens,
    active_days: null,
    first_active: null,
    last_active: null,
    errors: g.errors,
    rate_limited: null,
  }));
}

export type SortOrder = 'asc' | 'desc';

export interface SortState {
  readonly key: ColumnKey;
  readonly order: SortOrder;
}

/** The order a column sorts in on its first click: largest and latest first, names A to Z. */
export function firstOrder(key: ColumnKey): SortOrder {
  return key === 'user_id' ? 'asc' : 'desc';
}

function compareValues(a: string | number | null, b: string | number | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a) < String(b) ? -1 : 1;
}

/**
 * Rows sorted by one column; ties (and the no-user bucket, which sorts as an empty id) fall back to the user id
 * A to Z so the order is the same on every load. Missing values sort lowest.
 */
export function sortRows(rows: readonly UserRow[], sort: SortState): UserRow[] {
  const sign = sort.order === 'asc' ? 1 : -1;
  const id = (r: UserRow) => r.user_id ?? '';
  return [...rows].sort((a, b) => {
    const primary = sort.key === 'user_id' ? compareValues(id(a), id(b)) : compareValues(a[sort.key], b[sort.key]);
    return primary !== 0 ? sign * primary : compareValues(id(a), id(b));
  });
}

/** Rows whose user id contains `text`, ignoring case; all rows for empty text. */
export function searchRows(rows: readonly UserRow[], text: string): UserRow[] {
  const needle = text.trim().toLowerCase();
  if (needle === '') return [...rows];
  return rows.filter((r) => r.user_id !== null && r.user_id.toLowerCase().includes(needle));
}

export const PAGE_SIZE = 50;

export interface Page<T> {
  readonly items: T[];
  /** 0-based, clamped into range. */
  readonly index: number;
  readonly count: number;
}

export function pageOf<T>(items: readonly T[], index: number, size = PAGE_SIZE): Page<T> {
  const count = Math.max(1, Math.ceil(items.length / size));
  const clamped = Math.min(Math.max(0, index), count - 1);
  return { items: items.slice(clamped * size, (clamped + 1) * size), index: clamped, count };
}

/** CSV column names: the API's field names, so a file lines up with what the metrics API returns. */
const CSV_NAMES: Readonly<Record<ColumnKey, string>> = {
  user_id: 'user_id',
  requests: 'requests',
  cost_usd: 'cost_usd',
  total_tokens: 'total_tokens',
  active_days: 'active_days',
  first_active: 'first_active',
  last_active: 'last_active',
  errors: 'errors',
  rate_limited: 'rate_limited',
};

/**
 * The CSV of what the table shows: the rows matching the search, in the table's order (every page), with the
 * columns this period's source has. Costs are the API's exact numbers, not the rounded display.
 */
export function usersCsv(rows: readonly UserRow[], source: RowSource): string {
  const columns = COLUMNS.filter((c) => isAvailable(source, c.key));
  const body = rows.map((row) => columns.map((c): CsvValue => row[c.key]));
  const header = columns.map((c) => CSV_NAMES[c.key]);
  if (columns.some((c) => c.key === 'cost_usd')) {
    header.push('unpriced_requests');
    rows.forEach((row, i) => body[i]!.push(row.unpriced_requests));
  }
  return toCsv(header, body);
}
