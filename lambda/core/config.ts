/**
 * Configuration, parsed once at start into a typed object. A bad value fails fast with the variable's name.
 */
import type { LogLevel } from './log';

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Env = Readonly<Record<string, string | undefined>>;

/** Settings the proxy core needs, whatever runtime it is in. */
export interface ProxyConfig {
  /** Upstream base URL without trailing slash, e.g. `https://api.openai.com`. */
  readonly upstreamUrl: string;
  /** Provider id for pricing; derived from the upstream URL when not set. */
  readonly provider: string | undefined;
  /** Largest request body accepted, in bytes. */
  readonly maxBodyBytes: number;
  /** How long to wait for the upstream's response headers. */
  readonly upstreamTimeoutMs: number;
  /** Secrets that sign user ids (`USER_ID_SIGNING_SECRETS`); empty: user ids are taken as given. */
  readonly userIdSigningSecrets: readonly string[];
  /** Secret that pseudonymises user ids before storage (`USER_ID_HASH_SECRET`); unset: ids are stored as given. */
  readonly userIdHashSecret: string | undefined;
}

export interface LocalConfig extends ProxyConfig {
  readonly port: number;
  readonly host: string;
  readonly dataDir: string;
  /** Plain gateway keys from `GATEWAY_KEYS`; hashed as soon as they are read. */
  readonly gatewayKeys: readonly string[];
  readonly metricsKeys: readonly string[];
  readonly logLevel: LogLevel;
  /** Longest a request body may take to arrive, from the end of its headers (`BODY_TIMEOUT_MS`); then a 408. */
  readonly bodyTimeoutMs: number;
  /** Longest a request body may pause between two chunks (`BODY_IDLE_TIMEOUT_MS`); then a 408. */
  readonly bodyIdleTimeoutMs: number;
}

export function stringVar(env: Env, name: string, fallback: string): string {
  const raw = env[name];
  return raw === undefined || raw.trim() === '' ? fallback : raw.trim();
}

export function intVar(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(name, `must be a whole number, got "${raw}"`);
  const value = Number(raw.trim());
  if (value < min || value > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  return value;
}

export function urlVar(env: Env, name: string, fallback: string): string {
  const raw = stringVar(env, name, fallback);
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, `must be an absolute http(s) URL, got "${raw}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(name, `must be an http(s) URL, got "${url.protocol}"`);
  }
  if (url.search || url.hash) throw new ConfigError(name, 'must not have a query string or fragment');
  return url.toString().replace(/\/+$/, '');
}

/** Splits a comma-separated list of keys; each must be 16+ printable characters without spaces. */
export function keyListVar(env: Env, name: string): string[] {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return [];
  const keys = raw
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  for (const [i, key] of keys.entries()) {
    // Never echo the key itself: it is a secret.
    if (key.length < 16) throw new ConfigError(name, `key #${i + 1} is shorter than 16 characters`);
    if (!/^[\x21-\x7e]+$/.test(key)) throw new ConfigError(name, `key #${i + 1} has spaces or non-ASCII characters`);
  }
  return keys;
}

function logLevelVar(env: Env, name: string): LogLevel {
  const raw = stringVar(env, name, 'info');
  if (raw !== 'debug' && raw !== 'info' && raw !== 'warn' && raw !== 'error') {
    throw new ConfigError(name, `must be one of debug, info, warn, error; got "${raw}"`);
  }
  return raw;
}

export const DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024;
/** Two minutes: a full 10 MiB body still arrives over a link of about 90 KB/s. */
export const DEFAULT_BODY_TIMEOUT_MS = 120_000;
/** A client that sends nothing for this long mid-body has stalled (or is holding the connection on purpose). */
export const DEFAULT_BODY_IDLE_TIMEOUT_MS = 30_000;

/** Reads the proxy settings shared by every runtime. */
export function proxyConfigFromEnv(env: Env): ProxyConfig {
  const provider = env.PROVIDER?.trim();
  if (provider !== undefined && provider !== '' && !/^[a-z0-9-]{1,64}$/.test(provider)) {
    throw new ConfigError('PROVIDER', `must be a provider id such as "openai", got "${provider}"`);
  }
  return {
    upstreamUrl: urlVar(env, 'UPSTREAM_OPENAI_URL', 'https://api.openai.com'),
    provider: provider === '' ? undefined : provider,
    maxBodyBytes: intVar(env, 'MAX_BODY_BYTES', DEFAULT_MAX_BODY_BYTES, 1024, 256 * 1024 * 1024),
    upstreamTimeoutMs: intVar(env, 'UPSTREAM_TIMEOUT_MS', 600_000, 1_000, 3_600_000),
    userIdSigningSecrets: keyListVar(env, 'USER_ID_SIGNING_SECRETS'),
    userIdHashSecret: keyListVar(env, 'USER_ID_HASH_SECRET')[0],
  };
}

/**
 * Reads the local server's settings.
 * @example const config = localConfigFromEnv(process.env); // throws ConfigError naming the bad variable
 */
export function localConfigFromEnv(env: Env): LocalConfig {
  const gatewayKeys = keyListVar(env, 'GATEWAY_KEYS');
  // Without gateway keys anyone who can reach the port can spend the provider key: stay on loopback.
  const defaultHost = gatewayKeys.length > 0 ? '0.0.0.0' : '127.0.0.1';
  const host = stringVar(env, 'HOST', defaultHost);
  if (gatewayKeys.length === 0 && !isLoopback(host)) {
    throw new ConfigError('HOST', `binding to ${host} needs GATEWAY_KEYS, or anyone on the network could use the gateway`);
  }
  const bodyTimeoutMs = intVar(env, 'BODY_TIMEOUT_MS', DEFAULT_BODY_TIMEOUT_MS, 1_000, 3_600_000);
  const bodyIdleTimeoutMs = intVar(env, 'BODY_IDLE_TIMEOUT_MS', Math.min(DEFAULT_BODY_IDLE_TIMEOUT_MS, bodyTimeoutMs), 1_000, 3_600_000);
  if (bodyIdleTimeoutMs > bodyTimeoutMs) {
    throw new ConfigError('BODY_IDLE_TIMEOUT_MS', `must not be longer than BODY_TIMEOUT_MS (${bodyTimeoutMs}), got ${bodyIdleTimeoutMs}`);
  }
  return {
    ...proxyConfigFromEnv(env),
    port: intVar(env, 'PORT', 8787, 0, 65535),
    host,
    dataDir: stringVar(env, 'DATA_DIR', './.data'),
    gatewayKeys,
    metricsKeys: keyListVar(env, 'METRICS_KEYS'),
    logLevel: logLevelVar(env, 'LOG_LEVEL'),
    bodyTimeoutMs,
    bodyIdleTimeoutMs,
  };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
