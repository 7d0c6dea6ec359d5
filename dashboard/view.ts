/**
 * Pieces every view uses: the view context, panels with loading / empty / error / unavailable states that say
 * what to do, stat cards, simple tables and the period selector.
 */
import { ApiError, type ApiClient } from './api';
import { h, show, type Child } from './dom';
import { isDay, periodParams, rangeProblem, type PeriodChoice, type ResolvedPeriod } from './period';
import type { RowsCache } from './period-rows';

export interface ViewContext {
  readonly api: ApiClient;
  /** Aborted when the page moves to another view. */
  readonly signal: AbortSignal;
  /** Query parameters of the page address (`#/users?period=today` → `period=today`). */
  readonly params: URLSearchParams;
  /** Today, UTC. */
  readonly today: string;
  readonly rows: RowsCache;
  /** Swaps the view for the metrics key form. */
  requireKey(error: ApiError): void;
  /** Moves to another page address, e.g. `#/users?period=today`. */
  go(hash: string): void;
  /** Draws the current view again. */
  reload(): void;
}

/** A hash address with query parameters. */
export function hashOf(path: string, params: Readonly<Record<string, string>> = {}): string {
  const qs = new URLSearchParams(params).toString();
  return `#${path}${qs === '' ? '' : `?${qs}`}`;
}

/** The address of a user's page. */
export function userHash(userId: string): string {
  return `#/users/${encodeURIComponent(userId)}`;
}

export function loadingState(text: string): HTMLElement {
  return h('p', { class: 'state loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

export function emptyState(title: string, ...hint: Child[]): HTMLElement {
  return h('div', { class: 'state empty' }, h('p', { class: 'state-title' }, title), hint.length > 0 ? h('p', null, ...hint) : null);
}

/** What to tell the reader about a failed load. */
export function errorState(error: unknown, what: string, retry: (() => void) | null): HTMLElement {
  if (error instanceof ApiError && error.unavailable) {
    return h(
      'div',
      { class: 'state unavailable' },
      h('p', { class: 'state-title' }, `${what}: not available from this gateway.`),
      h('p', null, `The metrics API does not serve this (“${error.message}”). Update the gateway to a version with the history API to see it here.`),
    );
  }
  const message = error instanceof ApiError ? error.message : error instanceof Error ? error.message : String(error);
  const hint =
    error instanceof ApiError && error.status >= 500
      ? 'The gateway failed to answer. Retry in a moment; if it keeps failing, the gateway’s logs say why.'
      : error instanceof ApiError && error.status === 0
        ? ''
        : 'Retry; if it keeps failing, check the gateway’s logs.';
  return h(
    'div',
    { class: 'state error', role: 'alert' },
    h('p', { class: 'state-title' }, `Could not load ${what.toLowerCase()}.`),
    h('p', null, message, hint === '' ? null : ` ${hint}`),
    retry === null ? null : h('button', { type: 'button', class: 'retry', onclick: retry }, 'Retry'),
  );
}

/**
 * Fills `target` with what `load` builds, showing a loading state first and an error state (with Retry) when it
 * fails. A missing or refused key switches the whole view to the key form. Nothing happens once the view is gone.
 */
export function fill(ctx: ViewContext, target: Element, what: string, load: (progress: (text: string) => void) => Promise<Child | Child[]>): Promise<void> {
  const run = async (): Promise<void> => {
    show(target, loadingState(`Loading ${what.toLowerCase()}…`));
    const progress = (text: string) => {
      if (!ctx.signal.aborted) show(target, loadingState(text));
    };
    try {
      const content = await load(progress);
      if (!ctx.signal.aborted) show(target, ...(Array.isArray(content) ? content : [content]));
    } catch (error) {
      if (ctx.signal.aborted) return;
      if (error instanceof ApiError && error.needsKey) return ctx.requireKey(error);
      show(target, errorState(error, what, () => void run()));
    }
  };
  return run();
}

/** Tells the reader that a long history query is still running. */
export function waitingText(what: string): (seconds: number) => string {
  return (seconds) => `Loading ${what.toLowerCase()}… the query has run ${seconds} s (history queries on AWS can take a while).`;
}

/** A titled panel; returns the panel and the element to fill. */
export function panel(title: string, options: { id?: string; wide?: boolean; note?: Child } = {}): { root: HTMLElement; body: HTMLElement } {
  const body = h('div', { class: 'panel-body' });
  const root = h(
    'section',
    { class: options.wide ? 'panel wide' : 'panel', id: options.id },
    h('h2', null, title),
    options.note ? h('p', { class: 'note' }, options.note) : null,
    body,
  );
  return { root, body };
}

/** A big number with its name. */
export function stat(name: string, value: string, detail?: Child, key?: string): HTMLElement {
  return h('div', { class: 'stat', 'data-stat': key }, h('div', { class: 'stat-name' }, name), h('div', { class: 'stat-value' }, value), detail ? h('div', { class: 'stat-detail' }, detail) : null);
}

export interface TableColumn<T> {
  readonly label: string;
  readonly numeric?: boolean;
  readonly key?: string;
  cell(row: T): Child | readonly Child[];
}

/** A plain table that scrolls sideways inside its panel on narrow screens. */
export function table<T>(columns: readonly TableColumn<T>[], rows: readonly T[], options: { label: string; rowKey?: (row: T) => string | null } = { label: '' }): HTMLElement {
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { 'aria-label': options.label },
      h('thead', null, h('tr', null, columns.map((c) => h('th', { class: c.numeric ? 'num' : null, scope: 'col' }, c.label)))),
      h(
        'tbody',
        null,
        rows.map((row) =>
          h(
            'tr',
            { 'data-key': options.rowKey?.(row) ?? null },
            columns.map((c) => h('td', { class: c.numeric ? 'num' : null, 'data-col': c.key ?? null }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/**
 * The period selector of the Overview and the Users table: today, this month, or a custom range of days.
 * Choosing one changes the page address, which reloads the view for that period.
 */
export function periodBar(ctx: ViewContext, path: string, period: ResolvedPeriod, extra: Readonly<Record<string, string>> = {}): HTMLElement {
  const choice = period.choice;
  const go = (next: PeriodChoice) => ctx.go(hashOf(path, { ...periodParams(next), ...extra }));
  const button = (kind: 'today' | 'month' | 'custom', label: string) =>
    h(
      'button',
      {
        type: 'button',
        class: choice.kind === kind ? 'seg active' : 'seg',
        'aria-pressed': choice.kind === kind ? 'true' : 'false',
        'data-period': kind,
        onclick: () => {
          if (kind === 'custom') {
            form.hidden = false;
            fromInput.focus();
          } else go({ kind });
        },
      },
      label,
    );
  const fromInput = h('input', { type: 'date', name: 'from', required: true, value: period.from, max: ctx.today, 'aria-label': 'First day' });
  const toInput = h('input', { type: 'date', name: 'to', required: true, value: period.to, max: ctx.today, 'aria-label': 'Last day' });
  const problem = h('span', { class: 'form-problem', role: 'alert' });
  const form = h(
    'form',
    {
      class: 'range',
      onsubmit: (event: Event) => {
        event.preventDefault();
        const trouble = rangeProblem(fromInput.value, toInput.value);
        problem.textContent = trouble ?? '';
        if (trouble === null && isDay(fromInput.value) && isDay(toInput.value)) go({ kind: 'custom', from: fromInput.value, to: toInput.value });
      },
    },
    h('label', null, 'From ', fromInput),
    h('label', null, 'to ', toInput),
    h('button', { type: 'submit', class: 'apply' }, 'Apply'),
    problem,
  );
  form.hidden = choice.kind !== 'custom';
  return h(
    'div',
    { class: 'period-bar' },
    h('div', { class: 'segmented', role: 'group', 'aria-label': 'Period' }, button('today', 'Today'), button('month', 'This month'), button('custom', 'Custom range')),
    form,
    h('span', { class: 'period-label', 'data-period-label': '' }, period.label),
  );
}

/** Loads the view's numbers again (the period's users are otherwise kept for the session). */
export function refreshButton(ctx: ViewContext): HTMLElement {
  return h(
    'button',
    {
      type: 'button',
      class: 'refresh',
      title: 'Load the numbers again',
      onclick: () => {
        ctx.rows.forget();
        ctx.reload();
      },
    },
    'Refresh',
  );
}
