/**
 * The dashboard's client of the metrics API: finds the API next to the page (so it works under an API Gateway
 * stage prefix such as `/prod`), sends the metrics key from session storage, turns JSON errors into
 * {@link ApiError}, and follows history queries that answer 202 until their result is ready.
 */

/** Where the metrics key is kept: this tab's session storage only, never local storage or a cookie. */
export const KEY_STORAGE_NAME = 'llm-usage-gateway.metrics-key';

/**
 * The metrics API's base path for a page path: the dashboard and the API sit side by side under the same
 * prefix.
 * @example metricsBase('/prod/dashboard/') // '/prod/metrics'
 * @example metricsBase('/dashboard/')      // '/metrics'
 */
export function metricsBase(pathname: string): string {
  const at = pathname.lastIndexOf('/dashboard');
  return `${at < 0 ? '' : pathname.slice(0, at)}/metrics`;
}

/** An error answer of the metrics API, or a failure to reach it (`status` 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The metrics key is missing or was refused. */
  get needsKey(): boolean {
    return this.status === 401;
  }

  /** The route is not served by this gateway (an older version, or history not configured). */
  get unavailable(): boolean {
    return this.status === 404 && (this.code === 'unknown_route' || this.code === 'not_available');
  }
}

export interface KeyStorage {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

export interface RequestOptions {
  readonly signal?: AbortSignal;
  /** Told how long a history query has been running while it is polled. */
  readonly onWaiting?: (seconds: number) => void;
}

export interface ApiClientOptions {
  readonly base: string;
  readonly storage: KeyStorage;
  readonly fetch?: typeof fetch;
  /** Delay before the first poll of a running query; later polls back off to 5 s. @default 500 */
  readonly firstPollMs?: number;
  /** Give up on a running query after this long. @default 600000 */
  readonly maxWaitMs?: number;
}

/** What `GET /export` gave: the events themselves (NDJSON or CSV text), or links to the files holding them. */
export type ExportAnswer =
  | { readonly kind: 'events'; readonly text: string }
  | {
      readonly kind: 'files';
      readonly format: string;
      readonly compression: 'none' | 'gzip';
      readonly files: ReadonlyArray<{ readonly url: string; readonly bytes: number | null }>;
      readonly expires_at: string;
    };

type Params = Readonly<Record<string, string | number | undefined>>;

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

export class ApiClient {
  private readonly fetchFn: typeof fetch;

  constructor(private readonly options: ApiClientOptions) {
    this.fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
  }

  get key(): string | null {
    return this.options.storage.getItem(KEY_STORAGE_NAME);
  }

  setKey(key: string | null): void {
    if (key === null) this.options.storage.removeItem(KEY_STORAGE_NAME);
    else this.options.storage.setItem(KEY_STORAGE_NAME, key);
  }

  /** The address of a metrics route, e.g. `url('/users', { period: 'day' })`. */
  url(path: string, params: Params = {}): string {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) if (value !== undefined) query.set(name, String(value));
    const qs = query.toString();
    return `${this.options.base}${path}${qs === '' ? '' : `?${qs}`}`;
  }

  /** Path segment for a user id: percent-encoded, as the API expects. */
  static userPath(userId: string): string {
    return `/users/${encodeURIComponent(userId)}`;
  }

  /** GETs a JSON route; a 202 history query is polled at `/queries/{id}` until it is done. */
  async get<T>(path: string, params: Params = {}, options: RequestOptions = {}): Promise<T> {
    const response = await this.request(this.url(path, params), options.signal);
    const body = await this.parse(response);
    return (response.status === 202 ? await this.poll(body, options) : body) as T;
  }

  /**
   * Exports events (`GET /export`): locally the events come back in the answer; on AWS the export is written to
   * files that are downloaded through pre-signed links (after polling while it runs).
   */
  async exportEvents(params: Params, options: RequestOptions = {}): Promise<ExportAnswer> {
    const response = await this.request(this.url('/export', params), options.signal);
    const type = response.headers.get('content-type') ?? '';
    if (response.ok && response.status !== 202 && !type.startsWith('application/json')) return { kind: 'events', text: await response.text() };
    let body = await this.parse(response);
    if (response.status === 202) body = await this.poll(body, options);
    return { kind: 'files', ...(body as Omit<Extract<ExportAnswer, { kind: 'files' }>, 'kind'>) };
  }

  private async poll(running: unknown, options: RequestOptions): Promise<unknown> {
    const started = Date.now();
    let delay = this.options.firstPollMs ?? 500;
    for (;;) {
      const queryId = (running as { query_id?: unknown } | null)?.query_id;
      if (typeof queryId !== 'string') throw new ApiError(502, 'bad_answer', 'A running query came back without its id.');
      const waited = Date.now() - started;
      if (waited > (this.options.maxWaitMs ?? 600_000)) {
        throw new ApiError(504, 'query_timeout', `The query ran for over ${Math.round(waited / 60_000)} minutes; try a shorter range.`);
      }
      options.onWaiting?.(Math.round(waited / 1000));
      await sleep(delay, options.signal);
      delay = Math.min(delay * 1.5, 5000);
      // The API's result_url has no stage prefix; the query id is all that is needed.
      const response = await this.request(this.url(`/queries/${encodeURIComponent(queryId)}`), options.signal);
      const body = await this.parse(response);
      if (response.status !== 202) return body;
      running = body;
    }
  }

  private async request(url: string, signal: AbortSignal | undefined): Promise<Response> {
    const key = this.key;
    try {
      return await this.fetchFn(url, {
        headers: key === null ? {} : { authorization: `Bearer ${key}` },
        credentials: 'omit',
        signal,
      });
    } catch (error) {
      if (signal?.aborted) throw error;
      throw new ApiError(0, 'unreachable', 'The gateway could not be reached. Check that it is running and that this page’s address is right, then retry.');
    }
  }

  private async parse(response: Response): Promise<unknown> {
    let body: unknown;
    try {
      body = await response.json();
    } catch {
      throw new ApiError(response.status, 'bad_answer', `The gateway answered ${response.status} without JSON.`);
    }
    if (response.ok) return body;
    const error = (body as { error?: { message?: unknown; code?: unknown; param?: unknown } } | null)?.error;
    throw new ApiError(
      response.status,
      typeof error?.code === 'string' ? error.code : `http_${response.status}`,
      typeof error?.message === 'string' ? error.message : `The gateway answered ${response.status}.`,
      typeof error?.param === 'string' ? error.param : undefined,
    );
  }
}
