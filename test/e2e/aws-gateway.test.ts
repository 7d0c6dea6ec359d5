/**
 * End to end on the AWS path, offline: the official OpenAI SDK → API Gateway REST (local, with the stage prefix)
 * → the proxy Lambda's streaming handler → the fake upstream, with usage going to Firehose (fake, JSON 1.1
 * protocol), DynamoDB (dynalite) and, when Firehose fails, the S3 recovery bucket (fake); read back through the
 * metrics Lambda's buffered handler with the admin key from Secrets Manager (fake) and history from Athena (fake,
 * its queries run on DuckDB over the events Firehose received).
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import OpenAI from 'openai';
import { metricsLambdaConfigFromEnv, proxyLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { createCounterStoreClient } from '../../lambda/aws/dynamodb-counter-store';
import { createGatewayKey, type CreatedGatewayKey } from '../../lambda/aws/dynamodb-key-store';
import { createFirehoseClient } from '../../lambda/aws/firehose-event-sink';
import { createMetricsApp } from '../../lambda/aws/metrics-app';
import { createProxyApp } from '../../lambda/aws/proxy-app';
import { streamingHandler } from '../../lambda/aws/streaming-adapter';
import { createLogger, type Logger } from '../../lambda/core/log';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { eventsRelationSql } from '../../lambda/local/duckdb-history-store';
import { listEventFiles, partitionDir } from '../../lambda/local/event-files';
import { awslambdaShim, installAwslambdaShim } from '../support/awslambda-shim';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { FakeAthena, type ExecutionParameterValue } from '../support/fake-athena';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';
import { startFakeSecretsManager, type FakeSecretsManager } from '../support/fake-secrets-manager';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { startLocalApiGateway, type LocalApiGateway } from '../support/local-api-gateway';

const PROVIDER_KEY = 'sk-e2e-provider-key-0123456789abcdef';
const ADMIN_KEY = 'admin-e2e-key-0123456789abcdef';
const ADMIN_SECRET_ID = 'llm-usage-gateway/admin-key';
const STREAM = 'usage-events';
const RECOVERY_BUCKET = 'usage-log';
const GLUE_DATABASE = 'usage_db';
const GLUE_TABLE = 'usage_events';
const WORK_GROUP = 'usage';
/** Short, so a query that does not finish answers 202 quickly; a finishing one is done at its first poll. */
const QUERY_WAIT_MS = 500;

const messages = [{ role: 'user' as const, content: 'Hello from the AWS end-to-end test' }];
const today = () => new Date().toISOString().slice(0, 10);

let restoreAwslambda: () => void;
let dynamo: LocalDynamoDb;
let firehose: FakeFirehose;
let s3: FakeS3;
let athena: FakeAthena;
let secrets: FakeSecretsManager;
let upstream: FakeUpstream;
let duck: DuckDb;
let historyDir: string;
let gatewayKey: CreatedGatewayKey;
const logLines: string[] = [];
let api: LocalApiGateway;
let openai: OpenAI;
let direct: OpenAI;
const extraApis: LocalApiGateway[] = [];

/** A logger that keeps its JSON lines, so tests can read what the functions logged. */
function recordingLogger(lines: string[]): Logger {
  return createLogger('debug', (line) => lines.push(line));
}

function s3Client(): S3Client {
  return new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: TEST_REGION, credentials: FAKE_CREDENTIALS });
}

/** The proxy function as deployed (config from its environment), its clients pointed at the local fakes. */
function proxyFunction(counters: DynamoDBClient, log: Logger) {
  const config = proxyLambdaConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    EVENTS_STREAM_NAME: STREAM,
    COUNTERS_TABLE_NAME: dynamo.tableName,
    RECOVERY_BUCKET_NAME: RECOVERY_BUCKET,
    LOG_LEVEL: 'debug',
  });
  const app = createProxyApp(
    config,
    {
      firehose: createFirehoseClient(TEST_REGION, { endpoint: firehose.endpoint, credentials: FAKE_CREDENTIALS }),
      s3: s3Client(),
      counters,
      keys: dynamo.client,
      loadTokenizer: async () => (await import('../../lambda/tokenizer')).o200kCounter,
    },
    log,
  );
  return awslambdaShim.streamifyResponse(streamingHandler(app, { logger: log }));
}

/** The metrics function as deployed. */
function metricsFunction(log: Logger) {
  const config = metricsLambdaConfigFromEnv({
    COUNTERS_TABLE_NAME: dynamo.tableName,
    ADMIN_KEY_SECRET_ARN: ADMIN_SECRET_ID,
    ATHENA_WORKGROUP: WORK_GROUP,
    ATHENA_DATABASE: GLUE_DATABASE,
    ATHENA_TABLE: GLUE_TABLE,
    QUERY_WAIT_MS: String(QUERY_WAIT_MS),
    LOG_LEVEL: 'debug',
  });
  const app = createMetricsApp(
    config,
    {
      counters: createCounterStoreClient({ endpoint: dynamo.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS }),
      athena: new AthenaClient({ endpoint: athena.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS, maxAttempts: 1 }),
      secrets: new SecretsManagerClient({ endpoint: secrets.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS }),
      s3: s3Client(),
    },
    log,
  );
  return bufferedHandler(app, { logger: log });
}

/** Every record Firehose accepted, decoded; each must be exactly one JSON line ending in a newline. */
function firehoseEvents(): UsageEvent[] {
  return firehose.records(STREAM).map((record) => {
    assert.ok(record.endsWith('\n'), 'a Firehose record ends with a newline');
    assert.equal(record.indexOf('\n'), record.length - 1, 'a Firehose record holds one line');
    return JSON.parse(record) as UsageEvent;
  });
}

/** Waits until every invocation (and its usage writes) finished, then the one event of `requestId` in Firehose. */
async function deliveredOnce(requestId: string | null): Promise<UsageEvent> {
  assert.ok(requestId, 'the response carries Helicone-Id');
  await api.idle();
  const found = firehoseEvents().filter((event) => event.request_id === requestId);
  assert.equal(found.length, 1, `exactly one event for ${requestId} reached Firehose`);
  return found[0]!;
}

/** Calls the metrics API through API Gateway once every invocation finished. */
async function metrics(path: string, key: string | null = ADMIN_KEY): Promise<{ status: number; body: any }> {
  await api.idle();
  const response = await fetch(`${api.url}/prod${path}`, key === null ? {} : { headers: { authorization: `Bearer ${key}` } });
  return { status: response.status, body: await response.json() };
}

function totalsOf(events: readonly UsageEvent[]) {
  const sum = (pick: (event: UsageEvent) => number | null) => events.reduce((total, event) => total + (pick(event) ?? 0), 0);
  return {
    requests: events.length,
    errors: events.filter((e) => e.status < 200 || e.status >= 300 || e.error !== null).length,
    prompt_tokens: sum((e) => e.prompt_tokens),
    completion_tokens: sum((e) => e.completion_tokens),
    total_tokens: sum((e) => e.total_tokens),
    cost_usd: sum((e) => e.cost_nano_usd) / 1e9,
  };
}

function pickTotals(totals: Record<string, unknown>) {
  const { requests, errors, prompt_tokens, completion_tokens, total_tokens, cost_usd } = totals;
  return { requests, errors, prompt_tokens, completion_tokens, total_tokens, cost_usd };
}

/** The user's live totals in DynamoDB, read through the metrics API, equal what the events add up to. */
async function assertLiveTotals(userId: string, events: readonly UsageEvent[]): Promise<void> {
  const { status, body } = await metrics(`/metrics/users/${encodeURIComponent(userId)}`);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.user_id, userId);
  assert.deepEqual(pickTotals(body.all_time), totalsOf(events));
  assert.deepEqual(pickTotals(body.today), totalsOf(events));
}

/**
 * Athena's side of a history query: the events Firehose received, laid out as its S3 prefix is
 * (`dt=YYYY-MM-DD/`), and the very SQL the metrics function sent, run on DuckDB with its parameters.
 */
async function runOnEventLog(sql: string, params: readonly ExecutionParameterValue[]): Promise<Record<string, unknown>[]> {
  await rm(historyDir, { recursive: true, force: true });
  const byDay = new Map<string, string[]>();
  for (const record of firehose.records(STREAM)) {
    const day = (JSON.parse(record) as UsageEvent).ts.slice(0, 10);
    byDay.set(day, [...(byDay.get(day) ?? []), record]);
  }
  for (const [day, records] of byDay) {
    await mkdir(partitionDir(historyDir, day), { recursive: true });
    await writeFile(join(partitionDir(historyDir, day), 'delivery-0001.ndjson'), records.join(''));
  }
  const files = await listEventFiles(historyDir);
  if (files.length === 0) return [];
  return duck.exclusive(async (db) => {
    await db.run(`CREATE SCHEMA IF NOT EXISTS ${GLUE_DATABASE}`);
    await db.run(`CREATE OR REPLACE VIEW ${GLUE_DATABASE}.${GLUE_TABLE} AS ${eventsRelationSql(files)}`);
    return db.all(sql, [...params]);
  });
}

/** A port nothing listens on: bound once, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

before(async () => {
  restoreAwslambda = installAwslambdaShim();
  [dynamo, firehose, s3, athena, secrets, upstream, duck] = await Promise.all([
    startDynalite(),
    FakeFirehose.start(),
    FakeS3.start(),
    FakeAthena.start(),
    startFakeSecretsManager({ [ADMIN_SECRET_ID]: JSON.stringify({ key: ADMIN_KEY }) }),
    startFakeUpstream(),
    openDuckDb(':memory:'),
  ]);
  historyDir = await mkdtemp(join(tmpdir(), 'gateway-athena-'));
  athena.answer = runOnEventLog;
  gatewayKey = await createGatewayKey(dynamo.client, dynamo.tableName, 'end-to-end');
  const log = recordingLogger(logLines);
  const counters = createCounterStoreClient({ endpoint: dynamo.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS });
  api = await startLocalApiGateway({ streaming: proxyFunction(counters, log), buffered: metricsFunction(log) });
  openai = new OpenAI({
    apiKey: PROVIDER_KEY,
    baseURL: `${api.url}/prod/v1`,
    defaultHeaders: { 'Helicone-Auth': `Bearer ${gatewayKey.key}` },
    maxRetries: 0,
  });
  direct = new OpenAI({ apiKey: PROVIDER_KEY, baseURL: `${upstream.url}/v1`, maxRetries: 0 });
});

after(async () => {
  for (const extra of extraApis) await extra.close();
  await api?.close();
  await Promise.all([dynamo?.close(), firehose?.close(), s3?.close(), athena?.close(), secrets?.close(), upstream?.close(), duck?.close()]);
  if (historyDir) await rm(historyDir, { recursive: true, force: true });
  restoreAwslambda?.();
});

describe('the OpenAI SDK through API Gateway and the proxy Lambda', () => {
  it('option 1: bills the user parameter, with one event in Firehose and matching live totals in DynamoDB', async () => {
    const { data: answer, response } = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, user: 'aws_user_1' })
      .withResponse();
    assert.equal(response.status, 200);
    assert.equal(answer.model, 'gpt-4o-mini-2024-07-18');
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.user_id, 'aws_user_1');
    assert.equal(event.path, '/v1/chat/completions', 'the stage is not part of the metered path');
    assert.equal(event.key_id, gatewayKey.key_id);
    assert.equal(event.model, 'gpt-4o-mini-2024-07-18');
    assert.equal(event.usage_source, 'provider');
    assert.equal(event.prompt_tokens, answer.usage?.prompt_tokens);
    assert.equal(event.completion_tokens, answer.usage?.completion_tokens);
    assert.equal(event.total_tokens, answer.usage?.total_tokens);
    assert.equal(event.cost_source, 'genai-prices');
    assert.ok(event.cost_nano_usd !== null && event.cost_nano_usd > 0);
    await assertLiveTotals('aws_user_1', [event]);
  });

  it('option 2: the Helicone-User-Id header wins over the body and custom properties are kept', async () => {
    const { data: answer, response } = await openai.chat.completions
      .create(
        { model: 'gpt-4o-mini', messages, user: 'someone-else' },
        {
          headers: {
            'Helicone-User-Id': 'aws_user_2@example.com',
            'Helicone-Property-Plan': 'premium',
            'Helicone-Property-Feature': 'chat',
          },
        },
      )
      .withResponse();
    assert.ok(answer.choices[0]?.message.content);
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.user_id, 'aws_user_2@example.com');
    assert.deepEqual(event.properties, { plan: 'premium', feature: 'chat' });
    assert.equal(event.completion_tokens, answer.usage?.completion_tokens);
    await assertLiveTotals('aws_user_2@example.com', [event]);
    assert.equal((await metrics('/metrics/users/someone-else')).status, 404);
  });

  it('streams exactly the chunks a direct call gives, metered from the usage the gateway asked for', async () => {
    const request = { model: 'gpt-4o-mini', messages, stream: true as const };
    const { data: stream, response } = await openai.chat.completions
      .create(request, { headers: { 'Helicone-User-Id': 'aws_streamer' } })
      .withResponse();
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    const viaGateway: unknown[] = [];
    for await (const chunk of stream) viaGateway.push(chunk);
    const directly: unknown[] = [];
    for await (const chunk of await direct.chat.completions.create(request)) directly.push(chunk);
    assert.ok(viaGateway.length > 3);
    assert.deepEqual(viaGateway, directly);
    assert.ok(viaGateway.every((chunk) => !('usage' in (chunk as object))), 'the injected usage stays invisible');
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.stream, true);
    assert.equal(event.usage_source, 'provider');
    assert.ok(event.completion_tokens > 0);
    await assertLiveTotals('aws_streamer', [event]);
  });

  it('streams with include_usage when the client asks, and the client gets the usage chunk', async () => {
    const request = { model: 'gpt-4o-mini', messages, stream: true as const, stream_options: { include_usage: true } };
    const { data: stream, response } = await openai.chat.completions
      .create(request, { headers: { 'Helicone-User-Id': 'aws_usage_asker' } })
      .withResponse();
    const viaGateway = [];
    for await (const chunk of stream) viaGateway.push(chunk);
    const directly = [];
    for await (const chunk of await direct.chat.completions.create(request)) directly.push(chunk);
    assert.deepEqual(viaGateway, directly);
    const usage = viaGateway.at(-1)?.usage;
    assert.ok(usage && usage.total_tokens > 0);
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.prompt_tokens, usage.prompt_tokens);
    assert.equal(event.completion_tokens, usage.completion_tokens);
    assert.equal(event.total_tokens, usage.total_tokens);
    await assertLiveTotals('aws_usage_asker', [event]);
  });

  it('meters /v1/responses (plain and streamed) and /v1/embeddings', async () => {
    const headers = { 'Helicone-User-Id': 'aws_multi' };
    const plain = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Write one line' }, { headers }).withResponse();
    const streamed = await openai.responses
      .create({ model: 'gpt-4o-mini', input: 'Write two lines', stream: true }, { headers })
      .withResponse();
    let completed: OpenAI.Responses.Response | undefined;
    for await (const event of streamed.data) if (event.type === 'response.completed') completed = event.response;
    const embedded = await openai.embeddings
      .create({ model: 'text-embedding-3-small', input: 'vectorise me please' }, { headers })
      .withResponse();
    assert.equal(embedded.data.data[0]?.embedding.length, 8);

    const responseEvent = await deliveredOnce(plain.response.headers.get('helicone-id'));
    assert.equal(responseEvent.path, '/v1/responses');
    assert.equal(responseEvent.prompt_tokens, plain.data.usage?.input_tokens);
    assert.equal(responseEvent.completion_tokens, plain.data.usage?.output_tokens);
    const streamedEvent = await deliveredOnce(streamed.response.headers.get('helicone-id'));
    assert.ok(completed);
    assert.equal(streamedEvent.stream, true);
    assert.equal(streamedEvent.total_tokens, completed.usage?.total_tokens);
    const embeddingEvent = await deliveredOnce(embedded.response.headers.get('helicone-id'));
    assert.equal(embeddingEvent.path, '/v1/embeddings');
    assert.equal(embeddingEvent.prompt_tokens, embedded.data.usage.prompt_tokens);
    assert.equal(embeddingEvent.completion_tokens, 0);
    await assertLiveTotals('aws_multi', [responseEvent, streamedEvent, embeddingEvent]);
  });

  it('refuses a missing or wrong gateway key as AuthenticationError, and nothing reaches the upstream or the log', async () => {
    await api.idle();
    const upstreamCalls = upstream.requests.length;
    const records = firehose.records(STREAM).length;
    const keyless = new OpenAI({ apiKey: PROVIDER_KEY, baseURL: `${api.url}/prod/v1`, maxRetries: 0 });
    const unknownKey = `gw_${'A'.repeat(43)}`;
    for (const [client, code] of [
      [keyless, 'missing_gateway_key'],
      [keyless.withOptions({ defaultHeaders: { 'Helicone-Auth': `Bearer ${unknownKey}` } }), 'invalid_gateway_key'],
      [keyless.withOptions({ defaultHeaders: { 'Helicone-Auth': 'Bearer not-a-gateway-key' } }), 'invalid_gateway_key'],
    ] as const) {
      await assert.rejects(
        client.chat.completions.create({ model: 'gpt-4o-mini', messages, user: 'aws_intruder' }),
        (error: unknown) => error instanceof OpenAI.AuthenticationError && error.status === 401 && error.code === code,
      );
    }
    await api.idle();
    assert.equal(upstream.requests.length, upstreamCalls, 'no request reached the upstream');
    assert.equal(firehose.records(STREAM).length, records, 'a refused request is not a usage event');
    assert.equal((await metrics('/metrics/users/aws_intruder')).status, 404);
  });

  it('streams chunks to the client as the upstream sends them, through API Gateway and the Lambda stream', async () => {
    const arrivals: { at: number; text: string }[] = [];
    let status = 0;
    let contentType = '';
    await new Promise<void>((resolve, reject) => {
      const request = httpRequest(
        `${api.url}/prod/v1/chat/completions`,
        {
          method: 'POST',
          headers: {
            authorization: `Bearer ${PROVIDER_KEY}`,
            'content-type': 'application/json',
            'helicone-auth': `Bearer ${gatewayKey.key}`,
            'helicone-user-id': 'aws_incremental',
            'x-fake-chunk-delay-ms': '25',
            'x-fake-words': '6',
          },
        },
        (response) => {
          status = response.statusCode ?? 0;
          contentType = String(response.headers['content-type']);
          response.on('data', (chunk: Buffer) => arrivals.push({ at: performance.now(), text: chunk.toString('utf8') }));
          response.on('end', resolve);
          response.on('error', reject);
        },
      );
      request.on('error', reject);
      request.end(JSON.stringify({ model: 'gpt-4o-mini', messages, stream: true }));
    });
    assert.equal(status, 200);
    assert.match(contentType, /^text\/event-stream/);
    assert.ok(arrivals.length >= 3, `${arrivals.length} separate arrivals`);
    assert.ok(!arrivals[0]!.text.includes('[DONE]'), 'the first chunk arrived before the answer was complete');
    assert.ok(arrivals.at(-1)!.text.includes('data: [DONE]'));
    assert.ok(arrivals[0]!.at < arrivals.at(-1)!.at);
  });

  it('meters a stream the client aborts as one partial event', async () => {
    const { data: stream, response } = await openai.chat.completions
      .create(
        { model: 'gpt-4o-mini', messages, stream: true },
        { headers: { 'Helicone-User-Id': 'aws_aborter', 'x-fake-words': '50', 'x-fake-chunk-delay-ms': '20' } },
      )
      .withResponse();
    let seen = 0;
    // Leaving the loop makes the SDK abort the HTTP request; API Gateway then closes the function's stream.
    for await (const _chunk of stream) if (++seen === 3) break;
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.usage_source, 'partial');
    assert.equal(event.status, 200);
    assert.ok(event.completion_tokens > 0 && event.completion_tokens < 50, `${event.completion_tokens} completion tokens`);
    await assertLiveTotals('aws_aborter', [event]);
  });

  it('cuts the client off when the upstream resets mid-stream, and meters it as one partial event', async () => {
    const { data: stream, response } = await openai.chat.completions
      .create(
        { model: 'gpt-4o-mini', messages, stream: true },
        { headers: { 'Helicone-User-Id': 'aws_reset', 'x-fake-words': '40', 'x-fake-reset-after': '5' } },
      )
      .withResponse();
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const _chunk of stream) seen++;
      })(),
      'the SDK sees a broken answer, not a complete one',
    );
    assert.ok(seen >= 1 && seen < 40, `${seen} chunks before the cut`);
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    assert.equal(event.usage_source, 'partial');
    assert.equal(event.error, 'upstream_reset');
    assert.ok(event.completion_tokens > 0 && event.completion_tokens < 40, `${event.completion_tokens} completion tokens`);
  });

  it('answers /healthz through the streaming function', async () => {
    const response = await fetch(`${api.url}/prod/healthz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: 'ok' });
  });
});

describe('the metrics Lambda through API Gateway', () => {
  it('lists the day’s users ranked by cost with the totals of their events', async () => {
    const { status, body } = await metrics('/metrics/users?period=day&limit=1000');
    assert.equal(status, 200);
    assert.equal(body.period_key, today());
    const listed = new Map<string, any>(body.users.map((user: { user_id: string }) => [user.user_id, user]));
    const events = firehoseEvents();
    for (const userId of ['aws_user_1', 'aws_user_2@example.com', 'aws_streamer', 'aws_multi', 'aws_aborter']) {
      assert.ok(listed.has(userId), `${userId} is listed`);
      assert.deepEqual(pickTotals(listed.get(userId)), totalsOf(events.filter((e) => e.user_id === userId)));
    }
    const costs = body.users.map((user: { cost_usd: number }) => user.cost_usd);
    assert.deepEqual(costs, [...costs].sort((a, b) => b - a));
  });

  it('needs the admin key from Secrets Manager: a missing or wrong one is a 401', async () => {
    const missing = await metrics('/metrics/users?period=day', null);
    assert.equal(missing.status, 401);
    assert.equal(missing.body.error.code, 'missing_metrics_key');
    const wrong = await metrics('/metrics/users?period=day', 'admin-wrong-key-0123456789abcdef');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, 'invalid_metrics_key');
    const gatewayKeyInstead = await metrics('/metrics/users?period=day', gatewayKey.key);
    assert.equal(gatewayKeyInstead.status, 401, 'a gateway key does not open the metrics API');
    assert.ok((secrets.reads.get(ADMIN_SECRET_ID) ?? 0) >= 1);
  });

  it('answers history per user from Athena, each user’s totals equal to the events Firehose delivered', async () => {
    const day = today();
    const { status, body } = await metrics(`/metrics/usage?from=${day}&to=${day}&group_by=user&limit=1000`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.state, 'done');
    const query = athena.queries.at(-1)!;
    assert.equal(query.workGroup, WORK_GROUP);
    assert.equal(query.database, GLUE_DATABASE);
    assert.ok(query.queryString.includes(`"${GLUE_DATABASE}"."${GLUE_TABLE}"`));
    assert.deepEqual(query.params, [day, day]);
    const events = firehoseEvents();
    const groups = new Map<string | null, any>(body.groups.map((group: { group: string | null }) => [group.group, group]));
    for (const userId of ['aws_user_1', 'aws_user_2@example.com', 'aws_streamer', 'aws_multi', 'aws_aborter']) {
      const expected = totalsOf(events.filter((e) => e.user_id === userId));
      assert.deepEqual(pickTotals(groups.get(userId)), expected, userId);
      const live = await metrics(`/metrics/users/${encodeURIComponent(userId)}`);
      assert.deepEqual(pickTotals(live.body.all_time), expected, `history and live totals of ${userId} agree`);
    }
  });

  it('answers 202 with a query id when Athena outlasts the wait, then the result once it finished', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const day = today();
    const running = await metrics(`/metrics/usage?from=${day}&to=${day}&group_by=user`);
    assert.equal(running.status, 202, JSON.stringify(running.body));
    assert.equal(running.body.state, 'running');
    const queryId: string = running.body.query_id;
    const athenaQuery = athena.queries.at(-1)!;
    assert.equal(athena.stateOf(athenaQuery.id), 'RUNNING');
    const stillRunning = await metrics(`/metrics/queries/${encodeURIComponent(queryId)}`);
    assert.equal(stillRunning.status, 202);

    athena.finish(athenaQuery.id);
    const done = await metrics(`/metrics/queries/${encodeURIComponent(queryId)}`);
    assert.equal(done.status, 200, JSON.stringify(done.body));
    assert.equal(done.body.state, 'done');
    const user = done.body.groups.find((group: { group: string }) => group.group === 'aws_user_1');
    assert.deepEqual(pickTotals(user), totalsOf(firehoseEvents().filter((e) => e.user_id === 'aws_user_1')));
    const answeredAtOnce = await metrics(`/metrics/usage?from=${day}&to=${day}&group_by=user`);
    assert.deepEqual(done.body, answeredAtOnce.body, 'a polled answer is the one a direct call gives');
  });

  it('serves the dashboard under the stage: the redirect and the page\'s asset addresses stay inside it', async () => {
    const redirect = await fetch(`${api.url}/prod/dashboard`, { redirect: 'manual' });
    assert.equal(redirect.status, 301);
    const pageUrl = new URL(redirect.headers.get('location')!, `${api.url}/prod/dashboard`);
    assert.equal(pageUrl.pathname, '/prod/dashboard/');
    const seen = api.events.length;
    const page = await fetch(pageUrl);
    assert.equal(api.events[seen]?.resource, '/dashboard', 'a trailing slash does not change the route');
    assert.equal(api.events[seen]?.path, '/dashboard/');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    const html = await page.text();
    const assets = [...html.matchAll(/(?:href|src)="([^"#:]+)"/g)].map((match) => new URL(match[1]!, pageUrl));
    assert.ok(assets.length >= 2, 'the page references its script and stylesheet');
    for (const asset of assets) {
      assert.ok(asset.pathname.startsWith('/prod/dashboard/'), asset.pathname);
      assert.equal((await fetch(asset)).status, 200, asset.pathname);
    }
  });

  it(
    'gives a result_url that leads back to the query through the stage',
    async () => {
      athena.nextOutcome({ state: 'RUNNING' });
      const running = await metrics(`/metrics/usage?from=${today()}&to=${today()}`);
      assert.equal(running.status, 202);
      const resultUrl = new URL(running.body.result_url, `${api.url}/prod/metrics/usage`);
      athena.finish(athena.queries.at(-1)!.id);
      const followed = await fetch(resultUrl, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
      assert.equal(followed.status, 200, `${resultUrl.pathname} answered ${followed.status}`);
    },
  );
});

describe('metering when AWS services fail', () => {
  it('retries a throttled Firehose and delivers the event once', async () => {
    firehose.throttleNext(2);
    const { response } = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, user: 'aws_throttled' })
      .withResponse();
    assert.equal(response.status, 200);
    const event = await deliveredOnce(response.headers.get('helicone-id'));
    const outcomes = firehose.calls.filter((call) => call.records.some((r) => r.includes(event.request_id))).map((c) => c.outcome);
    assert.deepEqual(outcomes, ['ServiceUnavailableException', 'ServiceUnavailableException', 'ok']);
    assert.ok(!s3.keys(RECOVERY_BUCKET).some((key) => key.includes(event.request_id)));
    await assertLiveTotals('aws_throttled', [event]);
  });

  it('puts the event in the S3 recovery prefix when Firehose stays down, and the client still gets its answer', async () => {
    firehose.outage(Infinity);
    let requestId: string | null;
    try {
      const { data: answer, response } = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages, user: 'aws_outage' })
        .withResponse();
      assert.equal(response.status, 200);
      assert.ok(answer.choices[0]?.message.content);
      requestId = response.headers.get('helicone-id');
      await api.idle();
    } finally {
      firehose.outage(-Infinity);
    }
    assert.ok(requestId);
    assert.ok(!firehoseEvents().some((event) => event.request_id === requestId), 'Firehose accepted nothing');
    const attempts = firehose.calls.filter((call) => call.records.some((r) => r.includes(requestId!)));
    assert.equal(attempts.length, 4, 'every attempt was made before giving up');
    const key = `recovery/dt=${today()}/${requestId}.ndjson`;
    assert.deepEqual(s3.keys(RECOVERY_BUCKET).filter((k) => k.includes(requestId!)), [key]);
    const stored = s3.object(RECOVERY_BUCKET, key)!.body.toString('utf8');
    assert.ok(stored.endsWith('\n'));
    const event = JSON.parse(stored) as UsageEvent;
    assert.equal(event.request_id, requestId);
    assert.equal(event.user_id, 'aws_outage');
    assert.ok(event.total_tokens > 0);
    assert.ok(logLines.some((line) => line.includes('"usage_events_recovered"') && line.includes(key)));
    await assertLiveTotals('aws_outage', [event]);
  });

  it(
    'logs an event neither Firehose nor S3 took exactly once, whole, after one round of attempts',
    async () => {
      firehose.outage(Infinity);
      s3.failPuts(true);
      let requestId: string | null = null;
      try {
        const { response } = await openai.chat.completions
          .create({ model: 'gpt-4o-mini', messages, user: 'aws_undelivered' })
          .withResponse();
        assert.equal(response.status, 200);
        requestId = response.headers.get('helicone-id');
        await api.idle();
      } finally {
        firehose.outage(-Infinity);
        s3.failPuts(false);
      }
      assert.ok(requestId);
      const undelivered = logLines
        .map((line) => JSON.parse(line) as { message: string; event?: UsageEvent })
        .filter((entry) => entry.message === 'usage_event_undelivered' && entry.event?.request_id === requestId);
      const attempts = firehose.calls.filter((call) => call.records.some((r) => r.includes(requestId!)));
      assert.equal(attempts.length, 4, 'one round of Firehose attempts');
      assert.equal(undelivered.length, 1, `the event was logged ${undelivered.length} times`);
      assert.equal(undelivered[0]!.event!.user_id, 'aws_undelivered');
    },
  );

  it(
    'still answers and logs the event to Firehose when DynamoDB is unreachable, and logs the counter failure',
    async () => {
      const lines: string[] = [];
      const log = recordingLogger(lines);
      const unreachable = createCounterStoreClient({
        endpoint: `http://127.0.0.1:${await closedPort()}`,
        region: TEST_REGION,
        credentials: FAKE_CREDENTIALS,
      });
      const broken = await startLocalApiGateway({ streaming: proxyFunction(unreachable, log), buffered: metricsFunction(log) });
      extraApis.push(broken);
      const client = openai.withOptions({ baseURL: `${broken.url}/prod/v1` });
      const { data: answer, response } = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages, user: 'aws_uncounted' })
        .withResponse();
      assert.equal(response.status, 200);
      assert.ok(answer.choices[0]?.message.content);
      const requestId = response.headers.get('helicone-id')!;
      await broken.idle();

      const delivered = firehoseEvents().filter((event) => event.request_id === requestId);
      assert.equal(delivered.length, 1);
      assert.equal(delivered[0]!.user_id, 'aws_uncounted');
      const failure = lines
        .map((line) => JSON.parse(line) as { level: string; message: string; request_id?: string })
        .find((entry) => entry.message === 'usage_counters_not_updated');
      assert.ok(failure, 'the counter failure is logged');
      assert.equal(failure.level, 'error');
      assert.equal(failure.request_id, requestId);
      assert.equal((await metrics('/metrics/users/aws_uncounted')).status, 404);
      for (const line of lines) {
        assert.ok(!line.includes(PROVIDER_KEY), 'no log line holds the provider key');
        assert.ok(!line.includes(gatewayKey.key), 'no log line holds the gateway key');
      }
    },
  );

  it('never logs the provider key, the gateway key or the admin key', () => {
    assert.ok(logLines.length > 0);
    for (const line of logLines) {
      for (const secret of [PROVIDER_KEY, gatewayKey.key, ADMIN_KEY, 'sk-e2e']) assert.ok(!line.includes(secret), line.slice(0, 120));
    }
  });
});

describe('the local API Gateway', () => {
  it('hands the function the REST proxy event: stage-less path, resource, decoded parameters, request context', async () => {
    const seen = api.events.length;
    const response = await fetch(`${api.url}/prod/v1/models/gpt-4o?limit=2&tag=a&tag=b`, {
      headers: { authorization: `Bearer ${PROVIDER_KEY}`, 'Helicone-Auth': `Bearer ${gatewayKey.key}` },
    });
    assert.equal(response.status, 200);
    assert.ok(response.headers.get('x-amzn-requestid'));
    const event = api.events[seen]!;
    assert.equal(event.resource, '/v1/{proxy+}');
    assert.equal(event.path, '/v1/models/gpt-4o');
    assert.equal(event.httpMethod, 'GET');
    assert.deepEqual(event.pathParameters, { proxy: 'models/gpt-4o' });
    assert.deepEqual(event.multiValueQueryStringParameters, { limit: ['2'], tag: ['a', 'b'] });
    assert.deepEqual(event.queryStringParameters, { limit: '2', tag: 'b' });
    assert.equal(event.body, null);
    assert.equal(event.isBase64Encoded, false);
    assert.equal(event.requestContext.stage, 'prod');
    assert.equal(event.requestContext.path, '/prod/v1/models/gpt-4o');
    assert.equal(event.requestContext.resourcePath, '/v1/{proxy+}');
    assert.equal(event.requestContext.identity.sourceIp, '127.0.0.1');
    assert.match(event.requestContext.requestId, /^[0-9a-f-]{36}$/);
    assert.equal(event.headers['X-Forwarded-For'], '127.0.0.1');
  });

  it('passes a binary media type base64-encoded and the bytes reach the upstream unchanged', async () => {
    const seen = api.events.length;
    const upstreamSeen = upstream.requests.length;
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
    await fetch(`${api.url}/prod/v1/files`, {
      method: 'POST',
      headers: { authorization: `Bearer ${PROVIDER_KEY}`, 'Helicone-Auth': `Bearer ${gatewayKey.key}`, 'content-type': 'application/octet-stream' },
      body: bytes,
    });
    const event = api.events[seen]!;
    assert.equal(event.isBase64Encoded, true);
    assert.deepEqual(new Uint8Array(Buffer.from(event.body!, 'base64')), bytes);
    const forwarded = upstream.requests[upstreamSeen]!;
    assert.equal(forwarded.path, '/v1/files');
    assert.equal(forwarded.headers['content-length'], '256');
  });

  it('answers 403 Missing Authentication Token outside the stage and for routes it does not have', async () => {
    for (const [method, path] of [
      ['GET', '/v1/models'],
      ['GET', '/prod/v1'],
      ['POST', '/prod/healthz'],
      ['GET', '/prod/other'],
    ] as const) {
      const response = await fetch(`${api.url}${path}`, { method });
      assert.equal(response.status, 403, `${method} ${path}`);
      assert.deepEqual(await response.json(), { message: 'Missing Authentication Token' });
    }
  });
});
