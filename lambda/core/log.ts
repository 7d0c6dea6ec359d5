/**
 * Structured logging. One JSON line per entry, so CloudWatch Logs Insights and `jq` can read it.
 * Callers pass only ids, sizes, statuses and error messages: never headers, keys or bodies.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(message: string, fields?: Readonly<Record<string, unknown>>): void;
  info(message: string, fields?: Readonly<Record<string, unknown>>): void;
  warn(message: string, fields?: Readonly<Record<string, unknown>>): void;
  error(message: string, fields?: Readonly<Record<string, unknown>>): void;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Serialises an error's name, message and code only: stacks and causes can carry request data. */
export function describeError(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { name: error.name, message: error.message, ...(typeof code === 'string' ? { code } : {}) };
  }
  return { message: String(error) };
}

/**
 * A logger writing JSON lines through `write` (stdout by default).
 * @example createLogger('info').warn('counter write failed', { request_id, attempt: 2 })
 */
export function createLogger(
  level: LogLevel = 'info',
  write: (line: string) => void = (line) => process.stdout.write(line + '\n'),
): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel, message: string, fields?: Readonly<Record<string, unknown>>) => {
    if (RANK[lvl] < min) return;
    // A field never overwrites the line's own level, time or message.
    const line: Record<string, unknown> = { level: lvl, time: new Date().toISOString(), message };
    for (const [name, value] of Object.entries(fields ?? {})) if (!Object.hasOwn(line, name)) line[name] = value;
    write(JSON.stringify(line));
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
