/**
 * The local gateway with its events directory broken (replaced by a regular file, which fails every write even for
 * root): the official OpenAI SDK keeps getting its answers, the events wait in the spool, and once the directory is
 * repaired every request is in the event log and in the metrics totals exactly once, including requests a previous
 * process only managed to spool.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { localConfigFromEnv } from '../../lambda/core/config';
import { silentLogger } from '../../lambda/core/log';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { readEvents } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { SpoolingEventSink } from '../../lambda/local/spooling-event-sink';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { priced, sampleEvent } from '../support/usage-events';

const GATEWAY_KEY = 'gw_outage_key_0123456789abcdef';
const METRICS_KEY = 'mk_outage_key_0123456789abcdef';
const messages = [{ role: 'user' as const, content: 'Hello while the disk is full' }];

interface Running {
  readonly gateway: LocalGateway;
  readonly server: NodeServer;
  readonly openai: OpenAI;
}

let upstream: FakeUpstream;
let root: string;
const running: Running[] = [];

async function start(dataDir: string): Promise<Running> {
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    METRICS_KEYS: METRICS_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
  });
  const gateway = await openLocalGateway({ config, log: silentLogger });
  const server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log: silentLogger });
  const openai = new OpenAI({
    apiKey: 'sk-test-provider-key',
    baseURL: `${server.url}/v1`,
    defaultHeaders: { 'Helicone-Auth': `Bearer ${GATEWAY_KEY}` },
    maxRetries: 0,
  });
  const gw = { gateway, server, openai };
  running.push(gw);
  return gw;
}

async function stop(gw: Running): Promise<void> {
  running.splice(running.indexOf(gw), 1);
  await gw.server.close();
  await gw.gateway.close();
}

async function userTotals(gw: Running, userId: string): Promise<{ status: number; requests: number }> {
  await gw.server.idle();
  await gw.gateway.counters.flush();
  const response = await fetch(`${gw.server.url}/metrics/users/${encodeURIComponent(userId)}`, {
    headers: { authorization: `Bearer ${METRICS_KEY}` },
  });
  const body = (await response.json()) as { all_time?: { requests: number } };
  return { status: response.status, requests: body.all_time?.requests ?? 0 };
}

/** Request ids in the event log, with the number of copies of each. */
async function loggedCopies(dataDir: string): Promise<Map<string, number>> {
  const copies = new Map<string, number>();
  for await (const event of readEvents(dataDir)) copies.set(event.request_id, (copies.get(event.request_id) ?? 0) + 1);
  return copies;
}

async function spoolFiles(dataDir: string): Promise<string[]> {
  try {
    return await readdir(join(dataDir, 'spool'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/** Polls until `condition` holds; the deadline only keeps a broken build from hanging the run. */
async function waitFor(condition: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One chat completion through the SDK, streamed or not; resolves with the gateway's request id and the status. */
async function chat(gw: Running, userId: string, stream: boolean): Promise<{ requestId: string; status: number }> {
  const headers = { 'Helicone-User-Id': userId };
  if (stream) {
    const { data, response } = await gw.openai.chat.completions.create({ model: 'gpt-4o-mini', messages, stream: true }, { headers }).withResponse();
    let chunks = 0;
    for await (const _chunk of data) chunks++;
    assert.ok(chunks > 0);
    return { requestId: response.headers.get('helicone-id')!, status: response.status };
  }
  const { data, response } = await gw.openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers }).withResponse();
  assert.ok(data.choices[0]?.message.content);
  return { requestId: response.headers.get('helicone-id')!, status: response.status };
}

before(async () => {
  upstream = await startFakeUpstream({ record: false });
  root = await mkdtemp(join(tmpdir(), 'gateway-outage-'));
});

after(async () => {
  for (const gw of [...running]) await stop(gw);
  await upstream?.close();
  if (root) await rm(root, { recursive: true, force: true });
});

describe('the local gateway when its events directory fails', () => {
  it('answers every request while the directory is broken, then logs and counts each exactly once after the repair', async () => {
    const dataDir = join(root, 'live');
    const gw = await start(dataDir);
    const eventsDir = join(dataDir, 'events');
    await rm(eventsDir, { recursive: true, force: true });
    await writeFile(eventsDir, 'not a directory\n');

    const sent = await Promise.all(Array.from({ length: 24 }, (_, i) => chat(gw, 'outage-user', i % 3 === 0)));
    for (const { status } of sent) assert.ok(status >= 200 && status < 300, `status ${status}`);
    const requestIds = sent.map((s) => s.requestId);
    assert.equal(new Set(requestIds).size, 24);

    assert.equal((await userTotals(gw, 'outage-user')).requests, 24, 'live totals do not depend on the event log');
    await gw.gateway.sink.flush();
    assert.equal(gw.gateway.sink.stats().state, 'degraded');
    assert.equal(gw.gateway.sink.stats().pending, 24);
    assert.ok((await spoolFiles(dataDir)).length > 0, 'the events wait in the spool');

    await rm(eventsDir);
    await waitFor(async () => gw.gateway.sink.stats().state === 'healthy', 'the spool is replayed into the repaired log');

    const copies = await loggedCopies(dataDir);
    for (const id of requestIds) assert.equal(copies.get(id), 1, `request ${id} is in the log once`);
    assert.equal(copies.size, 24);
    assert.deepEqual(await spoolFiles(dataDir), []);
    assert.equal((await userTotals(gw, 'outage-user')).requests, 24, 'replayed events are not counted again');

    const afterRepair = await chat(gw, 'outage-user', false);
    await gw.gateway.sink.flush();
    assert.equal((await loggedCopies(dataDir)).get(afterRepair.requestId), 1, 'new requests go straight to the log again');
    assert.equal((await userTotals(gw, 'outage-user')).requests, 25);
    await stop(gw);
  });

  it('counts, once the log is repaired, the requests a previous process had only spooled when it stopped', async () => {
    const dataDir = join(root, 'restart');
    const eventsDir = join(dataDir, 'events');
    // A previous process whose log was failing: its events reached the spool, its counters never saw them.
    await mkdir(dataDir, { recursive: true });
    await writeFile(eventsDir, 'not a directory\n');
    const previous = await SpoolingEventSink.open({ primary: new FileEventSink({ dataDir }), dataDir, initialRetryMs: 3_600_000 });
    const now = Date.now();
    const spooled: UsageEvent[] = Array.from({ length: 7 }, (_, i) =>
      sampleEvent({ request_id: randomUUID(), ts: new Date(now - 60_000 + i).toISOString(), user_id: 'spooled-user', ...priced(10, 5, 4500) }),
    );
    for (const event of spooled) await previous.write([event]);
    await previous.close();
    assert.ok((await spoolFiles(dataDir)).length > 0);

    // Restarted while the directory is still broken: the catch-up cannot see the spooled events yet.
    const gw = await start(dataDir);
    assert.equal(gw.gateway.sink.stats().state, 'degraded');
    assert.equal((await userTotals(gw, 'spooled-user')).status, 404);
    const live = await Promise.all(Array.from({ length: 5 }, (_, i) => chat(gw, 'restart-user', i === 0)));

    await rm(eventsDir);
    await waitFor(async () => gw.gateway.sink.stats().state === 'healthy', 'the leftover spool is replayed');
    await waitFor(async () => (await userTotals(gw, 'spooled-user')).requests === spooled.length, 'the replayed events are counted');

    const copies = await loggedCopies(dataDir);
    for (const event of spooled) assert.equal(copies.get(event.request_id), 1);
    for (const { requestId } of live) assert.equal(copies.get(requestId), 1);
    assert.equal(copies.size, spooled.length + live.length);
    assert.equal((await userTotals(gw, 'restart-user')).requests, live.length);
    await stop(gw);

    // And after one more restart nothing is counted a second time (the catch-up finds every request counted).
    const again = await start(dataDir);
    assert.equal((await userTotals(again, 'spooled-user')).requests, spooled.length);
    assert.equal((await userTotals(again, 'restart-user')).requests, live.length);
    await stop(again);
  });
});
