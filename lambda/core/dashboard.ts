/**
 * Serves the usage dashboard under `/dashboard`: a static page, one script and one stylesheet, built from
 * `dashboard/` by `bin/build-dashboard.ts` and compiled in as strings, so the same handler serves them from the
 * local server and from the metrics Lambda. The files hold no data: everything shown comes from the metrics API,
 * which checks the metrics key on each call, so the files themselves are served without auth.
 */
import { createHash } from 'node:crypto';
import { DASHBOARD_ASSETS, DASHBOARD_VERSION } from './dashboard-assets.generated';
import { MethodNotAllowedError, NotFoundError, errorResponse } from './errors';
import type { FetchHandler } from './handler';

/** The dashboard's path prefix. */
export const DASHBOARD_PATH = '/dashboard';

/**
 * The page's Content-Security-Policy: its own script and stylesheet only (no inline script or style, nothing
 * from elsewhere), API calls to its own origin, no framing.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export interface DashboardAsset {
  readonly contentType: string;
  readonly body: string;
}

export interface DashboardOptions {
  /** The files by path under `/dashboard/`. @default the generated DASHBOARD_ASSETS */
  readonly assets?: Readonly<Record<string, DashboardAsset>>;
  /** Content hash the page puts in its asset addresses (`?v=`). @default DASHBOARD_VERSION */
  readonly version?: string;
}

/** True for `/dashboard` and everything under `/dashboard/`. */
export function isDashboardPath(pathname: string): boolean {
  return pathname === DASHBOARD_PATH || pathname.startsWith(`${DASHBOARD_PATH}/`);
}

const SECURITY_HEADERS = {
  'content-security-policy': DASHBOARD_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
} as const;

/**
 * Creates the dashboard handler for `/dashboard` and `/dashboard/*`.
 *
 * - `/dashboard` redirects to `/dashboard/` with a relative `Location`, so it also works under an API Gateway
 *   stage prefix (`/prod/dashboard` → `/prod/dashboard/`), and the page's relative asset addresses resolve.
 * - `/dashboard/` (and `index.html`) is the page, revalidated on every load (`no-cache` + ETag).
 * - `app.js` and `app.css` asked for with the current `?v=<hash>` are cached for a year (`immutable`); without
 *   it, or with an old hash, they are revalidated.
 *
 * @example createGateway({ proxy, metrics, extra: { '/dashboard': createDashboard() } })
 */
export function createDashboard(options: DashboardOptions = {}): FetchHandler {
  const assets = options.assets ?? DASHBOARD_ASSETS;
  const version = options.version ?? DASHBOARD_VERSION;
  const etags = new Map(Object.entries(assets).map(([name, asset]) => [name, `"${createHash('sha256').update(asset.body).digest('base64url').slice(0, 22)}"`]));

  return async (request) => {
    const url = new URL(request.url);
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      return withSecurityHeaders(errorResponse(new MethodNotAllowedError('method_not_allowed', 'Use GET.', { headers: { allow: 'GET, HEAD' } })));
    }
    if (url.pathname === DASHBOARD_PATH) {
      return new Response(null, { status: 301, headers: { location: `dashboard/${url.search}`, 'cache-control': 'no-cache', ...SECURITY_HEADERS } });
    }
    // The gateway routes only /dashboard paths here; anything else is not a dashboard file either.
    const rest = isDashboardPath(url.pathname) ? url.pathname.slice(DASHBOARD_PATH.length + 1) : undefined;
    const name = rest === '' ? 'index.html' : rest;
    const asset = name !== undefined && Object.hasOwn(assets, name) ? assets[name] : undefined;
    if (name === undefined || asset === undefined) {
      return withSecurityHeaders(
        errorResponse(new NotFoundError('unknown_route', `No dashboard file ${url.pathname.slice(0, 200)}. The dashboard is at /dashboard/.`)),
      );
    }
    const etag = etags.get(name)!;
    const cacheControl = name !== 'index.html' && url.searchParams.get('v') === version ? 'public, max-age=31536000, immutable' : 'no-cache';
    const headers = { 'content-type': asset.contentType, 'cache-control': cacheControl, etag, ...SECURITY_HEADERS };
    if (ifNoneMatch(request.headers.get('if-none-match'), etag)) return new Response(null, { status: 304, headers });
    return new Response(request.method === 'HEAD' ? null : asset.body, { status: 200, headers });
  };
}

function ifNoneMatch(header: string | null, etag: string): boolean {
  if (header === null) return false;
  return header.split(',').some((tag) => {
    const t = tag.trim();
    return t === '*' || t === etag || t === `W/${etag}`;
  });
}

function withSecurityHeaders(response: Response): Response {
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) response.headers.set(name, value);
  return response;
}
