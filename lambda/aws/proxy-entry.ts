/**
 * Entry of the proxy Lambda (response streaming behind API Gateway REST). Translation only: the gateway is built
 * once per container from the environment, and each invocation is streamed through it.
 */
import { proxyLambdaConfigFromEnv } from './aws-config';
import type { AwsLambdaRuntime } from './awslambda';
import { createProxyApp } from './proxy-app';
import { streamingHandler } from './streaming-adapter';

declare const awslambda: AwsLambdaRuntime;

const config = proxyLambdaConfigFromEnv(process.env);

export const handler = awslambda.streamifyResponse(streamingHandler(createProxyApp(config)));
