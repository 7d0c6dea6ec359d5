/**
 * The Users table: every user of the period with their totals; sortable by each column, searchable by user id,
 * 50 rows a page, exportable as CSV.
 */
import { h, show } from '../dom';
import { formatCount, formatTime, formatUsd, formatUserId } from '../format';
import { periodFromParams, resolvePeriod, type ResolvedPeriod } from '../period';
import type { PeriodRows } from '../period-rows';
import { emptyState, errorState, loadingState, periodBar, refreshButton, userHash, waitingText, type ViewContext } from '../view';
import { ApiError } from '../api';
import {
  COLUMNS,
  MISSING_COLUMNS,
  firstOrder,
  isAvailable,
  pageOf,
  searchRows,
  sortRows,
  usersCsv,
  type Column,
  type SortState,
  type UserRow,
} from '../users-model';

/** Table state kept while the tab is open, so coming back from a user's page finds the table as it was left. */
const state: { sort: SortState; search: string; page: number } = { sort: { key: 'cost_usd', order: 'desc' }, search: '', page: 0 };

export function renderUsers(main: HTMLElement, ctx: ViewContext): void {
  const period = resolvePeriod(periodFromParams(ctx.params), ctx.today);
  const body = h('div', { class: 'users-body' });
  show(main, h('div', { class: 'view-head' }, h('h1', null, 'Users'), refreshButton(ctx)), periodBar(ctx, '/users', period), body);
  show(body, loadingState('Loading users…'));
  ctx.rows.get(ctx.api, period, (seconds) => {
    if (!ctx.signal.aborted) show(body, loadingState(waitingText('users')(seconds)));
  }).then(
    (loaded) => {
      if (!ctx.signal.aborted) showTable(body, loaded, period);
    },
    (error: unknown) => {
      if (ctx.signal.aborted) return;
      if (error instanceof ApiError && error.needsKey) return ctx.requireKey(error);
      show(body, errorState(error, 'Users', () => renderUsers(main, ctx)));
    },
  );
}

function showTable(body: HTMLElement, loaded: PeriodRows, period: ResolvedPeriod): void {
  if (loaded.rows.length === 0) {
    show(
      body,
      emptyState(
        `No usage ${period.source === 'live-day' ? 'today' : 'in this period'}.`,
        'Requests show up here once they go through the gateway. Send one with a ',
        h('code', null, 'Helicone-User-Id'),
        ' header (see the README), or pick another period.',
      ),
    );
    return;
  }
  const source = period.source;
  const search = h('input', {
    type: 'search',
    class: 'search',
    placeholder: 'Search user id',
    'aria-label': 'Search by user id',
    value: state.search,
  });
  const count = h('span', { class: 'count', 'aria-live': 'polite' });
  const exportButton = h('button', { type: 'button', class: 'export' }, 'Export CSV');
  const tableWrap = h('div', { class: 'table-wrap' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const missing = COLUMNS.filter((c) => !isAvailable(source, c.key));
  const notes = h(
    'div',
    { class: 'notes' },
    loaded.truncated ? h('p', { class: 'note warn' }, `This period has more users than the ${formatCount(loaded.rows.length)} with the highest cost loaded here; sorting, search and export cover those.`) : null,
    missing.length > 0
      ? h(
          'p',
          { class: 'note', 'data-note': 'missing-columns' },
          `Not available for this period: ${missing.map((c) => c.label.replace(' (UTC)', '')).join(', ')}. `,
          MISSING_COLUMNS[source].reason,
        )
      : null,
  );

  const visibleRows = (): UserRow[] => sortRows(searchRows(loaded.rows, state.search), state.sort);

  const draw = (): void => {
    const rows = visibleRows();
    const page = pageOf(rows, state.page);
    state.page = page.index;
    count.textContent =
      state.search.trim() === ''
        ? `${formatCount(rows.length)} ${rows.length === 1 ? 'user' : 'users'}`
        : `${formatCount(rows.length)} of ${formatCount(loaded.rows.length)} users match`;
    if (rows.length === 0) {
      show(tableWrap, emptyState(`No user id contains “${state.search.trim()}”.`, 'Search matches any part of the id, ignoring case. Clear the search to see every user.'));
    } else {
      show(tableWrap, usersTable(page.items, source, onSort));
    }
    show(
      pager,
      h('button', { type: 'button', class: 'prev', disabled: page.index === 0, onclick: () => ((state.page = page.index - 1), draw()) }, '‹ Previous'),
      h('span', { class: 'page-of' }, `Page ${page.index + 1} of ${page.count}`),
      h('button', { type: 'button', class: 'next', disabled: page.index >= page.count - 1, onclick: () => ((state.page = page.index + 1), draw()) }, 'Next ›'),
    );
    pager.hidden = page.count <= 1;
    exportButton.disabled = rows.length === 0;
  };

  const onSort = (column: Column): void => {
    state.sort = state.sort.key === column.key ? { key: column.key, order: state.sort.order === 'asc' ? 'desc' : 'asc' } : { key: column.key, order: firstOrder(column.key) };
    state.page = 0;
    draw();
  };

  search.addEventListener('input', () => {
    state.search = search.value;
    state.page = 0;
    draw();
  });
  exportButton.addEventListener('click', () => {
    const csv = usersCsv(visibleRows(), source);
    const blob = new Blob([csv], { type: 'text/csv;charset=utf-8' });
    const href = URL.createObjectURL(blob);
    const link = h('a', { href, download: `users_${period.from}_${period.to}.csv`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10_000);
  });
  if (!isAvailable(source, state.sort.key)) state.sort = { key: 'cost_usd', order: 'desc' };
  show(body, h('div', { class: 'toolbar' }, search, count, exportButton), notes, tableWrap, pager);
  draw();
}

function cellText(row: UserRow, column: Column): string {
  switch (column.key) {
    case 'user_id':
      return formatUserId(row.user_id);
    case 'cost_usd':
      return formatUsd(row.cost_usd);
    case 'first_active':
    case 'last_active':
      return formatTime(row[column.key]);
    default: {
      const value = row[column.key];
      return value === null ? '—' : formatCount(value);
    }
  }
}

function usersTable(rows: readonly UserRow[], source: PeriodRows['period']['source'], onSort: (column: Column) => void): HTMLElement {
  const header = COLUMNS.map((column) => {
    const available = isAvailable(source, column.key);
    const sorted = state.sort.key === column.key;
    const ariaSort = sorted ? (state.sort.order === 'asc' ? 'ascending' : 'descending') : null;
    if (!available) {
      return h('th', { scope: 'col', class: `na${column.numeric ? ' num' : ''}`, 'data-col': column.key, title: MISSING_COLUMNS[source].reason }, column.label, h('span', { class: 'na-mark' }, ' n/a'));
    }
    return h(
      'th',
      { scope: 'col', class: column.numeric ? 'num' : null, 'data-col': column.key, 'aria-sort': ariaSort },
      h(
        'button',
        { type: 'button', class: 'sort', 'data-sort': column.key, onclick: () => onSort(column) },
        column.label,
        h('span', { class: 'sort-mark', 'aria-hidden': 'true' }, sorted ? (state.sort.order === 'asc' ? ' ▲' : ' ▼') : ''),
      ),
    );
  });
  const body = rows.map((row) =>
    h(
      'tr',
      { 'data-user-id': row.user_id, class: row.user_id === null ? 'no-user' : null },
      COLUMNS.map((column) => {
        const text = cellText(row, column);
        const available = isAvailable(source, column.key);
        const content =
          column.key === 'user_id' && row.user_id !== null
            ? h('a', { href: userHash(row.user_id) }, text)
            : column.key === 'cost_usd' && row.unpriced_requests > 0
              ? [text, h('span', { class: 'unpriced', title: `${row.unpriced_requests} requests used models without a known price; their cost is not included.` }, ' *')]
              : text;
        return h(
          'td',
          {
            'data-col': column.key,
            class: [column.numeric ? 'num' : '', available ? '' : 'na', column.key === 'user_id' ? 'user' : ''].join(' ').trim() || null,
            title: available ? null : MISSING_COLUMNS[source].reason,
          },
          content,
        );
      }),
    ),
  );
  return h('table', { class: 'users', 'aria-label': 'Users' }, h('thead', null, h('tr', null, header)), h('tbody', null, body));
}
