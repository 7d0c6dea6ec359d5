/**
 * The Overview: the period's total cost and requests, active users, how cost spreads across users, the top
 * users, and today's anomalies with the rule that flagged each.
 */
import { ApiError } from '../api';
import { barChart, chartWidth } from '../charts';
import { h, show, type Child } from '../dom';
import { formatCount, formatPercent, formatUsd, formatUserId } from '../format';
import { periodFromParams, resolvePeriod } from '../period';
import type { PeriodRows } from '../period-rows';
import { emptyState, errorState, fill, loadingState, panel, periodBar, refreshButton, stat, table, userHash, waitingText, type ViewContext } from '../view';
import { sortRows, type UserRow } from '../users-model';

const TOP_USERS = 10;

export function renderOverview(main: HTMLElement, ctx: ViewContext): void {
  const period = resolvePeriod(periodFromParams(ctx.params), ctx.today);
  const stats = h('div', { class: 'stats', 'aria-live': 'polite' });
  const distribution = panel('Cost per user', { id: 'distribution', note: 'How cost spreads across the users active in the period.' });
  const top = panel('Top users by cost', { id: 'top-users' });
  const anomalies = panel(`Today’s anomalies (${ctx.today})`, {
    id: 'anomalies',
    wide: true,
    note: 'Users whose usage today stands far above their own recent baseline or their cohort.',
  });
  show(
    main,
    h('div', { class: 'view-head' }, h('h1', null, 'Overview'), refreshButton(ctx)),
    periodBar(ctx, '/', period),
    stats,
    h('div', { class: 'grid' }, distribution.root, top.root, anomalies.root),
  );

  show(stats, loadingState('Loading totals…'));
  show(top.body, loadingState('Loading users…'));
  ctx.rows.get(ctx.api, period, (seconds) => {
    if (!ctx.signal.aborted) show(stats, loadingState(waitingText('totals')(seconds)));
  }).then(
    (loaded) => {
      if (ctx.signal.aborted) return;
      if (loaded.rows.length === 0) {
        show(
          stats,
          emptyState(
            `No usage ${period.source === 'live-day' ? 'today' : 'in this period'}.`,
            'Point the OpenAI SDK at this gateway’s ',
            h('code', null, '/v1'),
            ' and name the end user with a ',
            h('code', null, 'Helicone-User-Id'),
            ' header (see the README); its requests show up here. Or pick another period.',
          ),
        );
      } else show(stats, ...totals(loaded));
      show(top.body, topUsers(loaded, ctx));
    },
    (error: unknown) => {
      if (ctx.signal.aborted) return;
      if (error instanceof ApiError && error.needsKey) return ctx.requireKey(error);
      show(stats, errorState(error, 'Totals', () => ctx.reload()));
      show(top.body);
    },
  );

  void fill(ctx, distribution.body, 'Cost distribution', async (progress) => {
    const answer = await ctx.api.get<DistributionAnswer>('/distribution', { from: period.from, to: period.to, metric: 'cost' }, { signal: ctx.signal, onWaiting: (s) => progress(waitingText('cost distribution')(s)) });
    return distributionView(answer);
  });
  void fill(ctx, anomalies.body, 'Anomalies', async (progress) => {
    const answer = await ctx.api.get<AnomaliesAnswer>('/anomalies', { date: ctx.today }, { signal: ctx.signal, onWaiting: (s) => progress(waitingText('anomalies')(s)) });
    return anomaliesView(answer);
  });
}

function totals(loaded: PeriodRows): HTMLElement[] {
  const rows = loaded.rows;
  const sum = (pick: (r: UserRow) => number) => rows.reduce((total, r) => total + pick(r), 0);
  const cost = sum((r) => r.cost_usd);
  const requests = sum((r) => r.requests);
  const errors = sum((r) => r.errors);
  const unpriced = sum((r) => r.unpriced_requests);
  const users = rows.filter((r) => r.user_id !== null && r.requests > 0);
  const active = users.length;
  const usersCost = users.reduce((total, r) => total + r.cost_usd, 0);
  const noUser = rows.find((r) => r.user_id === null);
  const partial = loaded.truncated ? ` (the ${formatCount(rows.length)} highest-cost users)` : '';
  return [
    stat('Total cost', formatUsd(cost), unpriced > 0 ? `${formatCount(unpriced)} requests of unpriced models not included${partial}` : partial || null, 'cost'),
    stat('Requests', formatCount(requests), noUser ? `${formatCount(noUser.requests)} without a user id` : null, 'requests'),
    stat('Active users', formatCount(active), active > 0 ? `${formatUsd(usersCost / active)} per user on average` : null, 'active-users'),
    stat('Errors', formatCount(errors), requests > 0 ? `${formatPercent(errors / requests)} of requests` : null, 'errors'),
  ];
}

function topUsers(loaded: PeriodRows, ctx: ViewContext): HTMLElement {
  const rows = sortRows(loaded.rows.filter((r) => r.user_id !== null), { key: 'cost_usd', order: 'desc' }).slice(0, TOP_USERS);
  if (rows.length === 0) {
    return emptyState('No users in this period.', 'Requests with a ', h('code', null, 'Helicone-User-Id'), ' header (or the OpenAI ', h('code', null, 'user'), ' field) show up here.');
  }
  const total = loaded.rows.reduce((sum, r) => sum + r.cost_usd, 0);
  return h(
    'div',
    null,
    table(
      [
        { label: 'User', key: 'user_id', cell: (r) => h('a', { href: userHash(r.user_id!) }, r.user_id!) },
        { label: 'Cost', key: 'cost_usd', numeric: true, cell: (r) => formatUsd(r.cost_usd) },
        { label: 'Share', key: 'share', numeric: true, cell: (r) => (total > 0 ? formatPercent(r.cost_usd / total) : '—') },
        { label: 'Requests', key: 'requests', numeric: true, cell: (r) => formatCount(r.requests) },
      ],
      rows,
      { label: 'Top users by cost', rowKey: (r) => r.user_id },
    ),
    h('p', { class: 'more' }, h('a', { href: `#/users?${ctx.params.toString()}` }, 'All users →')),
  );
}

// ─── Cost distribution ──────────────────────────────────────────────────────────────────────────────────────────

/** `GET /metrics/distribution?metric=cost`: percentiles are null when no user had usage. */
export interface DistributionAnswer {
  readonly users: number;
  readonly total: number;
  readonly p50: number | null;
  readonly p75: number | null;
  readonly p90: number | null;
  readonly p95: number | null;
  readonly p99: number | null;
  readonly max: number | null;
  readonly histogram: ReadonlyArray<{ readonly lower: number; readonly upper: number; readonly users: number }>;
}

const PERCENTILES = ['p50', 'p75', 'p90', 'p95', 'p99', 'max'] as const;

function distributionView(d: DistributionAnswer): Child[] {
  if (d.users === 0) return [emptyState('No user had usage in this period.', 'Pick another period, or send requests with a user id.')];
  return [
    h(
      'dl',
      { class: 'percentiles' },
      PERCENTILES.map((name) => h('div', { 'data-percentile': name }, h('dt', null, name), h('dd', null, d[name] === null ? '—' : formatUsd(d[name]!)))),
    ),
    barChart(
      d.histogram.map((bin) => ({
        label: formatUsd(bin.lower),
        value: bin.users,
        title: `${formatUsd(bin.lower)} to ${formatUsd(bin.upper)}: ${formatCount(bin.users)} ${bin.users === 1 ? 'user' : 'users'}`,
        key: String(bin.lower),
      })),
      { label: 'Users by cost', format: (v) => formatCount(Math.round(v)), width: chartWidth(innerWidth) },
    ),
    h('p', { class: 'note' }, `${formatCount(d.users)} users; bars count the users whose cost falls in each range.`),
  ];
}

// ─── Anomalies ──────────────────────────────────────────────────────────────────────────────────────────────────

/** One user flagged on a day, as `GET /metrics/anomalies` returns it. */
export interface Anomaly {
  readonly user_id: string | null;
  readonly cohort: string | null;
  readonly requests: number;
  readonly cost_usd: number;
  readonly baseline: { readonly days: number; readonly active_days: number; readonly requests_median: number; readonly cost_median_usd: number };
  readonly rules: ReadonlyArray<{ readonly rule: string; readonly metric: 'requests' | 'cost'; readonly value: number; readonly threshold: number; readonly baseline_median?: number }>;
}

export interface AnomaliesAnswer {
  readonly date: string;
  readonly cohort_property: string;
  readonly factor: number;
  readonly baseline_days: number;
  readonly anomalies: readonly Anomaly[];
}

/**
 * Why a rule fired, in words.
 * @example "cost $4.20 is over 3× the 14-day median of $0.80"
 */
export function anomalyReason(answer: Pick<AnomaliesAnswer, 'factor' | 'baseline_days' | 'cohort_property'>, anomaly: Anomaly, rule: Anomaly['rules'][number]): string {
  const show = (n: number) => (rule.metric === 'cost' ? formatUsd(n) : formatCount(n));
  const what = `${rule.metric} ${show(rule.value)}`;
  if (rule.rule === 'baseline') {
    if (anomaly.baseline.active_days === 0) return `${what}, with no usage in the previous ${answer.baseline_days} days`;
    return `${what} is over ${answer.factor}× the ${answer.baseline_days}-day median of ${show(rule.baseline_median ?? anomaly.baseline[rule.metric === 'cost' ? 'cost_median_usd' : 'requests_median'])} (threshold ${show(rule.threshold)})`;
  }
  if (rule.rule === 'cohort_p99') {
    const cohort = anomaly.cohort === null ? `users without a ${answer.cohort_property}` : `${answer.cohort_property} “${anomaly.cohort}” users`;
    return `${what} is above the p99 of ${cohort} (${show(rule.threshold)})`;
  }
  return `${what} is above ${show(rule.threshold)}`;
}

function anomaliesView(answer: AnomaliesAnswer): Child {
  if (answer.anomalies.length === 0) {
    return emptyState(
      'No anomalies today.',
      `No user’s usage today is over ${answer.factor}× their ${answer.baseline_days}-day median or above the p99 of their ${answer.cohort_property} cohort (small usage is not flagged).`,
    );
  }
  return table(
    [
      { label: 'User', key: 'user_id', cell: (a) => (a.user_id === null ? formatUserId(null) : h('a', { href: userHash(a.user_id) }, a.user_id)) },
      { label: 'Today', key: 'today', numeric: true, cell: (a) => `${formatCount(a.requests)} req · ${formatUsd(a.cost_usd)}` },
      { label: 'Rule', key: 'rule', cell: (a) => a.rules.map((r, i) => [i > 0 ? h('br') : null, h('code', null, r.rule)]).flat() },
      { label: 'Why', key: 'reason', cell: (a) => a.rules.map((r, i) => [i > 0 ? h('br') : null, anomalyReason(answer, a, r)]).flat() },
    ],
    answer.anomalies,
    { label: 'Anomalies today', rowKey: (a) => a.user_id },
  );
}
