import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import type { Template } from 'aws-cdk-lib/assertions';
import { limitsConfigFromEnv } from '../../lambda/core/limits';
import { limitsEnvironment } from '../../lib/gateway-limits';
import { LlmUsageGatewayStack } from '../../lib/llm-usage-gateway-stack';
import { logicalIdOf, synthGateway, testApp } from './synth-stack';

type Env = Record<string, unknown>;

let template: Template;

function environmentOf(memorySize: number): Env {
  const id = logicalIdOf(template, 'AWS::Lambda::Function', { MemorySize: memorySize });
  return (template.findResources('AWS::Lambda::Function')[id] as { Properties: { Environment: { Variables: Env } } }).Properties
    .Environment.Variables;
}

before(() => {
  ({ template } = synthGateway({
    limits: { defaultMonthlyBudgetUsd: 12.5, defaultRateLimitPolicy: '1000;w=86400', assumedOutputTokens: 2048 },
  }));
});

describe('stack limits', () => {
  it('hands the default limits to both functions as the variables their config parser reads', () => {
    for (const memorySize of [256, 512]) {
      const env = environmentOf(memorySize);
      assert.equal(env.DEFAULT_MONTHLY_BUDGET_USD, '12.5');
      assert.equal(env.DEFAULT_RATE_LIMIT_POLICY, '1000;w=86400');
      assert.equal(env.BUDGET_ASSUMED_OUTPUT_TOKENS, '2048');
      const parsed = limitsConfigFromEnv(env as Record<string, string>);
      assert.equal(parsed.defaults.monthlyBudgetNanoUsd, 12_500_000_000);
      assert.equal(parsed.assumedOutputTokens, 2048);
    }
  });

  it('fails the synth on a policy the functions would refuse at cold start', () => {
    assert.throws(
      () => new LlmUsageGatewayStack(testApp(), 'Bad', { limits: { defaultRateLimitPolicy: '10;w=30' } }),
      /limits: DEFAULT_RATE_LIMIT_POLICY: "w" must be a whole number of seconds from 60/,
    );
  });
});

describe('limitsEnvironment', () => {
  it('sets nothing when no limit is configured, so the code defaults apply', () => {
    assert.deepEqual(limitsEnvironment(), {});
  });

  it('writes budgets as plain decimals, never in exponent notation', () => {
    assert.equal(limitsEnvironment({ defaultMonthlyBudgetUsd: 0.0000001 }).DEFAULT_MONTHLY_BUDGET_USD, '0.0000001');
    assert.equal(limitsEnvironment({ defaultMonthlyBudgetUsd: 100 }).DEFAULT_MONTHLY_BUDGET_USD, '100');
    assert.throws(() => limitsEnvironment({ defaultMonthlyBudgetUsd: -1 }), /DEFAULT_MONTHLY_BUDGET_USD/);
  });
});
