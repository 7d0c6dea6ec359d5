/**
 * A user's page: live totals, the last 30 days' summary, requests and cost per day, breakdowns by model and by
 * each custom property, and their most recent requests.
 */
import { ApiClient, ApiError, type ExportAnswer } from '../api';
import { barChart, chartWidth } from '../charts';
import { h, show, type Child } from '../dom';
import { formatCount, formatMs, formatPercent, formatTime, formatUsd, formatUsdAxis } from '../format';
import { addDays, daysOf } from '../period';
import { emptyState, fill, hashOf, panel, stat, table, waitingText, type ViewContext } from '../view';
import type { UsageGroup } from '../users-model';

/** Days the charts and breakdowns cover, today included. */
export const CHART_DAYS = 30;
/** Requests listed under "Most recent requests". */
export const RECENT_REQUESTS = 20;

interface LiveTotals {
  readonly requests: number;
  readonly errors: number;
  readonly total_tokens: number;
  readonly cost_usd: number;
  readonly unpriced_requests: number;
  readonly rate_limited: number;
}

interface LiveUserDetail {
  readonly user_id: string;
  readonly first_active: string;
  readonly last_active: string;
  readonly today: LiveTotals;
  readonly month: LiveTotals;
  readonly all_time: LiveTotals;
}

interface SeriesPoint {
  readonly bucket: string;
  readonly requests: number;
  readonly errors: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly cost_usd: number;
}

interface Summary {
  readonly total_requests: number;
  readonly total_cost: number;
  readonly total_prompt_tokens: number;
  readonly total_completion_tokens: number;
  readonly active_for: number;
  readonly first_active: string | null;
  readonly last_active: string | null;
  readonly average_requests_per_day_active: number;
  readonly average_tokens_per_request: number;
  readonly rate_limited_count: number;
  readonly error_rate: number;
}

/** A usage event as the export returns it (the fields this page shows). */
export interface RecentRequest {
  readonly request_id: string;
  readonly ts: string;
  readonly model: string | null;
  readonly path: string;
  readonly status: number;
  readonly stream: boolean;
  readonly latency_ms: number;
  readonly total_tokens: number;
  readonly cost_usd: number | null;
  readonly error: string | null;
  readonly properties: Readonly<Record<string, string>>;
}

export function renderUser(main: HTMLElement, ctx: ViewContext, userId: string): void {
  const to = ctx.today;
  const from = addDays(to, -(CHART_DAYS - 1));
  const range = { from, to };
  const userPath = ApiClient.userPath(userId);
  const options = (what: string, progress: (text: string) => void) => ({ signal: ctx.signal, onWaiting: (s: number) => progress(waitingText(what)(s)) });

  const live = h('div', { class: 'stats' });
  const summary = panel(`Summary, last ${CHART_DAYS} days`, { id: 'summary', wide: true });
  const requestsChart = panel('Requests per day', { id: 'requests-chart' });
  const costChart = panel('Cost per day', { id: 'cost-chart' });
  const byModel = panel('By model', { id: 'by-model', note: `Last ${CHART_DAYS} days.` });
  const byProperty = panel('By custom property', { id: 'by-property', note: `Last ${CHART_DAYS} days, for each property in the user’s recent requests, and any you add.` });
  const recent = panel('Most recent requests', { id: 'recent', wide: true });
  const grid = h('div', { class: 'grid' }, summary.root, requestsChart.root, costChart.root, byModel.root, byProperty.root, recent.root);
  show(
    main,
    h('p', { class: 'crumbs' }, h('a', { href: hashOf('/users') }, '← Users')),
    h('div', { class: 'view-head' }, h('h1', { class: 'user-title' }, userId)),
    h('p', { class: 'period-label' }, `Charts and breakdowns: ${from} to ${to} (UTC).`),
    live,
    grid,
  );

  const liveLoad = ctx.api.get<LiveUserDetail>(userPath, {}, { signal: ctx.signal });
  void fill(ctx, live, 'Live totals', async () => {
    try {
      return liveView(await liveLoad);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && error.code === 'unknown_user') {
        grid.hidden = true;
        return emptyState(
          `No usage recorded for “${userId}”.`,
          'User ids are matched exactly (case included). Pick a user from the ',
          h('a', { href: hashOf('/users') }, 'Users table'),
          '.',
        );
      }
      throw error;
    }
  });

  void fill(ctx, summary.body, 'Summary', async (progress) => summaryView(await ctx.api.get<Summary>(`${userPath}/summary`, range, options('summary', progress))));

  const series = ctx.api.get<{ series: SeriesPoint[] }>(`${userPath}/usage`, { ...range, interval: 'day' }, { signal: ctx.signal });
  // Both charts come from one query; a failure shows in both.
  void fill(ctx, requestsChart.body, 'Requests per day', async () => {
    const points = perDay((await series).series, from, to);
    return barChart(
      points.map((p) => ({ label: p.day.slice(5), key: p.day, value: p.requests, title: `${p.day}: ${formatCount(p.requests)} requests, ${formatCount(p.errors)} errors` })),
      { label: `Requests per day, ${from} to ${to}`, format: (v) => formatCount(Math.round(v)), emptyText: `No requests in the last ${CHART_DAYS} days`, width: chartWidth(innerWidth) },
    );
  });
  void fill(ctx, costChart.body, 'Cost per day', async () => {
    const points = perDay((await series).series, from, to);
    return barChart(
      points.map((p) => ({ label: p.day.slice(5), key: p.day, value: p.cost_usd, title: `${p.day}: ${formatUsd(p.cost_usd)}` })),
      { label: `Cost per day, ${from} to ${to}`, format: formatUsdAxis, emptyText: `No cost in the last ${CHART_DAYS} days`, width: chartWidth(innerWidth) },
    );
  });

  void fill(ctx, byModel.body, 'Models', async (progress) => {
    const answer = await ctx.api.get<{ groups: UsageGroup[] }>('/usage', { ...range, group_by: 'model', user_id: userId, limit: 100 }, options('models', progress));
    return breakdownTable(answer.groups, 'Model', 'By model');
  });

  const recentLoad = (async () => {
    const detail = await liveLoad;
    const day = detail.last_active.slice(0, 10);
    const exported = await ctx.api.exportEvents({ from: day, to: day, user_id: userId, format: 'ndjson' }, { signal: ctx.signal });
    return { day, exported, requests: exported.kind === 'events' ? parseRecent(exported.text) : null };
  })();
  void fill(ctx, recent.body, 'Recent requests', async (progress) => {
    progress('Loading recent requests…');
    const { day, exported, requests } = await recentLoad;
    if (requests !== null) return recentView(requests, day);
    return exportFilesView(exported as Extract<ExportAnswer, { kind: 'files' }>, day);
  });

  // Property names are not listed by the API: those in the recent requests are shown, and any other can be asked for.
  const shown = new Set<string>();
  const properties = h('div', { class: 'properties' });
  const addProperty = (name: string): void => {
    const key = name.trim().toLowerCase();
    if (!/^[a-z0-9_-]{1,64}$/.test(key) || shown.has(key)) return;
    shown.add(key);
    const body = h('div');
    properties.append(h('div', { class: 'property', 'data-property': key }, h('h3', null, key), body));
    void fill(ctx, body, `Property ${key}`, async (progress) => {
      const answer = await ctx.api.get<{ groups: UsageGroup[] }>('/usage', { ...range, group_by: `property:${key}`, user_id: userId, limit: 100 }, options(`property ${key}`, progress));
      return breakdownTable(answer.groups, 'Value', `By ${key}`);
    });
  };
  const nameInput = h('input', { type: 'text', name: 'property', placeholder: 'property name, e.g. plan', 'aria-label': 'Property name', pattern: '[A-Za-z0-9_-]{1,64}', required: true });
  const propertyForm = h(
    'form',
    {
      class: 'property-form',
      onsubmit: (event: Event) => {
        event.preventDefault();
        addProperty(nameInput.value);
        nameInput.value = '';
      },
    },
    nameInput,
    h('button', { type: 'submit' }, 'Break down'),
  );
  const propertyStatus = h('div');
  show(byProperty.body, propertyStatus, properties, propertyForm);
  void fill(ctx, propertyStatus, 'Properties', async () => {
    const { requests } = await recentLoad;
    const names = [...new Set((requests ?? []).flatMap((r) => Object.keys(r.properties ?? {})))].sort();
    names.forEach(addProperty);
    if (names.length > 0) return null;
    return emptyState(
      requests === null ? 'Recent requests are delivered as files here, so no property was found in them.' : 'No custom properties in the recent requests.',
      'Type a property name below to break this user’s usage down by it. Properties come from ',
      h('code', null, 'Helicone-Property-<Name>'),
      ' headers, for example ',
      h('code', null, 'Helicone-Property-Plan: premium'),
      '.',
    );
  });
}

function exportFilesView(exported: Extract<ExportAnswer, { kind: 'files' }>, day: string): Child[] {
  if (exported.files.length === 0) return [emptyState(`No requests found on ${day}.`)];
  return [
    h(
      'p',
      { class: 'note' },
      `This gateway exports events as files (${exported.format}${exported.compression === 'gzip' ? ', gzip' : ''}), which this page cannot read. Download the requests of ${day}, the user’s last active day; the links work until ${formatTime(exported.expires_at)} UTC.`,
    ),
    h(
      'ul',
      { class: 'files' },
      exported.files.map((file, i) => h('li', null, h('a', { href: file.url, rel: 'noreferrer' }, `File ${i + 1}`), file.bytes === null ? null : ` (${formatCount(file.bytes)} bytes)`)),
    ),
  ];
}

function perDay(series: readonly SeriesPoint[], from: string, to: string): Array<{ day: string; requests: number; errors: number; cost_usd: number }> {
  const byDay = new Map<string, { requests: number; errors: number; cost_usd: number }>();
  for (const point of series) {
    const day = point.bucket.slice(0, 10);
    const total = byDay.get(day) ?? { requests: 0, errors: 0, cost_usd: 0 };
    byDay.set(day, { requests: total.requests + point.requests, errors: total.errors + point.errors, cost_usd: total.cost_usd + point.cost_usd });
  }
  return daysOf(from, to).map((day) => ({ day, ...(byDay.get(day) ?? { requests: 0, errors: 0, cost_usd: 0 }) }));
}

function liveView(detail: LiveUserDetail): Child[] {
  const card = (name: string, totals: LiveTotals, key: string) =>
    stat(name, formatUsd(totals.cost_usd), `${formatCount(totals.requests)} requests · ${formatCount(totals.total_tokens)} tokens`, key);
  return [
    card('Today', detail.today, 'today'),
    card('This month', detail.month, 'month'),
    card('All time', detail.all_time, 'all-time'),
    stat('Active', formatTime(detail.last_active), `first seen ${formatTime(detail.first_active)}`, 'active'),
  ];
}

function summaryView(s: Summary): Child {
  const fields: Array<[string, string, string]> = [
    ['total_requests', 'Requests', formatCount(s.total_requests)],
    ['total_cost', 'Cost', formatUsd(s.total_cost)],
    ['total_prompt_tokens', 'Prompt tokens', formatCount(s.total_prompt_tokens)],
    ['total_completion_tokens', 'Completion tokens', formatCount(s.total_completion_tokens)],
    ['active_for', 'Active days', formatCount(s.active_for)],
    ['first_active', 'First active (UTC)', formatTime(s.first_active)],
    ['last_active', 'Last active (UTC)', formatTime(s.last_active)],
    ['average_requests_per_day_active', 'Requests per active day', s.average_requests_per_day_active.toFixed(1)],
    ['average_tokens_per_request', 'Tokens per request', s.average_tokens_per_request.toFixed(1)],
    ['rate_limited_count', 'Rate limited', formatCount(s.rate_limited_count)],
    ['error_rate', 'Error rate', formatPercent(s.error_rate)],
  ];
  if (s.total_requests === 0) return emptyState(`No requests in the last ${CHART_DAYS} days.`, 'The live totals above include older usage.');
  return h('dl', { class: 'fields' }, fields.map(([key, name, value]) => h('div', { 'data-field': key }, h('dt', null, name), h('dd', null, value))));
}

function breakdownTable(groups: readonly UsageGroup[], label: string, caption: string): Child {
  if (groups.length === 0) return emptyState(`No requests in the last ${CHART_DAYS} days.`);
  const total = groups.reduce((sum, g) => sum + g.cost_usd, 0);
  return table(
    [
      { label, key: 'group', cell: (g) => g.group ?? '(none)' },
      { label: 'Requests', key: 'requests', numeric: true, cell: (g) => formatCount(g.requests) },
      { label: 'Tokens', key: 'total_tokens', numeric: true, cell: (g) => formatCount(g.total_tokens) },
      { label: 'Cost', key: 'cost_usd', numeric: true, cell: (g) => formatUsd(g.cost_usd) },
      { label: 'Share', key: 'share', numeric: true, cell: (g) => (total > 0 ? formatPercent(g.cost_usd / total) : '—') },
    ],
    groups,
    { label: caption, rowKey: (g) => g.group },
  );
}

/** The newest requests of an NDJSON export, newest first. */
export function parseRecent(ndjson: string, count = RECENT_REQUESTS): RecentRequest[] {
  return ndjson
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as RecentRequest)
    .sort((a, b) => (a.ts < b.ts ? 1 : a.ts > b.ts ? -1 : 0))
    .slice(0, count);
}

function recentView(requests: readonly RecentRequest[], day: string): Child[] {
  if (requests.length === 0) return [emptyState(`No requests found on ${day}.`)];
  return [
    h('p', { class: 'note' }, `The latest ${requests.length} requests of ${day}, the user’s last active day (UTC).`),
    table(
      [
        { label: 'Time (UTC)', key: 'ts', cell: (r) => h('span', { title: `${r.ts} · ${r.request_id}` }, r.ts.slice(11, 19)) },
        { label: 'Model', key: 'model', cell: (r) => r.model ?? '—' },
        { label: 'Status', key: 'status', numeric: true, cell: (r) => h('span', { class: r.status >= 400 || r.error ? 'bad' : null, title: r.error ?? null }, String(r.status)) },
        { label: 'Tokens', key: 'total_tokens', numeric: true, cell: (r) => formatCount(r.total_tokens) },
        { label: 'Cost', key: 'cost_usd', numeric: true, cell: (r) => (r.cost_usd === null ? 'unpriced' : formatUsd(r.cost_usd)) },
        { label: 'Latency', key: 'latency_ms', numeric: true, cell: (r) => formatMs(r.latency_ms) },
        { label: 'Path', key: 'path', cell: (r) => h('code', null, `${r.path}${r.stream ? ' (stream)' : ''}`) },
        {
          label: 'Properties',
          key: 'properties',
          cell: (r) =>
            Object.entries(r.properties ?? {})
              .map(([name, value]) => `${name}=${value}`)
              .join(', ') || '—',
        },
      ],
      requests,
      { label: 'Most recent requests', rowKey: (r) => r.request_id },
    ),
  ];
}
