/**
 * The dashboard in a real browser: Debian's Chromium driven by playwright-core, against the local gateway with
 * usage seeded through the gateway itself (fake upstream), checking what the page shows against the metrics API.
 * Screenshots at 1280×800 and 390×844 go to test/artifacts/.
 *
 * Needs /usr/bin/chromium (`apt-get install -y chromium`); skipped without it unless REQUIRE_CHROMIUM=1.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { DASHBOARD_MODULE, buildDashboard } from '../../bin/build-dashboard';
import { formatCount, formatTime, formatUsd, formatUserId } from '../../dashboard/format';
import { addDays } from '../../dashboard/period';
import { sortRows, type ColumnKey, type UserRow } from '../../dashboard/users-model';
import { localConfigFromEnv } from '../../lambda/core/config';
import { silentLogger } from '../../lambda/core/log';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';

const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const REQUIRED = process.env.REQUIRE_CHROMIUM === '1';
const ARTIFACTS = join(__dirname, '..', 'artifacts');

const GATEWAY_KEY = 'gw_dashboard_key_0123456789';
const METRICS_KEY = 'mk_dashboard_key_0123456789';
const TODAY = new Date().toISOString().slice(0, 10);
const ALICE = 'alice@example.com';
/** A user id a spreadsheet would run as a formula, with a comma that needs CSV quoting. */
const FORMULA_USER = '=SUM(1,2)';
const LOAD_USERS = 55;
const BURST_USER = 'burst-user';
const BURST_REQUESTS = 110;

let upstream: FakeUpstream;
let dataDir: string;
let gateway: LocalGateway;
let server: NodeServer;
let context: BrowserContext;
let page: Page;
const pageProblems: string[] = [];

/** Sends one chat completion (or embedding) through the gateway as `userId`. */
async function send(userId: string | null, options: { model?: string; words?: number; properties?: Record<string, string>; status?: number; embeddings?: boolean } = {}): Promise<void> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    authorization: 'Bearer sk-test-provider-key',
    'helicone-auth': `Bearer ${GATEWAY_KEY}`,
    'x-fake-words': String(options.words ?? 8),
  };
  if (userId !== null) headers['helicone-user-id'] = userId;
  for (const [name, value] of Object.entries(options.properties ?? {})) headers[`helicone-property-${name}`] = value;
  if (options.status !== undefined) headers['x-fake-status'] = String(options.status);
  const body = options.embeddings
    ? { model: 'text-embedding-3-small', input: 'the dashboard test' }
    : { model: options.model ?? 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello from the dashboard test' }] };
  const response = await fetch(`${server.url}/v1/${options.embeddings ? 'embeddings' : 'chat/completions'}`, { method: 'POST', headers, body: JSON.stringify(body) });
  await response.arrayBuffer();
}

/** Reads the metrics API as the dashboard does. */
async function api<T = any>(path: string): Promise<T> {
  await server.idle();
  const response = await fetch(`${server.url}/metrics${path}`, { headers: { authorization: `Bearer ${METRICS_KEY}` } });
  assert.equal(response.status, 200, `${path}: ${response.status}`);
  return (await response.json()) as T;
}

/** An event as the gateway writes it, for usage on earlier days (the gateway stamps its own arrival time). */
function earlierEvent(userId: string, daysAgo: number, index: number): UsageEvent {
  const ts = `${addDays(TODAY, -daysAgo)}T09:${String(10 + index).padStart(2, '0')}:00.000Z`;
  return {
    v: USAGE_EVENT_VERSION,
    request_id: `00000000-0000-4000-8000-${String(daysAgo * 100 + index).padStart(12, '0')}`,
    ts,
    user_id: userId,
    properties: { plan: 'pro' },
    provider: 'openai',
    model: 'gpt-4o-mini-2024-07-18',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 420,
    ttft_ms: 300,
    prompt_tokens: 1000,
    completion_tokens: 500,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 1500,
    cost_usd: 0.00045,
    cost_nano_usd: 450_000,
    cost_source: 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: null,
  };
}

async function seed(): Promise<void> {
  for (let i = 0; i < 6; i++) await send(ALICE, { words: 20, properties: { plan: 'pro', feature: 'chat' } });
  await send(ALICE, { embeddings: true, properties: { plan: 'pro', feature: 'search' } });
  for (let i = 0; i < 3; i++) await send('bob', { model: 'gpt-4o', words: 50, properties: { plan: 'free' } });
  await send('bob', { status: 500, properties: { plan: 'free' } });
  await send('carol', { words: 5 });
  await send('carol', { words: 5 });
  await send(FORMULA_USER, { words: 3 });
  await send(null, { words: 2 });
  await Promise.all(Array.from({ length: LOAD_USERS }, (_, i) => send(`load-${String(i + 1).padStart(2, '0')}`, { words: 1 + (i % 7) })));
  for (let batch = 0; batch < BURST_REQUESTS / 10; batch++) {
    await Promise.all(Array.from({ length: 10 }, () => send(BURST_USER, { words: 1, properties: { plan: 'free' } })));
  }
  // Earlier days, written the way the gateway writes every event (event log + live totals).
  const recorder = new UsageRecorder({ sink: gateway.sink, counters: gateway.counters, log: silentLogger });
  for (const [daysAgo, count] of [[3, 2], [10, 1]] as const) {
    for (let i = 0; i < count; i++) await recorder.record(earlierEvent(ALICE, daysAgo, i));
  }
  await server.idle();
}

/** `it`, plus a screenshot of the page when the test fails, to see what the page showed. */
function check(name: string, fn: () => Promise<void> | void): void {
  it(name, async () => {
    try {
      await fn();
    } catch (error) {
      await shot(`failed-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}`).catch(() => undefined);
      throw error;
    }
  });
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/**
 * Loads a dashboard address afresh (a new page, so nothing is left from the previous test but the key in session
 * storage) and waits for the page's script to have drawn its heading.
 */
async function open(hash: string): Promise<void> {
  await page.goto('about:blank');
  await page.goto(`${server.url}/dashboard/${hash}`);
  await page.locator('main h1').first().waitFor();
}

async function waitForUsersTable(): Promise<void> {
  await page.locator('table.users tbody tr').first().waitFor();
}

/** The table's cells of one column, top to bottom. */
async function column(key: ColumnKey): Promise<string[]> {
  return (await page.locator(`table.users tbody td[data-col="${key}"]`).allTextContents()).map((t) => t.replace(/ \*$/, ''));
}

function apiRowsOfMonth(users: any[]): UserRow[] {
  return users.map((u) => ({
    user_id: u.user_id,
    requests: u.requests,
    cost_usd: u.cost_usd,
    unpriced_requests: u.unpriced_requests,
    total_tokens: u.total_tokens,
    active_days: null,
    first_active: u.first_active,
    last_active: u.last_active,
    errors: u.errors,
    rate_limited: u.rate_limited,
  }));
}

/** Parses the CSV the page exports (RFC 4180: quotes, doubled quotes, CRLF). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), i++;
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') row.push(field), (field = '');
    else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field), rows.push(row), (row = []), (field = ''), i++;
    } else field += c;
  }
  return rows;
}

describe('the dashboard in Chromium', { skip: !HAVE_CHROMIUM && !REQUIRED ? `no Chromium at ${CHROMIUM} (apt-get install -y chromium); set REQUIRE_CHROMIUM=1 to fail instead` : false }, () => {
  before(async () => {
    assert.ok(HAVE_CHROMIUM, `REQUIRE_CHROMIUM=1 but there is no Chromium at ${CHROMIUM}; install it with apt-get install -y chromium`);
    const built = await buildDashboard();
    assert.ok(built.module === (await readFile(DASHBOARD_MODULE, 'utf8')), 'the served dashboard is older than its sources: run npx tsx bin/build-dashboard.ts');
    await mkdir(ARTIFACTS, { recursive: true });
    upstream = await startFakeUpstream();
    dataDir = await mkdtemp(join(tmpdir(), 'gateway-dashboard-'));
    const config = localConfigFromEnv({ UPSTREAM_OPENAI_URL: upstream.url, DATA_DIR: dataDir, GATEWAY_KEYS: GATEWAY_KEY, METRICS_KEYS: METRICS_KEY, HOST: '127.0.0.1', PORT: '0' });
    gateway = await openLocalGateway({ config, log: silentLogger });
    server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log: silentLogger });
    const [, userDataDir] = await Promise.all([seed(), mkdtemp(join(tmpdir(), 'chromium-profile-'))]);
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 800 },
      acceptDownloads: true,
      // The closed network makes Chromium's own background connections misbehave; none are needed.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = context.pages()[0] ?? (await context.newPage());
    // Everything here is local and fast: a missing element should fail in seconds, not after the default 30.
    page.setDefaultTimeout(10_000);
    page.on('pageerror', (error) => pageProblems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (/Content Security Policy|Refused to/i.test(message.text())) pageProblems.push(`console: ${message.text()}`);
    });
  });

  after(async () => {
    await context?.close();
    await server?.close();
    await gateway?.close();
    await upstream?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  check('asks for the metrics key, refuses a wrong one, and keeps the key in session storage only', async () => {
    await page.goto(`${server.url}/dashboard`);
    assert.equal(new URL(page.url()).pathname, '/dashboard/');
    await page.locator('#metrics-key').waitFor();
    await shot('key-form-1280');
    await page.fill('#metrics-key', 'mk_wrong_key_0123456789');
    await page.click('.key-form button[type=submit]');
    await page.getByText('That key was refused').waitFor();
    await page.fill('#metrics-key', METRICS_KEY);
    await page.click('.key-form button[type=submit]');
    await page.locator('main h1', { hasText: 'Overview' }).waitFor();
    assert.equal(await page.evaluate('sessionStorage.getItem("llm-usage-gateway.metrics-key")'), METRICS_KEY);
    assert.equal(await page.evaluate('localStorage.length'), 0);
    assert.deepEqual(await context.cookies(), []);
  });

  check('shows each user’s numbers for this month exactly as the metrics API has them', async () => {
    await open('#/users');
    await waitForUsersTable();
    const { users } = await api(`/users?period=month&limit=1000`);
    const byId = new Map<string | null, any>(users.map((u: any) => [u.user_id, u]));
    const ids = await page.locator('table.users tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-user-id')));
    assert.equal(ids.length, 50, 'first page of 50');
    const cols = Object.fromEntries(
      await Promise.all((['requests', 'cost_usd', 'total_tokens', 'errors', 'rate_limited', 'first_active', 'last_active', 'active_days'] as const).map(async (k) => [k, await column(k)] as const)),
    );
    ids.forEach((id, i) => {
      const u = byId.get(id);
      assert.ok(u, `row ${i} user ${id} is in the API's answer`);
      assert.equal(cols.requests![i], formatCount(u.requests), `${id} requests`);
      assert.equal(cols.cost_usd![i], formatUsd(u.cost_usd), `${id} cost`);
      assert.equal(cols.total_tokens![i], formatCount(u.total_tokens), `${id} tokens`);
      assert.equal(cols.errors![i], formatCount(u.errors), `${id} errors`);
      assert.equal(cols.rate_limited![i], formatCount(u.rate_limited), `${id} rate limited`);
      assert.equal(cols.first_active![i], formatTime(u.first_active), `${id} first active`);
      assert.equal(cols.last_active![i], formatTime(u.last_active), `${id} last active`);
      assert.equal(cols.active_days![i], '—', 'monthly live totals have no active days');
    });
    // Default order: cost, largest first, as the API ranks them.
    assert.deepEqual(ids, sortRows(apiRowsOfMonth(users), { key: 'cost_usd', order: 'desc' }).slice(0, 50).map((r) => r.user_id));
    assert.equal(await page.locator('table.users tbody tr[data-user-id="bob"] td[data-col="errors"]').textContent(), '1');
    assert.match((await page.locator('[data-note="missing-columns"]').textContent()) ?? '', /Active days/);
    assert.equal(await page.locator('.count').textContent(), `${formatCount(users.length)} users`);
    await shot('users-1280');
  });

  check('sorts by each column, both ways', async () => {
    const { users } = await api(`/users?period=month&limit=1000`);
    const rows = apiRowsOfMonth(users);
    for (const key of ['requests', 'user_id', 'total_tokens', 'errors', 'last_active', 'first_active', 'rate_limited', 'cost_usd'] as const) {
      for (const order of ['first', 'second'] as const) {
        await page.click(`table.users th button[data-sort="${key}"]`);
        const ariaSort = await page.locator(`table.users th[data-col="${key}"]`).getAttribute('aria-sort');
        assert.ok(ariaSort === 'ascending' || ariaSort === 'descending', `${key} ${order}: aria-sort ${ariaSort}`);
        const expected = sortRows(rows, { key, order: ariaSort === 'ascending' ? 'asc' : 'desc' }).slice(0, 50).map((r) => formatUserId(r.user_id));
        assert.deepEqual(await column('user_id'), expected, `${key} ${ariaSort}`);
      }
    }
    // The largest requester first, whatever the tie-breaking.
    await page.click('table.users th button[data-sort="requests"]');
    const requests = (await column('requests')).map((t) => Number(t.replace(/,/g, '')));
    assert.deepEqual(requests, [...requests].sort((a, b) => b - a));
    assert.equal((await column('user_id'))[0], BURST_USER);
  });

  check('searches by user id, ignoring case, and pages through the rest', async () => {
    await page.fill('input.search', 'ALICE');
    assert.deepEqual(await column('user_id'), [ALICE]);
    assert.equal(await page.locator('.count').textContent(), `1 of ${formatCount((await api('/users?period=month&limit=1000')).users.length)} users match`);
    await page.fill('input.search', 'load-0');
    assert.equal((await column('user_id')).length, 9);
    await page.fill('input.search', 'nobody-has-this-id');
    await page.getByText('No user id contains “nobody-has-this-id”').waitFor();
    await page.fill('input.search', 'load-');
    assert.equal((await column('user_id')).length, 50);
    assert.equal(await page.locator('.page-of').textContent(), 'Page 1 of 2');
    await page.click('.pager .next');
    assert.equal((await column('user_id')).length, LOAD_USERS - 50);
    assert.equal(await page.locator('.page-of').textContent(), 'Page 2 of 2');
    await page.fill('input.search', '');
  });

  check('exports what the table shows as CSV, with the API’s exact numbers', async () => {
    await page.fill('input.search', 'o');
    await page.click('table.users th button[data-sort="requests"]');
    const shownOrder = await column('user_id');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('button.export')]);
    assert.equal(download.suggestedFilename(), `users_${TODAY.slice(0, 8)}01_${TODAY}.csv`);
    const csv = parseCsv(await readFile((await download.path())!, 'utf8'));
    const header = csv[0]!;
    assert.deepEqual(header, ['user_id', 'requests', 'cost_usd', 'total_tokens', 'first_active', 'last_active', 'errors', 'rate_limited', 'unpriced_requests']);
    const { users } = await api(`/users?period=month&limit=1000`);
    const matching = users.filter((u: any) => u.user_id !== null && u.user_id.toLowerCase().includes('o'));
    assert.equal(csv.length - 1, matching.length, 'every matching row, not just the first page');
    assert.deepEqual(csv.slice(1, 1 + shownOrder.length).map((r) => r[0]), shownOrder, 'in the table’s order');
    const byId = new Map<string, any>(users.map((u: any) => [u.user_id, u]));
    for (const record of csv.slice(1)) {
      const u = byId.get(record[0]!);
      assert.ok(u, `${record[0]} is a user of the API`);
      assert.deepEqual(
        record,
        [u.user_id, u.requests, u.cost_usd, u.total_tokens, u.first_active, u.last_active, u.errors, u.rate_limited, u.unpriced_requests].map(String),
      );
    }
    // A user id that a spreadsheet would run as a formula is exported as text.
    await page.fill('input.search', '=SUM');
    const [formula] = await Promise.all([page.waitForEvent('download'), page.click('button.export')]);
    const formulaCsv = await readFile((await formula.path())!, 'utf8');
    assert.equal(parseCsv(formulaCsv)[1]![0], `'${FORMULA_USER}`);
    await page.fill('input.search', '');
  });

  check('shows today with one active day per user, a custom range from the event log with its missing columns marked, and empty periods', async () => {
    await open('#/users');
    await waitForUsersTable();
    await page.click('button[data-period="today"]');
    await page.locator('button[data-period="today"][aria-pressed="true"]').waitFor();
    await waitForUsersTable();
    const { users: today } = await api(`/users?period=day&date=${TODAY}&limit=1000`);
    assert.equal(await page.locator('.count').textContent(), `${formatCount(today.length)} users`);
    assert.ok((await column('active_days')).every((cell) => cell === '1'));

    await page.click('button[data-period="custom"]');
    await page.fill('input[name="from"]', addDays(TODAY, -3));
    await page.fill('input[name="to"]', TODAY);
    await page.click('form.range button[type="submit"]');
    await page.locator('button[data-period="custom"][aria-pressed="true"]').waitFor();
    await waitForUsersTable();
    const { groups } = await api(`/usage?group_by=user&from=${addDays(TODAY, -3)}&to=${TODAY}&limit=10000`);
    const alice = groups.find((g: any) => g.group === ALICE);
    const aliceRow = page.locator(`table.users tbody tr[data-user-id="${ALICE}"]`);
    assert.equal(await aliceRow.locator('td[data-col="requests"]').textContent(), formatCount(alice.requests));
    assert.equal(await aliceRow.locator('td[data-col="cost_usd"]').textContent(), formatUsd(alice.cost_usd));
    for (const key of ['active_days', 'first_active', 'last_active', 'rate_limited'] as const) {
      assert.equal(await aliceRow.locator(`td[data-col="${key}"]`).textContent(), '—', key);
      assert.equal(await page.locator(`table.users th[data-col="${key}"] button`).count(), 0, `${key} is not sortable here`);
    }
    assert.match((await page.locator('[data-note="missing-columns"]').textContent()) ?? '', /event log/);
    await shot('users-custom-range-1280');

    const past = `period=custom&from=${addDays(TODAY, -300)}&to=${addDays(TODAY, -200)}`;
    await open(`#/users?${past}`);
    await page.getByText('No usage in this period.').waitFor();
    await open(`#/?${past}`);
    await page.locator('.stats .state.empty', { hasText: 'No usage in this period.' }).waitFor();
    await page.getByText('No user had usage in this period.').waitFor();
  });

  check('draws a user’s 30-day charts and breakdowns from the history API', async () => {
    const userPath = `/users/${encodeURIComponent(ALICE)}`;
    const from = addDays(TODAY, -29);
    await open(`#${userPath}`);
    await page.locator('#requests-chart svg rect.bar').first().waitFor({ state: 'attached' });
    const series: any[] = (await api(`${userPath}/usage?from=${from}&to=${TODAY}&interval=day`)).series;
    const requestBars = await page.locator('#requests-chart rect.bar').evaluateAll((bars) => bars.map((b) => [b.getAttribute('data-key'), Number(b.getAttribute('data-value')), Number(b.getAttribute('height'))] as const));
    assert.equal(requestBars.length, 30);
    assert.equal(requestBars[0]![0], from);
    assert.equal(requestBars[29]![0], TODAY);
    const expected = new Map(series.map((p) => [p.bucket.slice(0, 10), p]));
    for (const [day, value, height] of requestBars) {
      assert.equal(value, expected.get(day!)?.requests ?? 0, `requests on ${day}`);
      assert.equal(height > 0, value > 0, `a bar is drawn for ${day} exactly when it has requests`);
    }
    assert.deepEqual(requestBars.filter(([, v]) => v > 0).map(([day]) => day), [addDays(TODAY, -10), addDays(TODAY, -3), TODAY]);
    const costBars = await page.locator('#cost-chart rect.bar').evaluateAll((bars) => bars.map((b) => [b.getAttribute('data-key'), Number(b.getAttribute('data-value'))] as const));
    for (const [day, value] of costBars) assert.equal(value, expected.get(day!)?.cost_usd ?? 0, `cost on ${day}`);

    const summary = await api(`${userPath}/summary?from=${from}&to=${TODAY}`);
    assert.equal(await page.locator('#summary [data-field="total_requests"] dd').textContent(), formatCount(summary.total_requests));
    assert.equal(await page.locator('#summary [data-field="total_cost"] dd').textContent(), formatUsd(summary.total_cost));
    assert.equal(await page.locator('#summary [data-field="active_for"] dd').textContent(), '3');

    const { groups: models } = await api(`/usage?from=${from}&to=${TODAY}&group_by=model&user_id=${encodeURIComponent(ALICE)}&limit=100`);
    assert.deepEqual(await page.locator('#by-model tbody td[data-col="group"]').allTextContents(), models.map((g: any) => g.group));
    assert.deepEqual(await page.locator('#by-model tbody td[data-col="requests"]').allTextContents(), models.map((g: any) => formatCount(g.requests)));

    await page.locator('#by-property [data-property="plan"] tbody tr').first().waitFor();
    await page.locator('#by-property [data-property="feature"] tbody tr').first().waitFor();
    const { groups: features } = await api(`/usage?from=${from}&to=${TODAY}&group_by=property:feature&user_id=${encodeURIComponent(ALICE)}&limit=100`);
    assert.deepEqual(await page.locator('#by-property [data-property="feature"] tbody td[data-col="group"]').allTextContents(), features.map((g: any) => g.group ?? '(none)'));

    const recent = await page.locator('#recent tbody tr').count();
    assert.equal(recent, 7, 'today’s seven requests, newest first');
    const live = await api(userPath);
    assert.equal(await page.locator('[data-stat="all-time"] .stat-value').textContent(), formatUsd(live.all_time.cost_usd));
    await shot('user-1280');
  });

  check('says so when a user has no usage', async () => {
    await open(`#/users/${encodeURIComponent('nobody@example.com')}`);
    await page.getByText('No usage recorded for “nobody@example.com”.').waitFor();
  });

  check('gives an overview of the period: totals, active users, cost distribution, top users, today’s anomalies', async () => {
    await open('#/?period=month');
    await page.locator('[data-stat="cost"]').waitFor();
    const { users } = await api(`/users?period=month&limit=1000`);
    const cost = users.reduce((sum: number, u: any) => sum + u.cost_usd, 0);
    const requests = users.reduce((sum: number, u: any) => sum + u.requests, 0);
    assert.equal(await page.locator('[data-stat="cost"] .stat-value').textContent(), formatUsd(cost));
    assert.equal(await page.locator('[data-stat="requests"] .stat-value').textContent(), formatCount(requests));
    assert.equal(await page.locator('[data-stat="active-users"] .stat-value').textContent(), formatCount(users.filter((u: any) => u.user_id !== null).length));
    const top = sortRows(apiRowsOfMonth(users.filter((u: any) => u.user_id !== null)), { key: 'cost_usd', order: 'desc' }).slice(0, 10);
    assert.deepEqual(await page.locator('#top-users tbody td[data-col="user_id"]').allTextContents(), top.map((r) => r.user_id));

    const distribution = await api(`/distribution?from=${TODAY.slice(0, 8)}01&to=${TODAY}&metric=cost`);
    await page.locator('#distribution dl.percentiles').waitFor();
    assert.equal(await page.locator('#distribution [data-percentile="p50"] dd').textContent(), formatUsd(distribution.p50));
    assert.equal(await page.locator('#distribution [data-percentile="max"] dd').textContent(), formatUsd(distribution.max));
    const bins = await page.locator('#distribution rect.bar').evaluateAll((bars) => bars.map((b) => Number(b.getAttribute('data-value'))));
    assert.deepEqual(bins, distribution.histogram.map((b: any) => b.users));

    const anomalies = await api(`/anomalies?date=${TODAY}`);
    assert.ok(anomalies.anomalies.some((a: any) => a.user_id === BURST_USER), 'the burst user is an anomaly');
    const burst = page.locator(`#anomalies tbody tr[data-key="${BURST_USER}"]`);
    await burst.waitFor();
    assert.match((await burst.locator('td[data-col="rule"]').textContent()) ?? '', /baseline|cohort_p99/);
    assert.match((await burst.locator('td[data-col="reason"]').textContent()) ?? '', /^requests 110(, with no usage in the previous 14 days| is (over|above))/);
    await shot('overview-1280');
  });

  check('stays readable at phone width: nothing wider than the screen but the tables’ own scroll', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    try {
      for (const [name, hash, ready] of [
        ['overview-390', '#/', '#distribution dl.percentiles'],
        ['users-390', '#/users', 'table.users tbody tr'],
        ['user-390', `#/users/${encodeURIComponent(ALICE)}`, '#recent tbody tr'],
      ] as const) {
        await open(hash);
        await page.locator(ready).first().waitFor();
        const width = await page.evaluate('document.documentElement.scrollWidth');
        assert.ok((width as number) <= 390, `${name} is ${width} px wide`);
        await shot(name);
      }
    } finally {
      await page.setViewportSize({ width: 1280, height: 800 });
    }
  });

  check('shows an error that says what to do, and recovers on Retry', async () => {
    let fail = true;
    const usersRoute = (url: URL) => url.pathname === '/metrics/users';
    await page.route(usersRoute, (route) =>
      fail
        ? route.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: { message: 'The counter store is unavailable.', code: 'store_unavailable' } }) })
        : route.fallback(),
    );
    try {
      await open('#/users?period=today');
      await page.getByText('Could not load users.').waitFor();
      assert.match((await page.locator('.state.error').textContent()) ?? '', /counter store is unavailable.*Retry in a moment/);
      await shot('error-1280');
      fail = false;
      await page.click('button.retry');
      await waitForUsersTable();
    } finally {
      await page.unroute(usersRoute);
    }
  });

  check('polls a history query that answers 202 until its result is ready', async () => {
    const range = `from=${addDays(TODAY, -1)}&to=${TODAY}`;
    const result = await api(`/usage?${range}&group_by=user&sort=cost&order=desc&limit=10000`);
    let polls = 0;
    await page.route((url) => url.pathname === '/metrics/usage', (route) =>
      route.fulfill({ status: 202, contentType: 'application/json', body: JSON.stringify({ state: 'running', query_id: 'usage.test.q1', result_url: '/metrics/queries/usage.test.q1' }) }),
    );
    await page.route((url) => url.pathname === '/metrics/queries/usage.test.q1', (route) => {
      polls++;
      return polls < 2
        ? route.fulfill({ status: 202, contentType: 'application/json', body: JSON.stringify({ state: 'running', query_id: 'usage.test.q1', result_url: '/metrics/queries/usage.test.q1' }) })
        : route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(result) });
    });
    try {
      await open(`#/users?period=custom&${range}`);
      await page.getByText(/the query has run \d+ s/).waitFor();
      await waitForUsersTable();
      assert.equal(polls, 2);
      assert.equal(await page.locator('.count').textContent(), `${formatCount(result.groups.length)} users`);
    } finally {
      await page.unrouteAll({ behavior: 'ignoreErrors' });
    }
  });

  check('works under an API Gateway stage prefix, with relative addresses for its files and its API', async () => {
    const seen: string[] = [];
    const origin = new URL(server.url).origin;
    await page.route((url) => url.origin === origin && url.pathname.startsWith('/prod/'), async (route) => {
      const url = new URL(route.request().url());
      seen.push(url.pathname);
      // API Gateway hands the function the path without the stage.
      const response = await route.fetch({ url: `${origin}${url.pathname.slice('/prod'.length)}${url.search}`, maxRedirects: 0 });
      await route.fulfill({ response });
    });
    try {
      // A routed redirect is followed by the browser itself, unrouted: check it, then load its target.
      const redirect = await page.request.get(`${origin}/dashboard`, { maxRedirects: 0 });
      assert.equal(redirect.status(), 301);
      assert.equal(new URL(redirect.headers().location!, `${origin}/prod/dashboard`).pathname, '/prod/dashboard/');
      await page.goto(`${origin}/prod/dashboard/`);
      await page.locator('[data-stat="cost"]').waitFor();
      assert.ok(seen.includes('/prod/dashboard/app.js'), seen.join(' '));
      assert.ok(seen.includes('/prod/metrics/users'), seen.join(' '));
    } finally {
      await page.unrouteAll({ behavior: 'ignoreErrors' });
    }
  });

  check('ran without a script error or a Content-Security-Policy violation', () => {
    assert.deepEqual(pageProblems, []);
  });
});
