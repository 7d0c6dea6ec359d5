/**
 * How the dashboard writes numbers, times and CSV. Pure functions (no DOM), shared by the page and its tests so a
 * test can say "the cell shows formatUsd(api.cost_usd)".
 */

const COUNT = new Intl.NumberFormat('en-US');

/** A whole count with thousands separators: `12,345`. */
export function formatCount(value: number): string {
  return COUNT.format(value);
}

/**
 * A cost in USD with as many decimals as small per-user costs need: two from $1, four from 1¢, six below.
 * @example formatUsd(1234.5) // '$1,234.50'; formatUsd(0.001293) // '$0.001293'
 */
export function formatUsd(value: number): string {
  if (value === 0) return '$0.00';
  const abs = Math.abs(value);
  if (abs < 0.000001) return value < 0 ? '-<$0.000001' : '<$0.000001';
  const digits = abs >= 1 ? 2 : abs >= 0.01 ? 4 : 6;
  const text = abs.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return `${value < 0 ? '-' : ''}$${text}`;
}

/**
 * A cost for a chart axis: as {@link formatUsd}, without trailing zeros.
 * @example formatUsdAxis(0.0005) // '$0.0005'
 */
export function formatUsdAxis(value: number): string {
  return value === 0 ? '$0' : formatUsd(value).replace(/(\.\d*?[1-9])0+$|\.0+$/, '$1');
}

/** A share as a percentage with one decimal: `2.5%`. */
export function formatPercent(ratio: number): string {
  return `${(ratio * 100).toFixed(1)}%`;
}

/** Milliseconds, rounded: `1,240 ms`. */
export function formatMs(value: number | null | undefined): string {
  return value === null || value === undefined ? '—' : `${formatCount(Math.round(value))} ms`;
}

/**
 * An ISO timestamp as UTC minutes, the time zone every metric is bucketed in.
 * @example formatTime('2026-11-22T14:03:07.123Z') // '2026-11-22 14:03'
 */
export function formatTime(iso: string | null | undefined): string {
  if (iso === null || iso === undefined || iso === '') return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toISOString().slice(0, 16).replace('T', ' ');
}

/** A user id for display: the bucket of requests that named no user has none. */
export function formatUserId(userId: string | null): string {
  return userId === null ? '(no user)' : userId;
}

export type CsvValue = string | number | null | undefined;

/**
 * One CSV field (RFC 4180). Text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first)
 * gets a leading `'`: user ids come from the calling application and must not become formulas in Excel.
 */
export function csvField(value: CsvValue): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : '';
  const text = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** A whole CSV document: a header row, then the rows, CRLF line ends. */
export function toCsv(header: readonly string[], rows: readonly (readonly CsvValue[])[]): string {
  return [header, ...rows].map((row) => row.map(csvField).join(',')).join('\r\n') + '\r\n';
}
