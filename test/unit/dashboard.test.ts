/**
 * The dashboard handler (files, headers, redirects) in-process, and the dashboard's pure logic: where the API is,
 * periods, sorting, search, paging and CSV. The page itself is tested in Chromium (test/browser).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApiClient, ApiError, metricsBase, type KeyStorage } from '../../dashboard/api';
import { csvField, formatUsd, formatUsdAxis, toCsv } from '../../dashboard/format';
import { addDays, periodFromParams, rangeProblem, resolvePeriod } from '../../dashboard/period';
import { pageOf, rowsFromLiveUsers, searchRows, sortRows, usersCsv, type UserRow } from '../../dashboard/users-model';
import { DASHBOARD_CSP, createDashboard, isDashboardPath } from '../../lambda/core/dashboard';
import { DASHBOARD_ASSETS, DASHBOARD_VERSION } from '../../lambda/core/dashboard-assets.generated';
import { collectingContext } from '../../lambda/core/handler';

const dashboard = createDashboard();
const get = (path: string, init?: RequestInit) => dashboard(new Request(`http://gw.test${path}`, init), collectingContext());

describe('createDashboard', () => {
  it('redirects /dashboard to /dashboard/ with a relative Location, so a stage prefix survives', async () => {
    const response = await get('/dashboard');
    assert.equal(response.status, 301);
    assert.equal(response.headers.get('location'), 'dashboard/');
    assert.equal(new URL(response.headers.get('location')!, 'https://api.example/prod/dashboard').pathname, '/prod/dashboard/');
  });

  it('serves the page with a strict CSP, revalidated on every load', async () => {
    const response = await get('/dashboard/');
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(response.headers.get('cache-control'), 'no-cache');
    assert.equal(response.headers.get('content-security-policy'), DASHBOARD_CSP);
    assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
    const html = await response.text();
    assert.match(html, new RegExp(`src="app\\.js\\?v=${DASHBOARD_VERSION}"`));
    assert.match(html, new RegExp(`href="app\\.css\\?v=${DASHBOARD_VERSION}"`));
    assert.doesNotMatch(html, /<script>|<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+=|<style|\sstyle=/i, 'no inline script, handler or style');
    assert.doesNotMatch(html, /https?:\/\//, 'nothing from another origin');
  });

  it('has a CSP without inline script or style and with API calls to its own origin only', () => {
    assert.match(DASHBOARD_CSP, /script-src 'self'(;|$)/);
    assert.match(DASHBOARD_CSP, /style-src 'self'(;|$)/);
    assert.match(DASHBOARD_CSP, /connect-src 'self'(;|$)/);
    assert.match(DASHBOARD_CSP, /default-src 'none'/);
    assert.doesNotMatch(DASHBOARD_CSP, /unsafe/);
  });

  it('serves the script and the stylesheet with their content types, cached for good at the current version', async () => {
    const js = await get(`/dashboard/app.js?v=${DASHBOARD_VERSION}`);
    assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.equal(js.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.equal(await js.text(), DASHBOARD_ASSETS['app.js']!.body);
    const css = await get(`/dashboard/app.css?v=${DASHBOARD_VERSION}`);
    assert.equal(css.headers.get('content-type'), 'text/css; charset=utf-8');
    const stale = await get('/dashboard/app.js?v=0ld0ld0ld0ld');
    assert.equal(stale.headers.get('cache-control'), 'no-cache', 'an old version must not be cached as if it were current');
  });

  it('answers a matching If-None-Match with 304 and HEAD without a body', async () => {
    const etag = (await get('/dashboard/')).headers.get('etag')!;
    assert.match(etag, /^"[\w-]+"$/);
    const cached = await get('/dashboard/', { headers: { 'if-none-match': etag } });
    assert.equal(cached.status, 304);
    assert.equal(await cached.text(), '');
    const head = await get('/dashboard/app.js', { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), '');
  });

  it('answers unknown files with a JSON 404 and other methods with 405', async () => {
    const missing = await get('/dashboard/../../etc/passwd');
    assert.equal(missing.status, 404);
    for (const path of ['/dashboard/secret.txt', '/dashboard/constructor', '/dashboard/__proto__']) {
      const response = await get(path);
      assert.equal(response.status, 404, path);
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'unknown_route');
    }
    const post = await get('/dashboard/', { method: 'POST', body: 'x' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
  });

  it('owns /dashboard and what is under it, nothing else', () => {
    assert.ok(isDashboardPath('/dashboard'));
    assert.ok(isDashboardPath('/dashboard/app.js'));
    assert.ok(!isDashboardPath('/dashboards'));
    assert.ok(!isDashboardPath('/metrics/users'));
  });
});

describe('metricsBase', () => {
  it('finds the metrics API beside the page, under any stage prefix', () => {
    assert.equal(metricsBase('/dashboard/'), '/metrics');
    assert.equal(metricsBase('/prod/dashboard/'), '/prod/metrics');
    assert.equal(metricsBase('/prod/dashboard/index.html'), '/prod/metrics');
  });
});

class MemoryStorage implements KeyStorage {
  readonly items = new Map<string, string>();
  getItem(name: string) {
    return this.items.get(name) ?? null;
  }
  setItem(name: string, value: string) {
    this.items.set(name, value);
  }
  removeItem(name: string) {
    this.items.delete(name);
  }
}

describe('ApiClient', () => {
  it('sends the stored key as a bearer token and follows a 202 query to its result', async () => {
    const seen: Array<{ url: string; auth: string | null }> = [];
    const answers = [
      Response.json({ state: 'running', query_id: 'usage.abc.q1', result_url: '/metrics/queries/usage.abc.q1' }, { status: 202 }),
      Response.json({ state: 'running', query_id: 'usage.abc.q1', result_url: '/metrics/queries/usage.abc.q1' }, { status: 202 }),
      Response.json({ state: 'done', groups: [{ group: 'u1' }] }),
    ];
    const storage = new MemoryStorage();
    const api = new ApiClient({
      base: '/prod/metrics',
      storage,
      firstPollMs: 1,
      fetch: async (input, init) => {
        seen.push({ url: String(input), auth: new Headers(init?.headers).get('authorization') });
        return answers.shift()!;
      },
    });
    api.setKey('mk_test_key_0123456789');
    const waits: number[] = [];
    const body = await api.get<{ groups: unknown[] }>('/usage', { group_by: 'user', from: '2026-11-01' }, { onWaiting: (s) => waits.push(s) });
    assert.deepEqual(body.groups, [{ group: 'u1' }]);
    assert.deepEqual(
      seen.map((s) => s.url),
      ['/prod/metrics/usage?group_by=user&from=2026-11-01', '/prod/metrics/queries/usage.abc.q1', '/prod/metrics/queries/usage.abc.q1'],
    );
    assert.ok(seen.every((s) => s.auth === 'Bearer mk_test_key_0123456789'));
    assert.equal(waits.length, 2);
  });

  it('turns JSON errors into ApiError, telling a missing route from a refused key', async () => {
    const api = new ApiClient({
      base: '/metrics',
      storage: new MemoryStorage(),
      fetch: async (input) =>
        String(input).includes('distribution')
          ? Response.json({ error: { message: 'No metrics route /metrics/distribution.', code: 'unknown_route' } }, { status: 404 })
          : Response.json({ error: { message: 'Send the metrics key.', code: 'missing_metrics_key', param: 'Authorization' } }, { status: 401 }),
    });
    const missing = await api.get('/distribution').catch((e: unknown) => e);
    assert.ok(missing instanceof ApiError && missing.unavailable && !missing.needsKey);
    const locked = await api.get('/users').catch((e: unknown) => e);
    assert.ok(locked instanceof ApiError && locked.needsKey && locked.code === 'missing_metrics_key');
  });
});

describe('periods', () => {
  it('resolves today, this month and a custom range to UTC days and their data source', () => {
    assert.deepEqual(
      [resolvePeriod({ kind: 'today' }, '2026-11-22'), resolvePeriod({ kind: 'month' }, '2026-11-22')].map((p) => [p.from, p.to, p.source]),
      [
        ['2026-11-22', '2026-11-22', 'live-day'],
        ['2026-11-01', '2026-11-22', 'live-month'],
      ],
    );
    const custom = periodFromParams(new URLSearchParams('period=custom&from=2026-10-01&to=2026-10-31'));
    assert.equal(resolvePeriod(custom, '2026-11-22').source, 'history');
    assert.deepEqual(periodFromParams(new URLSearchParams('period=custom&from=2026-10-31&to=2026-10-01')), { kind: 'month' });
    assert.equal(addDays('2026-03-01', -1), '2026-02-28');
    assert.equal(rangeProblem('2025-01-01', '2026-11-22'), 'A range may span at most 366 days.');
    assert.equal(rangeProblem('2026-02-30', '2026-03-01'), 'Pick both days.');
  });
});

const row = (user_id: string | null, requests: number, cost_usd: number): UserRow => ({
  user_id,
  requests,
  cost_usd,
  unpriced_requests: 0,
  total_tokens: requests * 10,
  active_days: null,
  first_active: null,
  last_active: null,
  errors: 0,
  rate_limited: null,
});

describe('the users table model', () => {
  const rows = [row('bob', 5, 0.5), row('Alice', 5, 0.25), row(null, 1, 0.001), row('carol', 9, 0.1)];

  it('sorts by a column, breaking ties by user id, either way', () => {
    assert.deepEqual(sortRows(rows, { key: 'requests', order: 'desc' }).map((r) => r.user_id), ['carol', 'Alice', 'bob', null]);
    assert.deepEqual(sortRows(rows, { key: 'requests', order: 'asc' }).map((r) => r.user_id), [null, 'Alice', 'bob', 'carol']);
    assert.deepEqual(sortRows(rows, { key: 'user_id', order: 'asc' }).map((r) => r.user_id), [null, 'Alice', 'bob', 'carol']);
  });

  it('searches user ids ignoring case, and pages', () => {
    assert.deepEqual(searchRows(rows, ' ALI ').map((r) => r.user_id), ['Alice']);
    assert.equal(searchRows(rows, '').length, 4);
    const page = pageOf([...Array(120).keys()], 9);
    assert.deepEqual([page.index, page.count, page.items.length], [2, 3, 20]);
  });

  it('counts one active day for a user listed for a day, and leaves a month’s active days unknown', () => {
    const user = { user_id: 'u', requests: 2, errors: 0, total_tokens: 5, cost_usd: 0.1, unpriced_requests: 0, rate_limited: 0, first_active: 'a', last_active: 'b' };
    assert.equal(rowsFromLiveUsers([user], 'live-day')[0]!.active_days, 1);
    assert.equal(rowsFromLiveUsers([user], 'live-month')[0]!.active_days, null);
  });

  it('exports the columns the source has, with exact numbers', () => {
    const csv = usersCsv([row('a,b', 2, 0.000123)], 'history');
    assert.equal(csv, 'user_id,requests,cost_usd,total_tokens,errors,unpriced_requests\r\n"a,b",2,0.000123,20,0,0\r\n');
  });
});

describe('CSV and number formats', () => {
  it('keeps user ids from becoming spreadsheet formulas', () => {
    assert.equal(csvField('=HYPERLINK("http://x")'), `"'=HYPERLINK(""http://x"")"`);
    assert.equal(csvField('@cmd'), "'@cmd");
    assert.equal(csvField(null), '');
    assert.equal(toCsv(['a'], [[1], ['x\ny']]), 'a\r\n1\r\n"x\ny"\r\n');
  });

  it('writes small costs with enough decimals to tell users apart', () => {
    assert.deepEqual([formatUsd(0), formatUsd(0.001293), formatUsd(0.0512), formatUsd(1234.5), formatUsd(1e-9)], ['$0.00', '$0.001293', '$0.0512', '$1,234.50', '<$0.000001']);
    assert.deepEqual([0, 0.0005, 0.001, 2.5, 10].map(formatUsdAxis), ['$0', '$0.0005', '$0.001', '$2.5', '$10']);
  });
});
