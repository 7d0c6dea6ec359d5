/**
 * End to end on the embedded default: the official OpenAI SDK → the local Node server → the fake upstream, with
 * usage landing in the event files and DuckDB, read back through the metrics API.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { localConfigFromEnv } from '../../lambda/core/config';
import { silentLogger } from '../../lambda/core/log';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';

const GATEWAY_KEY = 'gw_e2e_key_0123456789abcdef';
const METRICS_KEY = 'mk_e2e_key_0123456789abcdef';

let upstream: FakeUpstream;
let dataDir: string;
let gateway: LocalGateway;
let server: NodeServer;
let openai: OpenAI;

async function startGateway(): Promise<void> {
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    METRICS_KEYS: METRICS_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
  });
  gateway = await openLocalGateway({ config, log: silentLogger });
  server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log: silentLogger });
  openai = new OpenAI({
    apiKey: 'sk-test-provider-key',
    baseURL: `${server.url}/v1`,
    defaultHeaders: { 'Helicone-Auth': `Bearer ${GATEWAY_KEY}` },
    maxRetries: 0,
  });
}

async function stopGateway(): Promise<void> {
  await server.close();
  await gateway.close();
}

/** Waits for metering of everything sent so far, then reads the metrics API. */
async function metrics(path: string): Promise<{ status: number; body: any }> {
  await server.idle();
  const response = await fetch(`${server.url}${path}`, { headers: { authorization: `Bearer ${METRICS_KEY}` } });
  return { status: response.status, body: await response.json() };
}

const messages = [{ role: 'user' as const, content: 'Hello from the end-to-end test' }];

before(async () => {
  upstream = await startFakeUpstream();
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-e2e-'));
  await startGateway();
});

after(async () => {
  await stopGateway();
  await upstream.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('the OpenAI SDK through the local gateway', () => {
  it('option 1: bills the OpenAI user parameter', async () => {
    const answer = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages, user: 'user_123' });
    assert.equal(answer.model, 'gpt-4o-mini-2024-07-18');
    const { body } = await metrics('/metrics/users/user_123');
    assert.equal(body.all_time.requests, 1);
    assert.equal(body.all_time.prompt_tokens, answer.usage?.prompt_tokens);
    assert.equal(body.all_time.completion_tokens, answer.usage?.completion_tokens);
    assert.ok(body.all_time.cost_usd > 0);
    assert.deepEqual(body.by_model.map((m: { model: string }) => m.model), ['gpt-4o-mini-2024-07-18']);
  });

  it('option 2: the user id header wins over the body, with custom properties', async () => {
    const answer = await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages, user: 'someone-else' },
      { headers: { 'Helicone-User-Id': 'user_123@example.com', 'Helicone-Property-Plan': 'premium', 'Helicone-Property-Feature': 'chat' } },
    );
    assert.ok(answer.choices[0]?.message.content);
    assert.equal((await metrics('/metrics/users/user_123%40example.com')).body.all_time.requests, 1);
    assert.equal((await metrics('/metrics/users/someone-else')).status, 404);
    const files = await readdir(join(dataDir, 'events'));
    assert.ok(files.every((name) => /^dt=\d{4}-\d{2}-\d{2}$/.test(name)), files.join(','));
  });

  it('streams chat completions with exactly the chunks a direct call gives, metered from provider usage', async () => {
    const direct = new OpenAI({ apiKey: 'sk-test-provider-key', baseURL: `${upstream.url}/v1`, maxRetries: 0 });
    const request = { model: 'gpt-4o-mini', messages, stream: true as const };
    const viaGateway: unknown[] = [];
    for await (const chunk of await openai.chat.completions.create(request, { headers: { 'Helicone-User-Id': 'streamer' } })) {
      viaGateway.push(chunk);
    }
    const directly: unknown[] = [];
    for await (const chunk of await direct.chat.completions.create(request)) directly.push(chunk);
    assert.deepEqual(viaGateway, directly);
    assert.ok(viaGateway.every((chunk) => !('usage' in (chunk as object))));
    const { body } = await metrics('/metrics/users/streamer');
    assert.equal(body.all_time.requests, 1);
    assert.ok(body.all_time.completion_tokens > 0);
  });

  it('streams with include_usage when the client asks, and the client gets the usage chunk', async () => {
    const chunks = [];
    for await (const chunk of await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true } },
      { headers: { 'Helicone-User-Id': 'usage-asker' } },
    )) {
      chunks.push(chunk);
    }
    const last = chunks.at(-1);
    assert.deepEqual(last?.choices, []);
    assert.ok(last?.usage && last.usage.total_tokens > 0);
    assert.equal((await metrics('/metrics/users/usage-asker')).body.all_time.total_tokens, last.usage.total_tokens);
  });

  it('meters /v1/completions, /v1/responses (streamed too) and /v1/embeddings', async () => {
    const headers = { 'Helicone-User-Id': 'multi-endpoint' };
    await openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Once upon a time' }, { headers });
    await openai.responses.create({ model: 'gpt-4o-mini', input: 'Write one line' }, { headers });
    const stream = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Write one line', stream: true }, { headers });
    let completed = false;
    for await (const event of stream) if (event.type === 'response.completed') completed = true;
    assert.ok(completed);
    const embedding = await openai.embeddings.create({ model: 'text-embedding-3-small', input: 'vectorise me' }, { headers });
    assert.equal(embedding.data[0]?.embedding.length, 8);
    const { body } = await metrics('/metrics/users/multi-endpoint');
    assert.equal(body.all_time.requests, 4);
    assert.equal(body.all_time.errors, 0);
    assert.equal(body.all_time.unpriced_requests, 0);
  });

  it('estimates tokens when the upstream reports none', async () => {
    await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages },
      { headers: { 'Helicone-User-Id': 'estimated-user', 'x-fake-no-usage': '1' } },
    );
    const { body } = await metrics('/metrics/users/estimated-user');
    assert.ok(body.all_time.prompt_tokens > 0);
    assert.ok(body.all_time.completion_tokens > 0);
  });

  it('writes a partial event when the client aborts mid-stream', async () => {
    const stream = await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages, stream: true },
      { headers: { 'Helicone-User-Id': 'aborter', 'x-fake-words': '50', 'x-fake-chunk-delay-ms': '20' } },
    );
    let seen = 0;
    // Leaving the loop early makes the SDK abort the HTTP request.
    for await (const _chunk of stream) {
      seen += 1;
      if (seen === 3) break;
    }
    // The server notices the closed socket asynchronously; wait until the event is in.
    let body: any;
    for (let i = 0; i < 50; i++) {
      ({ body } = await metrics('/metrics/users/aborter'));
      if (body.all_time) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(body.all_time.requests, 1);
    assert.ok(body.all_time.completion_tokens > 0 && body.all_time.completion_tokens < 50);
  });

  it('counts an unknown model as an unpriced request, not as free', async () => {
    await openai.chat.completions.create({ model: 'acme-unpriced-1', messages }, { headers: { 'Helicone-User-Id': 'unpriced-user' } });
    const { body } = await metrics('/metrics/users/unpriced-user');
    assert.equal(body.all_time.unpriced_requests, 1);
    assert.equal(body.all_time.cost_usd, 0);
  });

  it('surfaces a wrong gateway key as the SDK AuthenticationError and a bad header as BadRequestError', async () => {
    const stranger = new OpenAI({ apiKey: 'sk-x', baseURL: `${server.url}/v1`, maxRetries: 0, defaultHeaders: { 'Helicone-Auth': 'Bearer gw_wrong_0123456789abcdef' } });
    await assert.rejects(stranger.chat.completions.create({ model: 'gpt-4o-mini', messages }), (e: unknown) => e instanceof OpenAI.AuthenticationError);
    await assert.rejects(
      openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-Property-bad.name': 'x' } }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && /Property name/.test(e.message),
    );
  });

  it('passes upstream errors through with their status and meters them as errors', async () => {
    await assert.rejects(
      openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-User-Id': 'limited', 'x-fake-status': '429' } }),
      (e: unknown) => e instanceof OpenAI.RateLimitError,
    );
    const { body } = await metrics('/metrics/users/limited');
    assert.equal(body.all_time.requests, 1);
    assert.equal(body.all_time.errors, 1);
  });
});

describe('the metrics API on local storage', () => {
  it('lists users of the month sorted by cost with working cursors', async () => {
    for (const [user, words] of [['rank-a', '30'], ['rank-b', '10'], ['rank-c', '20']] as const) {
      await openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-User-Id': user, 'x-fake-words': words } });
    }
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const query: string = `/metrics/users?period=month&sort=cost&limit=4${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const { status, body } = await metrics(query);
      assert.equal(status, 200);
      for (const user of body.users) seen.push(user.user_id);
      const costs = body.users.map((u: { cost_usd: number }) => u.cost_usd);
      assert.deepEqual(costs, [...costs].sort((a, b) => b - a));
      cursor = body.next_cursor;
    } while (cursor);
    assert.equal(new Set(seen).size, seen.length, 'no user twice across pages');
    assert.ok(seen.indexOf('rank-a') < seen.indexOf('rank-c') && seen.indexOf('rank-c') < seen.indexOf('rank-b'));
  });

  it('answers a bad parameter with a 400 naming it, and needs the metrics key', async () => {
    const { status, body } = await metrics('/metrics/users?sort=wrong');
    assert.equal(status, 400);
    assert.equal(body.error.param, 'sort');
    const anonymous = await fetch(`${server.url}/metrics/users`);
    assert.equal(anonymous.status, 401);
  });

  it('answers totals per user over a day range from the event log', async () => {
    const today = new Date().toISOString().slice(0, 10);
    const { status, body } = await metrics(`/metrics/usage?from=${today}&to=${today}&group_by=user&sort=requests`);
    assert.equal(status, 200);
    const multi = body.groups.find((g: { group: string }) => g.group === 'multi-endpoint');
    assert.equal(multi?.requests, 4);
    const plan = await metrics(`/metrics/usage?from=${today}&to=${today}&group_by=property:Plan`);
    assert.equal(plan.body.groups.find((g: { group: string }) => g.group === 'premium')?.requests, 1);
  });

  it('keeps every total across a restart on the same data directory', async () => {
    const before = (await metrics('/metrics/users?period=all&limit=1000')).body.users;
    await stopGateway();
    await startGateway();
    const afterRestart = (await metrics('/metrics/users?period=all&limit=1000')).body.users;
    assert.deepEqual(afterRestart, before);
    await openai.chat.completions.create({ model: 'gpt-4o-mini', messages, user: 'user_123' });
    assert.equal((await metrics('/metrics/users/user_123')).body.all_time.requests, 2);
  });

  it('answers /healthz', async () => {
    const response = await fetch(`${server.url}/healthz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: 'ok' });
  });
});

describe('npm start', () => {
  it('starts the server on loopback, prints the SDK base URL and the data directory, and stops on SIGTERM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gateway-start-'));
    const port = String(20000 + Math.floor(Math.random() * 20000));
    const child = spawn(process.execPath, ['--import', 'tsx', 'bin/local-server.ts'], {
      env: { ...process.env, PORT: port, DATA_DIR: dir, UPSTREAM_OPENAI_URL: upstream.url, GATEWAY_KEYS: '', METRICS_KEYS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    try {
      for (let i = 0; i < 200 && !output.includes('Data directory'); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(output, new RegExp(`OpenAI base URL: +http://127\\.0\\.0\\.1:${port}/v1`));
      assert.match(output, /listening on 127\.0\.0\.1 only/);
      assert.ok(output.includes(dir));
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      assert.equal(health.status, 200);
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
