/**
 * The streaming adapter under the official Lambda Node.js runtime interface client (`aws-lambda-ric`), talking
 * to a local Runtime API: what reaches the Runtime API is what API Gateway would turn into the HTTP response.
 *
 * The handler module is bundled with esbuild like the deployed one and loaded by the client as `index.handler`.
 * The client is installed outside node_modules by test/support/install-lambda-ric.sh; without it these tests
 * are skipped, unless REQUIRE_LAMBDA_RIC=1 makes its absence a failure.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';
import { docsSampleEvent, restProxyEvent } from '../support/api-gateway-events';
import { HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE, decodeHttpIntegrationResponse } from '../support/awslambda-shim';
import { LambdaRuntimeApi, type InvocationOutcome } from '../support/lambda-runtime-api';

const ROOT = resolve(__dirname, '..', '..');
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const RIC_VERSION = process.env.LAMBDA_RIC_VERSION ?? (NODE_MAJOR >= 22 ? '4.0.2' : '3.3.0');
const RIC_DIR = process.env.LAMBDA_RIC_DIR ?? join(homedir(), '.cache', 'llm-usage-gateway', `aws-lambda-ric-${RIC_VERSION}`);
const RIC_PACKAGE = join(RIC_DIR, 'node_modules', 'aws-lambda-ric');
const ricInstalled = existsSync(join(RIC_PACKAGE, 'package.json'));
if (!ricInstalled && process.env.REQUIRE_LAMBDA_RIC === '1') {
  throw new Error(`aws-lambda-ric is not installed in ${RIC_DIR}: run test/support/install-lambda-ric.sh`);
}

const CHUNKS = ['data: {"n":1}\n\n', 'data: {"n":2}\n\n', 'data: [DONE]\n\n'];

/**
 * The function the runtime loads. Its core is a stand-in with routes that exercise the adapter; it reports to
 * the test's control server: which body bytes the Runtime API has seen, and when its usage write happened.
 */
const HANDLER_SOURCE = `
import { streamingHandler } from './lambda/aws/streaming-adapter';
import { silentLogger } from './lambda/core/log';

const control = process.env.TEST_CONTROL_URL;
const CHUNKS = ${JSON.stringify(CHUNKS)};

async function app(request, ctx) {
  const url = new URL(request.url);
  const id = request.headers.get('x-test-id') ?? 'none';
  if (url.pathname === '/echo') {
    return new Response(JSON.stringify({ method: request.method, url: request.url, body: await request.text() }), {
      status: 200,
      headers: [['content-type', 'application/json'], ['set-cookie', 'a=1; Path=/'], ['set-cookie', 'b=2; Path=/']],
    });
  }
  if (url.pathname === '/fail') throw new Error('core exploded');
  if (url.pathname === '/chunks') {
    let sent = 0;
    let delivered = 0;
    // Metering: waits until the Runtime API has the whole response, takes its time (a slow event log), then
    // writes the usage event. A runtime not held back by the adapter asks for the next event meanwhile.
    ctx.waitUntil(
      fetch(control + '/response-ended?id=' + id)
        .then((res) => res.text())
        .then((seen) => new Promise((resolve) => setTimeout(() => resolve(seen), 200)))
        .then((seen) => fetch(control + '/usage?id=' + id + '&after=' + seen, { method: 'POST' })),
    );
    return new Response(
      new ReadableStream(
        {
          async pull(controller) {
            // The next chunk is produced only once the Runtime API received the previous one.
            const res = await fetch(control + '/delivered?id=' + id + '&bytes=' + delivered);
            if (!res.ok) throw new Error('chunk ' + sent + ' never reached the Runtime API');
            const chunk = CHUNKS[sent++];
            if (chunk === undefined) return controller.close();
            delivered += Buffer.byteLength(chunk);
            controller.enqueue(new TextEncoder().encode(chunk));
          },
        },
        { highWaterMark: 0 },
      ),
      { headers: { 'content-type': 'text/event-stream' } },
    );
  }
  return new Response('not found', { status: 404 });
}

const inner = streamingHandler(app, { logger: silentLogger });

export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  // The nodejs22.x/24.x runtimes ask for the next event as soon as the handler resolves, whatever is still
  // pending; the 3.x client waits for an empty event loop unless told not to. Tell it, to behave the same.
  context.callbackWaitsForEmptyEventLoop = false;
  return inner(event, responseStream, context);
});
`;

describe('streaming adapter under aws-lambda-ric', { skip: ricInstalled ? false : `aws-lambda-ric not installed in ${RIC_DIR}` }, () => {
  let api: LambdaRuntimeApi;
  let control: Server;
  let runtime: ChildProcess;
  let workDir: string;
  let runtimeOutput = '';
  const bodyBytes = new Map<string, number>();
  const bodyWaiters = new Set<() => void>();

  /** Body bytes (after prelude and delimiter) the Runtime API has received for a test invocation. */
  const receivedBody = (id: string) => bodyBytes.get(id) ?? -1;

  function waitFor(condition: () => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const check = () => {
        if (!condition()) return;
        bodyWaiters.delete(check);
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        bodyWaiters.delete(check);
        resolve(false);
      }, timeoutMs);
      bodyWaiters.add(check);
      check();
    });
  }
  const wake = () => {
    for (const check of [...bodyWaiters]) check();
  };

  function invoke(id: string, event = restProxyEvent()): Promise<InvocationOutcome> {
    event.headers['x-test-id'] = id;
    event.multiValueHeaders['x-test-id'] = [id];
    return api.invoke(event, {
      requestId: id,
      onChunk: (received) => {
        try {
          bodyBytes.set(id, decodeHttpIntegrationResponse(received).body.length);
        } catch {
          // Prelude not complete yet.
        }
        wake();
      },
    });
  }

  before(async () => {
    api = await LambdaRuntimeApi.start();
    api.onEvent = wake;

    control = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://control');
      const id = url.searchParams.get('id') ?? '';
      if (url.pathname === '/delivered') {
        const bytes = Number(url.searchParams.get('bytes'));
        void waitFor(() => receivedBody(id) >= bytes, 3000).then((ok) => res.writeHead(ok ? 200 : 504).end());
        return;
      }
      if (url.pathname === '/response-ended') {
        const ended = () => api.timeline.some((e) => e.kind === 'response-ended' && e.requestId === id);
        void waitFor(ended, 3000).then((ok) => res.writeHead(200).end(ok ? 'response-ended' : 'timed-out'));
        return;
      }
      if (url.pathname === '/usage') {
        api.mark(`usage-written-${url.searchParams.get('after')}`, id);
        res.writeHead(204).end();
        return;
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => control.listen(0, '127.0.0.1', resolve));

    workDir = mkdtempSync(join(tmpdir(), 'ric-handler-'));
    await build({
      stdin: { contents: HANDLER_SOURCE, resolveDir: ROOT, loader: 'ts', sourcefile: 'index.ts' },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: `node${NODE_MAJOR}`,
      outfile: join(workDir, 'index.js'),
      logLevel: 'silent',
    });

    const bin = (JSON.parse(readFileSync(join(RIC_PACKAGE, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin[
      'aws-lambda-ric'
    ]!;
    runtime = spawn(process.execPath, [join(RIC_PACKAGE, bin), 'index.handler'], {
      cwd: workDir,
      env: {
        PATH: process.env.PATH,
        AWS_LAMBDA_RUNTIME_API: api.hostPort,
        AWS_LAMBDA_FUNCTION_NAME: 'gateway-proxy',
        AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: '1024',
        LAMBDA_TASK_ROOT: workDir,
        TEST_CONTROL_URL: `http://127.0.0.1:${(control.address() as AddressInfo).port}`,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    runtime.stdout!.on('data', (chunk: Buffer) => (runtimeOutput += chunk.toString()));
    runtime.stderr!.on('data', (chunk: Buffer) => (runtimeOutput += chunk.toString()));
  });

  after(async () => {
    if (runtime && runtime.exitCode === null && runtime.signalCode === null) {
      const exited = new Promise((resolve) => runtime.once('exit', resolve));
      runtime.kill('SIGTERM');
      await exited;
    }
    await api?.close();
    await new Promise<void>((resolve) => (control ? control.close(() => resolve()) : resolve()));
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  /** Fails with the runtime's own output, which says why when the client could not run the handler. */
  function explain(outcome: InvocationOutcome): string {
    return `runtime output:\n${runtimeOutput}\nposted ${outcome.kind}: ${outcome.body.toString().slice(0, 500)}`;
  }

  it('posts the prelude, 8 NUL bytes and the body as a streamed HTTP integration response', { timeout: 15_000 }, async () => {
    const event = docsSampleEvent();
    event.path = '/echo';
    const outcome = await invoke('echo', event);
    assert.equal(outcome.kind, 'response', explain(outcome));
    assert.equal(outcome.headers['lambda-runtime-function-response-mode'], 'streaming');
    assert.equal(outcome.headers['transfer-encoding'], 'chunked');
    assert.equal(outcome.headers['content-type'], HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE);

    const { prelude, body } = decodeHttpIntegrationResponse(outcome.body);
    assert.deepEqual(prelude, {
      statusCode: 200,
      headers: { 'content-type': 'application/json' },
      multiValueHeaders: { 'set-cookie': ['a=1; Path=/', 'b=2; Path=/'] },
    });
    assert.deepEqual(JSON.parse(body.toString()), {
      method: 'POST',
      url: 'https://gy415nuibc.execute-api.us-east-1.amazonaws.com/echo?name=me&multivalueName=you&multivalueName=me',
      body: '{\r\n\t"a": 1\r\n}',
    });
  });

  it('delivers each chunk to the Runtime API before the core produces the next', { timeout: 15_000 }, async (t) => {
    const outcome = await invoke('chunks', restProxyEvent({ path: '/chunks' }));
    assert.equal(outcome.kind, 'response', explain(outcome));
    const { prelude, body } = decodeHttpIntegrationResponse(outcome.body);
    assert.equal(prelude.statusCode, 200);
    assert.equal(body.toString(), CHUNKS.join(''));

    // Each chunk came in its own arrival(s): no arrival holds the end of one chunk and the start of the next.
    const preludeLength = outcome.body.length - body.length;
    const boundaries = [preludeLength];
    for (const chunk of CHUNKS) boundaries.push(boundaries.at(-1)! + Buffer.byteLength(chunk));
    let offset = 0;
    for (const arrival of outcome.chunks) {
      const start = offset;
      offset += arrival.bytes.length;
      const crossed = boundaries.filter((b) => b > start && b < offset);
      assert.deepEqual(crossed, [], `an arrival of bytes ${start}-${offset} spans a chunk boundary`);
    }
    const first = outcome.chunks[0]!.at;
    t.diagnostic(`arrivals (ms after first): ${outcome.chunks.map((c) => `${(c.at - first).toFixed(1)}:${c.bytes.length}B`).join(' ')}`);
  });

  it('finishes the waitUntil work after the response and before the runtime asks for the next event', { timeout: 15_000 }, async () => {
    const outcome = await invoke('metered', restProxyEvent({ path: '/chunks' }));
    assert.equal(outcome.kind, 'response', explain(outcome));
    const entries = () => api.timeline.map((e) => `${e.kind}:${e.requestId ?? ''}`);
    const delivered = entries().indexOf('invocation-delivered:metered');
    const nextRequested = () => entries().findIndex((e, i) => i > delivered && e === 'next-requested:');
    assert.ok(await waitFor(() => nextRequested() > 0, 5000), 'the runtime never asked for the next event');

    const timeline = entries();
    const ended = timeline.indexOf('response-ended:metered');
    const usage = timeline.findIndex((e) => e.startsWith('usage-written-') && e.endsWith(':metered'));
    // The usage write waited for the Runtime API to have the whole response: an adapter that awaited
    // waitUntil before ending the stream would have made it time out.
    assert.equal(timeline[usage], 'usage-written-response-ended:metered', timeline.join('\n'));
    assert.ok(ended > delivered && usage > ended, timeline.join('\n'));
    assert.ok(nextRequested() > usage, `the runtime asked for the next event before the usage write:\n${timeline.join('\n')}`);
  });

  it('answers a core that throws with a JSON 500 response, not an invocation error', { timeout: 15_000 }, async () => {
    const outcome = await invoke('fail', restProxyEvent({ path: '/fail' }));
    assert.equal(outcome.kind, 'response', explain(outcome));
    const { prelude, body } = decodeHttpIntegrationResponse(outcome.body);
    assert.equal(prelude.statusCode, 500);
    assert.equal((JSON.parse(body.toString()) as { error: { type: string } }).error.type, 'server_error');
  });
});
