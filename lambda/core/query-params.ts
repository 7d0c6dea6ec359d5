/**
 * Strict query-string parsing for the metrics API: each parameter is validated on its own, a bad one is a 400
 * naming it, and an unknown one is refused too (a typo such as `sortby=` would otherwise be silently ignored).
 */
import { BadRequestError } from './errors';

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;

/** True for a real calendar day in `YYYY-MM-DD` form. */
export function isDay(value: string): boolean {
  const match = DAY.exec(value);
  if (!match) return false;
  const date = new Date(`${value}T00:00:00.000Z`);
  return !Number.isNaN(date.getTime()) && date.toISOString().slice(0, 10) === value;
}

export function dayOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Whole days from `from` to `to`, inclusive. */
export function daysBetween(from: string, to: string): number {
  return Math.round((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / 86_400_000) + 1;
}

export class QueryParams {
  private readonly used = new Set<string>();

  constructor(private readonly params: URLSearchParams) {}

  static of(url: URL): QueryParams {
    return new QueryParams(url.searchParams);
  }

  private raw(name: string): string | undefined {
    this.used.add(name);
    const values = this.params.getAll(name);
    if (values.length > 1) throw new BadRequestError('invalid_parameter', `"${name}" is given more than once.`, { param: name });
    return values[0];
  }

  string(name: string): string | undefined {
    const value = this.raw(name);
    return value === undefined || value === '' ? undefined : value;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const value = this.string(name);
    if (value === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(value)) {
      throw new BadRequestError('invalid_parameter', `"${name}" must be one of ${allowed.join(', ')}; got "${value.slice(0, 64)}".`, {
        param: name,
      });
    }
    return value as T;
  }

  integer(name: string, fallback: number, min: number, max: number): number {
    const value = this.string(name);
    if (value === undefined) return fallback;
    if (!/^\d{1,9}$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new BadRequestError('invalid_parameter', `"${name}" must be a whole number from ${min} to ${max}.`, { param: name });
    }
    return Number(value);
  }

  day(name: string, fallback: string): string;
  day(name: string): string | undefined;
  day(name: string, fallback?: string): string | undefined {
    const value = this.string(name);
    if (value === undefined) return fallback;
    if (!isDay(value)) {
      throw new BadRequestError('invalid_parameter', `"${name}" must be a date as YYYY-MM-DD.`, { param: name });
    }
    return value;
  }

  /** Call after reading every known parameter: anything left is refused. */
  rejectUnknown(): void {
    for (const name of this.params.keys()) {
      if (!this.used.has(name)) {
        throw new BadRequestError('unknown_parameter', `Unknown query parameter "${name.slice(0, 64)}".`, { param: name.slice(0, 64) });
      }
    }
  }
}
