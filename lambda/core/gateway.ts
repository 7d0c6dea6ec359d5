/**
 * The whole gateway as one fetch handler: the proxy under `/v1`, the metrics API under `/metrics`, and a
 * health check. Runtimes that split these (two Lambdas on AWS) use `createProxy` and `createMetricsApi` directly.
 */
import { MethodNotAllowedError, NotFoundError, errorResponse } from './errors';
import type { FetchHandler } from './handler';

export interface GatewayRoutes {
  readonly proxy: FetchHandler;
  readonly metrics: FetchHandler;
  /** Extra prefix routes, e.g. `{ '/dashboard': dashboardHandler }`. */
  readonly extra?: Readonly<Record<string, FetchHandler>>;
}

function startsWithSegment(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(prefix + '/');
}

/** Answers `GET /healthz`; only reachable once the runtime has opened its stores, so 200 means ready. */
export function healthCheck(request: Request): Response {
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    return errorResponse(new MethodNotAllowedError('method_not_allowed', 'Use GET.', { headers: { allow: 'GET, HEAD' } }));
  }
  return new Response(JSON.stringify({ status: 'ok' }), {
    status: 200,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
  });
}

/** Routes a request to the proxy, the metrics API or the health check. */
export function createGateway(routes: GatewayRoutes): FetchHandler {
  return async (request, context) => {
    const path = new URL(request.url).pathname;
    if (startsWithSegment(path, '/v1')) return routes.proxy(request, context);
    if (startsWithSegment(path, '/metrics')) return routes.metrics(request, context);
    if (path === '/healthz') return healthCheck(request);
    for (const [prefix, handler] of Object.entries(routes.extra ?? {})) {
      if (startsWithSegment(path, prefix)) return handler(request, context);
    }
    return errorResponse(new NotFoundError('unknown_route', `No route for ${path.slice(0, 200)}. The OpenAI API is under /v1.`));
  };
}
