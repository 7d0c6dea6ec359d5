/**
 * cdk-nag v3 runs as a CDK policy validation plugin (`Validations.of(app).addPlugins(...)` in bin/app.ts), so its
 * findings are not annotations: the pack's `validateScope` returns them directly, errors and warnings alike.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Stack, Validations } from 'aws-cdk-lib';
import * as apigateway from 'aws-cdk-lib/aws-apigateway';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LlmUsageGatewayStack } from '../../lib/llm-usage-gateway-stack';
import { synthGateway, testApp } from './synth-stack';

type Report = ReturnType<AwsSolutionsChecks['validateScope']>;

function describeViolations(report: Report): string {
  return report.violations
    .map((v) => `${v.severity} ${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath).join(', ')}`)
    .join('\n');
}

function acknowledgedIds(stack: Stack): string[] {
  const ids: string[] = [];
  for (const construct of stack.node.findAll()) {
    for (const entry of construct.node.metadata) {
      if (entry.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY) ids.push(...Object.keys(entry.data as object));
    }
  }
  return ids;
}

function acknowledgedReasons(stack: Stack): string[] {
  const reasons: string[] = [];
  for (const construct of stack.node.findAll()) {
    for (const entry of construct.node.metadata) {
      if (entry.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY) reasons.push(...Object.values(entry.data as Record<string, string>));
    }
  }
  return reasons;
}

describe('AWS Solutions checks', () => {
  let stack: LlmUsageGatewayStack;
  let report: Report;

  before(() => {
    ({ stack } = synthGateway());
    report = new AwsSolutionsChecks(undefined, { verbose: true }).validateScope(stack);
  });

  it('leave no unacknowledged error or warning on the default stack', () => {
    assert.deepEqual(
      report.violations.filter((v) => v.ruleName.startsWith('AwsSolutions-')),
      [],
      describeViolations(report),
    );
    assert.equal(report.success, true);
  });

  it('are acknowledged with a specific reason every time', () => {
    const reasons = acknowledgedReasons(stack);
    assert.ok(reasons.length > 10);
    for (const reason of reasons) assert.ok(reason.length >= 60, `too short to explain anything: "${reason}"`);
  });

  it('acknowledge the missing API Gateway authorizer because the functions check keys', () => {
    const ids = acknowledgedIds(stack).map((id) => id.replace(/^annotation::/i, ''));
    assert.ok(ids.includes('AwsSolutions-APIG4'));
    assert.ok(ids.includes('AwsSolutions-COG4'));
    assert.ok(ids.includes('AwsSolutions-SMG4'));
  });

  it('acknowledge IAM wildcards finding by finding, never a whole rule', () => {
    const ids = acknowledgedIds(stack).map((id) => id.replace(/^annotation::/i, ''));
    assert.ok(!ids.includes('AwsSolutions-IAM5'));
    assert.ok(ids.filter((id) => id.startsWith('AwsSolutions-IAM5[')).length > 0);
  });

  it('still find an unacknowledged problem (the check is live)', () => {
    const app = testApp();
    const probe = new Stack(app, 'Probe');
    new s3.Bucket(probe, 'Unlogged');
    app.synth();
    const probeReport = new AwsSolutionsChecks().validateScope(probe);
    assert.ok(probeReport.violations.some((v) => v.ruleName === 'AwsSolutions-S1'), describeViolations(probeReport));
  });
});

describe('AWS Solutions checks with optional security features on', () => {
  it('leave no unacknowledged finding with a web ACL and execution logs', () => {
    const app = testApp();
    const stack = new LlmUsageGatewayStack(app, 'LlmUsageGateway', {
      webAclArn: 'arn:aws:wafv2:us-east-1:123456789012:regional/webacl/gateway/abc',
      executionLogLevel: apigateway.MethodLoggingLevel.ERROR,
    });
    app.synth();
    assert.ok(stack.node.findAll().some((c) => c instanceof apigateway.CfnAccount));
    const report = new AwsSolutionsChecks().validateScope(stack);
    assert.deepEqual(report.violations, [], describeViolations(report));
  });
});
