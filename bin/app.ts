#!/usr/bin/env node
/**
 * The CDK app: one environment-agnostic gateway stack, checked by cdk-nag's AWS Solutions rules during synth.
 *
 * Optional context (`-c name=value` or cdk.json):
 * - `stackName`          CloudFormation stack name (default `LlmUsageGateway`)
 * - `upstreamOpenAiUrl`  OpenAI-compatible upstream (default `https://api.openai.com`)
 * - `logLevel`           debug | info | warn | error (default `info`)
 * - `proxyReservedConcurrency`  cap on concurrent proxy invocations (default none)
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { GatewayLogLevel } from '../lib/gateway-function';
import { LlmUsageGatewayStack } from '../lib/llm-usage-gateway-stack';

const app = new App();
const context = (name: string): string | undefined => {
  const value: unknown = app.node.tryGetContext(name);
  return value === undefined || value === null || value === '' ? undefined : String(value);
};
const reserved = context('proxyReservedConcurrency');

new LlmUsageGatewayStack(app, context('stackName') ?? 'LlmUsageGateway', {
  upstreamOpenAiUrl: context('upstreamOpenAiUrl'),
  logLevel: context('logLevel') as GatewayLogLevel | undefined,
  proxyReservedConcurrency: reserved === undefined ? undefined : Number(reserved),
});

// Every AWS Solutions finding fails the synth unless the construct that causes it acknowledges it with a reason.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
