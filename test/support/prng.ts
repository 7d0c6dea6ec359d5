/**
 * A small seeded pseudo-random generator for generated tests: the same seed gives the same cases on every machine
 * and every run, so a failing case can be replayed from the seed and index its assertion message names.
 *
 * @example
 * const rng = new Prng(42);
 * rng.int(0, 9);               // 0..9 inclusive
 * rng.pick(['a', 'b']);        // one of them
 * rng.chance(0.1);             // true one time in ten
 * rng.bytes(16);               // 16 arbitrary bytes
 */
export class Prng {
  private state: number;

  constructor(seed: number) {
    // Any 32-bit value works; 0 would be a fixed point of some generators, not of this one.
    this.state = seed >>> 0;
  }

  /** A uniform float in [0, 1) (mulberry32: 32 bits of state, passes the usual statistical batteries for test use). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max], both inclusive. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.floor(this.next() * items.length)]!;
  }

  /** `count` arbitrary bytes. */
  bytes(count: number): Buffer {
    const out = Buffer.alloc(count);
    for (let i = 0; i < count; i++) out[i] = Math.floor(this.next() * 256);
    return out;
  }

  /** A string of `length` characters drawn from `alphabet`. */
  string(alphabet: string, length: number): string {
    let out = '';
    for (let i = 0; i < length; i++) out += alphabet[Math.floor(this.next() * alphabet.length)];
    return out;
  }

  /** A new generator whose sequence depends on this one's seed and `label`, so case families do not shift each other. */
  fork(label: string): Prng {
    let hash = this.state ^ 0x811c9dc5;
    for (let i = 0; i < label.length; i++) hash = Math.imul(hash ^ label.charCodeAt(i), 0x01000193);
    return new Prng(hash >>> 0);
  }
}
