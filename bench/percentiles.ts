/**
 * Latency percentiles by the nearest-rank method: the reported value is one that was actually measured.
 */

/** Sorted copy, ascending. */
export function sortedMs(values: Iterable<number>): Float64Array {
  return Float64Array.from(values).sort();
}

/**
 * The `p`-th percentile (0 < p ≤ 100) of ascending `sorted` values, or NaN for none.
 * @example percentile(sortedMs([5, 1, 3, 2, 4]), 50) // 3
 */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Milliseconds with two decimals, or `n/a`. */
export function ms(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : 'n/a';
}
