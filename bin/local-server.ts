/**
 * `npm start`: the gateway on this machine with embedded storage (files and DuckDB), no AWS account needed.
 */
import { readFileSync } from 'node:fs';
import { ConfigError, localConfigFromEnv } from '../lambda/core/config';
import { limitsConfigFromEnv } from '../lambda/core/limits';
import { createLogger, describeError } from '../lambda/core/log';
import { openLocalGateway } from '../lambda/local/local-gateway';
import { serve } from '../lambda/local/node-adapter';

async function main(): Promise<void> {
  let config;
  let limits;
  try {
    config = localConfigFromEnv(process.env);
    limits = limitsConfigFromEnv(process.env, (path) => readFileSync(path, 'utf8'));
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`Configuration error: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const log = createLogger(config.logLevel);
  const gateway = await openLocalGateway({ config, log, limits });
  const server = await serve(gateway.handler, {
    port: config.port,
    host: config.host,
    log,
    bodyTimeoutMs: config.bodyTimeoutMs,
    bodyIdleTimeoutMs: config.bodyIdleTimeoutMs,
  });
  const shownHost = config.host === '0.0.0.0' ? 'localhost' : config.host;
  const base = server.url.replace(/\/\/[^/]+:/, `//${shownHost}:`);
  const lines = [
    'LLM usage gateway is running.',
    `  OpenAI base URL:  ${base}/v1`,
    `  Metrics API:      ${base}/metrics/users`,
    `  Dashboard:        ${base}/dashboard/`,
    `  Upstream:         ${config.upstreamUrl}`,
    `  Data directory:   ${gateway.dataDir}`,
    config.gatewayKeys.length > 0
      ? `  Gateway keys:     ${config.gatewayKeys.length} configured; listening on ${config.host}:${config.port}`
      : `  Gateway keys:     none (GATEWAY_KEYS unset), so listening on ${config.host} only`,
    config.metricsKeys.length > 0 ? '  Metrics keys:     required' : '  Metrics keys:     none (METRICS_KEYS unset): the metrics API is open to local callers',
  ];
  process.stdout.write(lines.join('\n') + '\n');

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting_down', { signal });
    try {
      await server.close();
      await gateway.close();
      process.exit(0);
    } catch (error) {
      log.error('shutdown_failed', { error: describeError(error) });
      process.exit(1);
    }
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

main().catch((error: unknown) => {
  process.stderr.write(`Failed to start: ${describeError(error).message}\n`);
  process.exit(1);
});
