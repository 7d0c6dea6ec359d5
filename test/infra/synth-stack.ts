/**
 * Synthesizes the gateway stack for infrastructure tests: the feature flags of cdk.json, no Lambda bundling
 * (`aws:cdk:bundling-stacks` = [] makes NodejsFunction stage a placeholder asset instead of running esbuild) and
 * no built-in CloudFormation validation (it costs seconds and is exercised by `cdk synth`).
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { LlmUsageGatewayStack, type LlmUsageGatewayStackProps } from '../../lib/llm-usage-gateway-stack';

const CDK_JSON = path.resolve(__dirname, '..', '..', 'cdk.json');

/** The context of cdk.json (feature flags), so tests synthesize what `cdk synth` synthesizes. */
export function cdkJsonContext(): Record<string, unknown> {
  return (JSON.parse(readFileSync(CDK_JSON, 'utf8')) as { context: Record<string, unknown> }).context;
}

/** An App configured like `cdk synth`, minus bundling and CloudFormation validation. */
export function testApp(): App {
  return new App({
    context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] },
    builtinCloudFormationValidation: false,
  });
}

export interface SynthesizedGateway {
  readonly stack: LlmUsageGatewayStack;
  readonly template: Template;
}

/** One synthesized gateway stack; call it once per test file, in `before`. */
export function synthGateway(props: LlmUsageGatewayStackProps = {}): SynthesizedGateway {
  const stack = new LlmUsageGatewayStack(testApp(), 'LlmUsageGateway', props);
  return { stack, template: Template.fromStack(stack) };
}

/** The logical id of the only resource of `type` whose properties match; fails unless exactly one matches. */
export function logicalIdOf(template: Template, type: string, props?: Record<string, unknown>): string {
  const found = Object.keys(template.findResources(type, props === undefined ? undefined : { Properties: props }));
  if (found.length !== 1) throw new Error(`expected one ${type}, found ${found.length}: ${found.join(', ')}`);
  return found[0]!;
}
