#!/usr/bin/env node
/**
 * The CDK app: one environment-agnostic gateway stack, checked by cdk-nag's AWS Solutions rules during synth.
 *
 * Optional context (`-c name=value` or cdk.json):
 * - `stackName`          CloudFormation stack name (default `LlmUsageGateway`)
 * - `upstreamOpenAiUrl`  OpenAI-compatible upstream (default `https://api.openai.com`)
 * - `logLevel`           debug | info | warn | error (default `info`)
 * - `proxyReservedConcurrency`  cap on concurrent proxy invocations (default none)
 * - `defaultMonthlyBudgetUsd`   monthly budget of every user without one of their own (default none)
 * - `defaultRateLimitPolicy`    rate-limit policies of every user without their own, e.g. `1000;w=86400` (default none)
 * - `budgetAssumedOutputTokens` output tokens reserved for requests without max tokens (default 4096)
 * - `limitsFailClosed`          true: refuse requests while limits cannot be checked (default false: forward them)
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
const budget = context('defaultMonthlyBudgetUsd');
const assumedOutput = context('budgetAssumedOutputTokens');

new LlmUsageGatewayStack(app, context('stackName') ?? 'LlmUsageGateway', {
  upstreamOpenAiUrl: context('upstreamOpenAiUrl'),
  logLevel: context('logLevel') as GatewayLogLevel | undefined,
  proxyReservedConcurrency: reserved === undefined ? undefined : Number(reserved),
  limits: {
    defaultMonthlyBudgetUsd: budget === undefined ? undefined : Number(budget),
    defaultRateLimitPolicy: context('defaultRateLimitPolicy'),
    assumedOutputTokens: assumedOutput === undefined ? undefined : Number(assumedOutput),
    failClosed: context('limitsFailClosed') === undefined ? undefined : context('limitsFailClosed') === 'true',
  },
});

// Every AWS Solutions finding fails the synth unless the construct that causes it acknowledges it with a reason.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
