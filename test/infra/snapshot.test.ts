/**
 * A net under the fine-grained tests: the whole synthesized template compared with the committed snapshot, so an
 * unintended change anywhere shows up in review. After an intended change, refresh it with
 *   UPDATE_SNAPSHOTS=1 node --import tsx --test test/infra/snapshot.test.ts
 * Asset hashes are masked: they change with the CDK version, not with the infrastructure.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { synthGateway } from './synth-stack';

const SNAPSHOT = path.join(__dirname, '__snapshots__', 'llm-usage-gateway.template.json');

function masked(template: unknown): unknown {
  return JSON.parse(JSON.stringify(template), (key, value: unknown) =>
    key === 'S3Key' && typeof value === 'string' && /^[0-9a-f]{64}\.zip$/.test(value) ? '<asset>.zip' : value,
  );
}

describe('LlmUsageGatewayStack template', () => {
  it('matches the committed snapshot', () => {
    const actual = masked(synthGateway().template.toJSON());
    const text = `${JSON.stringify(actual, null, 2)}\n`;
    if (process.env.UPDATE_SNAPSHOTS === '1' || (!existsSync(SNAPSHOT) && process.env.CI === undefined)) {
      mkdirSync(path.dirname(SNAPSHOT), { recursive: true });
      writeFileSync(SNAPSHOT, text);
    }
    assert.ok(existsSync(SNAPSHOT), `no snapshot at ${SNAPSHOT}; create it with UPDATE_SNAPSHOTS=1`);
    assert.deepEqual(actual, JSON.parse(readFileSync(SNAPSHOT, 'utf8')));
  });
});
