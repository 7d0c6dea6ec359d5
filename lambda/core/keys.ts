/**
 * API keys are held only as SHA-256 hashes. A key's public id is the first 12 hex characters of its hash, so logs
 * and usage events can say which key was used without revealing it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { KeyStore } from './ports';

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** @example keyIdOf('gw_…') // '3f9a0c1b2d4e' */
export function keyIdOf(key: string): string {
  return hashKey(key).toString('hex').slice(0, 12);
}

/**
 * Keys from configuration (`GATEWAY_KEYS`, `METRICS_KEYS`), hashed on construction; the plain keys are not kept.
 * Comparison is constant-time over equal-length digests, and every stored hash is compared, so the time taken
 * says nothing about which key (if any) nearly matched.
 */
export class StaticKeyStore implements KeyStore {
  private readonly hashes: readonly Buffer[];

  constructor(keys: readonly string[]) {
    this.hashes = keys.map(hashKey);
  }

  get enabled(): boolean {
    return this.hashes.length > 0;
  }

  async verify(key: string): Promise<string | null> {
    const presented = hashKey(key);
    let match: Buffer | null = null;
    for (const hash of this.hashes) {
      if (timingSafeEqual(hash, presented)) match = hash;
    }
    return match === null ? null : match.toString('hex').slice(0, 12);
  }
}

/** The token of an `Authorization`-style header value, or null when it is not `Bearer <token>`. */
export function bearerToken(value: string | null): string | null {
  if (value === null) return null;
  const match = /^\s*Bearer\s+(\S+)\s*$/i.exec(value);
  return match ? match[1]! : null;
}
