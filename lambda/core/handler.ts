/**
 * The shape every runtime adapter drives: a fetch-style function from a Web `Request` to a Web `Response`.
 * The Lambda entries and the local Node server only translate their events or sockets to and from this.
 */

/** Lets the core schedule work that must finish after the response (metering) without delaying it. */
export interface ExecutionContext {
  /**
   * Registers work to finish after the response body has been sent. Adapters await every registered promise
   * before they consider the request done (the Lambda runtime freezes or ends the process otherwise).
   * The promise never rejects: failures are handled and logged where they happen.
   */
  waitUntil(promise: Promise<unknown>): void;
}

/**
 * Request header the API Gateway adapter sets to the part of the public path the function does not see (the
 * stage, e.g. `/prod`), so links the app hands out (`result_url`) work from the client's side.
 */
export const PATH_PREFIX_HEADER = 'x-forwarded-prefix';

export type FetchHandler = (request: Request, context: ExecutionContext) => Promise<Response>;

/**
 * An ExecutionContext that collects the promises, for adapters and tests.
 * @example const ctx = collectingContext(); const res = await handler(req, ctx); await res.text(); await ctx.settled();
 */
export function collectingContext(): ExecutionContext & { settled(): Promise<void> } {
  const pending = new Set<Promise<unknown>>();
  return {
    waitUntil(promise) {
      const tracked = promise.catch(() => undefined).finally(() => pending.delete(tracked));
      pending.add(tracked);
    },
    async settled() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
