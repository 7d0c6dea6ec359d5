/**
 * The dashboard page: reads the page address (`#/`, `#/users`, `#/users/<id>`), draws that view, and shows the
 * metrics key form whenever the API asks for a key. The key lives in this tab's session storage only.
 */
import { ApiClient, ApiError, metricsBase } from './api';
import { h, show } from './dom';
import { utcDay } from './period';
import { RowsCache } from './period-rows';
import { emptyState, hashOf, type ViewContext } from './view';
import { renderOverview } from './views/overview';
import { renderUser } from './views/user';
import { renderUsers } from './views/users';

const api = new ApiClient({ base: metricsBase(location.pathname), storage: sessionStorage });
const rows = new RowsCache();
const main = document.getElementById('main')!;
const signOut = document.getElementById('sign-out') as HTMLButtonElement;
let current: AbortController | null = null;

function parseHash(hash: string): { path: string; params: URLSearchParams } {
  const raw = hash.replace(/^#/, '') || '/';
  const at = raw.indexOf('?');
  return { path: at < 0 ? raw : raw.slice(0, at), params: new URLSearchParams(at < 0 ? '' : raw.slice(at + 1)) };
}

function route(): void {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { path, params } = parseHash(location.hash);
  signOut.hidden = api.key === null;
  for (const link of document.querySelectorAll<HTMLAnchorElement>('nav.main a')) {
    const target = link.getAttribute('href') === '#/' ? path === '/' : path.startsWith('/users');
    if (target) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const ctx: ViewContext = {
    api,
    signal: controller.signal,
    params,
    today: utcDay(Date.now()),
    rows,
    requireKey: (error) => {
      if (controller.signal.aborted) return;
      controller.abort();
      keyForm(error);
    },
    go: (hash) => {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
    reload: route,
  };
  window.scrollTo(0, 0);
  if (path === '/') return renderOverview(main, ctx);
  if (path === '/users') return renderUsers(main, ctx);
  const user = /^\/users\/(.+)$/.exec(path);
  if (user) {
    let userId: string;
    try {
      userId = decodeURIComponent(user[1]!);
    } catch {
      userId = user[1]!;
    }
    return renderUser(main, ctx, userId);
  }
  show(main, emptyState('There is no such page.', h('a', { href: hashOf('/') }, 'Go to the overview'), '.'));
}

/** Asks for the metrics key; a refused key is forgotten at once. */
function keyForm(error: ApiError): void {
  const refused = error.code === 'invalid_metrics_key';
  api.setKey(null);
  rows.forget();
  signOut.hidden = true;
  const input = h('input', { type: 'password', name: 'key', id: 'metrics-key', required: true, autocomplete: 'off', spellcheck: 'false' });
  show(
    main,
    h(
      'section',
      { class: 'panel key-panel' },
      h('h1', null, 'Metrics key'),
      h(
        'p',
        null,
        'This gateway protects its metrics with a key. Enter a metrics key: locally one of ',
        h('code', null, 'METRICS_KEYS'),
        ', on AWS the admin key in Secrets Manager (the stack output ',
        h('code', null, 'AdminKeySecretName'),
        ').',
      ),
      refused ? h('p', { class: 'state error', role: 'alert' }, 'That key was refused. Check it and enter it again.') : null,
      h(
        'form',
        {
          class: 'key-form',
          onsubmit: (event: Event) => {
            event.preventDefault();
            const key = input.value.trim();
            if (key === '') return;
            api.setKey(key);
            route();
          },
        },
        h('label', { for: 'metrics-key' }, 'Metrics key'),
        input,
        h('button', { type: 'submit' }, 'Open dashboard'),
      ),
      h('p', { class: 'note' }, 'The key stays in this browser tab (session storage) and is sent only to this gateway’s metrics API; closing the tab forgets it.'),
    ),
  );
  input.focus();
}

signOut.addEventListener('click', () => {
  api.setKey(null);
  rows.forget();
  route();
});
window.addEventListener('hashchange', route);
route();
