/**
 * The metrics Lambda serves the dashboard beside the metrics API: API Gateway routes `/dashboard` and
 * `/dashboard/{proxy+}` to it, with the stage left out of `event.path`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { metricsLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { createMetricsApp } from '../../lambda/aws/metrics-app';
import { DASHBOARD_CSP } from '../../lambda/core/dashboard';
import { DASHBOARD_ASSETS, DASHBOARD_VERSION } from '../../lambda/core/dashboard-assets.generated';
import { silentLogger } from '../../lambda/core/log';
import { restProxyEvent } from '../support/api-gateway-events';

// Nothing listens here: serving the dashboard must not touch DynamoDB, Athena, S3 or Secrets Manager.
const nowhere = { region: 'us-east-1', endpoint: 'http://127.0.0.1:9', credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'test' }, maxAttempts: 1 };
const config = metricsLambdaConfigFromEnv({
  COUNTERS_TABLE_NAME: 'counters',
  ADMIN_KEY_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:admin-key',
  ATHENA_WORKGROUP: 'wg',
  ATHENA_DATABASE: 'db',
  ATHENA_TABLE: 'events',
});
const handler = bufferedHandler(
  createMetricsApp(
    config,
    { counters: new DynamoDBClient(nowhere), athena: new AthenaClient(nowhere), s3: new S3Client(nowhere), secrets: new SecretsManagerClient(nowhere) },
    silentLogger,
  ),
  { logger: silentLogger },
);

const header = (result: { headers?: Record<string, unknown> }, name: string) =>
  Object.entries(result.headers ?? {}).find(([key]) => key.toLowerCase() === name)?.[1];

describe('the metrics Lambda', () => {
  it('redirects /dashboard to dashboard/, which the browser resolves under the stage (/prod/dashboard/)', async () => {
    const result = await handler(restProxyEvent({ path: '/dashboard' }));
    assert.equal(result.statusCode, 301);
    assert.equal(header(result, 'location'), 'dashboard/');
  });

  it('serves the dashboard page and its script as text, with the CSP', async () => {
    const page = await handler(restProxyEvent({ path: '/dashboard/' }));
    assert.equal(page.statusCode, 200);
    assert.equal(page.isBase64Encoded, false);
    assert.equal(page.body, DASHBOARD_ASSETS['index.html']!.body);
    assert.equal(header(page, 'content-type'), 'text/html; charset=utf-8');
    assert.equal(header(page, 'content-security-policy'), DASHBOARD_CSP);
    const script = await handler(restProxyEvent({ path: '/dashboard/app.js', query: [['v', DASHBOARD_VERSION]] }));
    assert.equal(script.statusCode, 200);
    assert.equal(script.body, DASHBOARD_ASSETS['app.js']!.body);
    assert.equal(header(script, 'cache-control'), 'public, max-age=31536000, immutable');
  });

  it('still answers the metrics API, behind the admin key', async () => {
    const result = await handler(restProxyEvent({ path: '/metrics/users' }));
    assert.equal(result.statusCode, 401);
    assert.equal(JSON.parse(result.body).error.code, 'missing_metrics_key');
  });
});
