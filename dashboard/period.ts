/**
 * The period the Overview and the Users table show: today, this month (both from the live totals) or a custom
 * range of days (from the event log). All days are UTC, as the metrics API counts them.
 */

export type PeriodChoice = { readonly kind: 'today' } | { readonly kind: 'month' } | { readonly kind: 'custom'; readonly from: string; readonly to: string };

/**
 * Where a period's per-user rows come from: `live-day` / `live-month` read `GET /metrics/users` (live totals, with
 * first/last active and rate limited), `history` reads `GET /metrics/usage?group_by=user` (the event log).
 */
export type RowSource = 'live-day' | 'live-month' | 'history';

export interface ResolvedPeriod {
  readonly choice: PeriodChoice;
  /** Inclusive UTC days. */
  readonly from: string;
  readonly to: string;
  readonly label: string;
  readonly source: RowSource;
  /** Stable key for caching what was loaded for this period. */
  readonly key: string;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** True for a real calendar day written `YYYY-MM-DD`. */
export function isDay(value: string | null | undefined): value is string {
  if (typeof value !== 'string' || !DAY.test(value)) return false;
  const date = new Date(`${value}T00:00:00Z`);
  return !Number.isNaN(date.getTime()) && date.toISOString().slice(0, 10) === value;
}

/** `day` moved by `days` (negative for earlier). */
export function addDays(day: string, days: number): string {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().slice(0, 10);
}

/** The UTC day of a clock reading. */
export function utcDay(now: number): string {
  return new Date(now).toISOString().slice(0, 10);
}

/** Inclusive count of days from `from` to `to`. */
export function daysInRange(from: string, to: string): number {
  return Math.round((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / 86_400_000) + 1;
}

/** Every day from `from` to `to`, inclusive. */
export function daysOf(from: string, to: string): string[] {
  const days: string[] = [];
  for (let day = from; day <= to; day = addDays(day, 1)) days.push(day);
  return days;
}

/**
 * The days, label and data source of a period choice.
 * @example resolvePeriod({ kind: 'month' }, '2026-11-22') // { from: '2026-11-01', to: '2026-11-22', source: 'live-month', … }
 */
export function resolvePeriod(choice: PeriodChoice, today: string): ResolvedPeriod {
  switch (choice.kind) {
    case 'today':
      return { choice, from: today, to: today, label: `Today (${today}, UTC)`, source: 'live-day', key: `day:${today}` };
    case 'month': {
      const from = `${today.slice(0, 7)}-01`;
      return { choice, from, to: today, label: `This month (${today.slice(0, 7)}, UTC)`, source: 'live-month', key: `month:${today.slice(0, 7)}` };
    }
    case 'custom':
      return {
        choice,
        from: choice.from,
        to: choice.to,
        label: choice.from === choice.to ? `${choice.from} (UTC)` : `${choice.from} to ${choice.to} (UTC)`,
        source: 'history',
        key: `range:${choice.from}:${choice.to}`,
      };
  }
}

/** Reads a period from the page address' query (`period=today|month|custom&from&to`); this month otherwise. */
export function periodFromParams(params: URLSearchParams): PeriodChoice {
  const kind = params.get('period');
  if (kind === 'today') return { kind: 'today' };
  if (kind === 'custom') {
    const from = params.get('from');
    const to = params.get('to');
    if (isDay(from) && isDay(to) && from <= to) return { kind: 'custom', from, to };
  }
  return { kind: 'month' };
}

/** The query parameters that {@link periodFromParams} reads back. */
export function periodParams(choice: PeriodChoice): Record<string, string> {
  return choice.kind === 'custom' ? { period: 'custom', from: choice.from, to: choice.to } : { period: choice.kind };
}

/** Longest custom range, as the metrics API accepts it. */
export const MAX_RANGE_DAYS = 366;

/** Why a custom range cannot be shown, or null when it can. */
export function rangeProblem(from: string, to: string): string | null {
  if (!isDay(from) || !isDay(to)) return 'Pick both days.';
  if (from > to) return 'The first day must not be after the last.';
  if (daysInRange(from, to) > MAX_RANGE_DAYS) return `A range may span at most ${MAX_RANGE_DAYS} days.`;
  return null;
}
