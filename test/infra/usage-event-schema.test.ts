import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { USAGE_EVENT_VERSION } from '../../lambda/core/usage-event';
import {
  USAGE_EVENT_COLUMNS,
  USAGE_EVENT_PARTITION_COLUMN,
  USAGE_EVENT_PARTITION_KEYS,
} from '../../lib/usage-event-schema';

/**
 * Every field of a usage event, set. Typed `Required<UsageEvent>`, so a field added to `UsageEvent` stops this
 * file from compiling until it is added here (and, through the mapped type in lib/usage-event-schema.ts, to the
 * Glue schema). No field is null, so each value shows the JSON type its column receives.
 */
const SAMPLE: Required<UsageEvent> = {
  v: USAGE_EVENT_VERSION,
  request_id: '0b9f2c1e-6c1d-4a4e-9a38-2f0c5d7c9e11',
  ts: '2026-11-22T14:03:07.123Z',
  user_id: 'alice',
  properties: { Team: 'search' },
  provider: 'openai',
  model: 'gpt-4o-mini',
  path: '/v1/chat/completions',
  method: 'POST',
  status: 502,
  stream: true,
  latency_ms: 1234,
  ttft_ms: 210,
  prompt_tokens: 12,
  completion_tokens: 34,
  cached_prompt_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 46,
  cost_usd: 0.0000222,
  cost_nano_usd: 22200,
  cost_source: 'genai-prices',
  usage_source: 'provider',
  error: 'upstream reset the stream',
  key_id: 'a1b2c3d4e5f6',
};

/** The Hive types a JSON value of each JavaScript kind may convert to. */
const HIVE_TYPES_OF: Record<string, readonly string[]> = {
  string: ['string'],
  boolean: ['boolean'],
  integer: ['int', 'bigint'],
  fraction: ['double'],
  object: ['map<string,string>'],
};

function kindOf(value: unknown): string {
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'fraction';
  return typeof value;
}

describe('USAGE_EVENT_COLUMNS', () => {
  it('has one column per UsageEvent field, in the record’s order', () => {
    assert.deepEqual(
      USAGE_EVENT_COLUMNS.map((c) => c.name),
      Object.keys(SAMPLE),
    );
  });

  it('gives each column a Hive type that the field’s JSON value converts to', () => {
    const sampleValues = SAMPLE as unknown as Record<string, unknown>;
    for (const column of USAGE_EVENT_COLUMNS) {
      const value = sampleValues[column.name];
      const allowed = HIVE_TYPES_OF[kindOf(value)] ?? ['string'];
      assert.ok(allowed.includes(column.type.inputString), `${column.name}: ${column.type.inputString} for ${kindOf(value)}`);
    }
  });

  it('stores counts, durations and nano-dollars as bigint so sums cannot overflow 32 bits', () => {
    const bigints = USAGE_EVENT_COLUMNS.filter((c) => c.type.inputString === 'bigint').map((c) => c.name);
    assert.deepEqual(bigints, [
      'latency_ms',
      'ttft_ms',
      'prompt_tokens',
      'completion_tokens',
      'cached_prompt_tokens',
      'reasoning_tokens',
      'total_tokens',
      'cost_nano_usd',
    ]);
  });

  it('keeps cost_usd a double and properties a string map', () => {
    const typeOf = (name: string) => USAGE_EVENT_COLUMNS.find((c) => c.name === name)?.type.inputString;
    assert.equal(typeOf('cost_usd'), 'double');
    assert.equal(typeOf('properties'), 'map<string,string>');
    assert.equal(typeOf('stream'), 'boolean');
    assert.equal(typeOf('v'), 'int');
    assert.equal(typeOf('status'), 'int');
  });
});

describe('USAGE_EVENT_PARTITION_KEYS', () => {
  it('partitions by the event date only, as a string column that is not also a data column', () => {
    assert.deepEqual(
      USAGE_EVENT_PARTITION_KEYS.map((c) => [c.name, c.type.inputString]),
      [['dt', 'string']],
    );
    assert.equal(USAGE_EVENT_PARTITION_COLUMN, 'dt');
    assert.ok(!USAGE_EVENT_COLUMNS.some((c) => c.name === USAGE_EVENT_PARTITION_COLUMN));
  });
});
