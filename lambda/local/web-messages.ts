/**
 * The `Request` the local server hands the core and the `Response` its upstream client hands back: the interfaces
 * of the runtime's own, without the cost of building them. Node's constructors spend tens of microseconds per
 * message on WebIDL conversions, header copies and (for a request) a second abort signal that follows the given one
 * through a weak reference and a finalization registry; at a thousand requests a second that is a measurable share
 * of the server's one thread.
 *
 * What the core reads on every request (status or method and URL, headers, signal, the body stream) is carried as
 * given. Every other use (`text()`, `json()`, `clone()`…) is served by a standard `Request` or `Response` made on
 * first use over the same body stream, so it behaves exactly like one; from then on `body` and `bodyUsed` are that
 * object's.
 */

/** The body members both share: the stream as given until a standard object takes it over. */
abstract class StreamBody<Standard extends Request | Response> {
  private standardMessage: Standard | undefined;

  constructor(protected readonly stream: ReadableStream<Uint8Array> | null) {}

  get body(): ReadableStream<Uint8Array> | null {
    return this.standardMessage === undefined ? this.stream : this.standardMessage.body;
  }

  get bodyUsed(): boolean {
    // A body stream is locked from its first read on; the core never releases a reader it took.
    return this.standardMessage === undefined ? this.stream !== null && this.stream.locked : this.standardMessage.bodyUsed;
  }

  // async: a body that cannot be read any more is a rejected promise, as with the standard object, not a throw.
  async arrayBuffer(): Promise<ArrayBuffer> {
    return this.standard().arrayBuffer();
  }
  async blob(): Promise<Blob> {
    return this.standard().blob();
  }
  async bytes(): Promise<Uint8Array> {
    return (this.standard() as Standard & { bytes(): Promise<Uint8Array> }).bytes();
  }
  async formData(): Promise<FormData> {
    return this.standard().formData();
  }
  async json(): Promise<unknown> {
    return this.standard().json();
  }
  async text(): Promise<string> {
    return this.standard().text();
  }

  /** The standard object over the same fields and body; made once. */
  protected standard(): Standard {
    this.standardMessage ??= this.makeStandard();
    return this.standardMessage;
  }

  protected abstract makeStandard(): Standard;
}

/** A request as node:http parsed it, for the core. */
export class NodeRequest extends StreamBody<Request> implements Request {
  /**
   * @param url absolute URL (already parsed)
   * @param method a method a `Request` can carry (not CONNECT, TRACE or TRACK), as node:http parsed it
   * @param body null for GET and HEAD
   */
  constructor(
    readonly url: string,
    readonly method: string,
    readonly headers: Headers,
    readonly signal: AbortSignal,
    body: ReadableStream<Uint8Array> | null,
  ) {
    super(body);
  }

  get cache(): Request['cache'] {
    return 'default';
  }
  get credentials(): Request['credentials'] {
    return 'same-origin';
  }
  get destination(): Request['destination'] {
    return '';
  }
  get integrity(): string {
    return '';
  }
  get keepalive(): boolean {
    return false;
  }
  get mode(): Request['mode'] {
    return 'cors';
  }
  get redirect(): Request['redirect'] {
    return 'follow';
  }
  get referrer(): string {
    return 'about:client';
  }
  get referrerPolicy(): Request['referrerPolicy'] {
    return '';
  }
  get duplex(): 'half' {
    return 'half';
  }
  get [Symbol.toStringTag](): string {
    return 'Request';
  }

  clone(): Request {
    return this.standard().clone();
  }

  protected makeStandard(): Request {
    return new Request(this.url, {
      method: this.method,
      headers: this.headers,
      body: this.stream,
      signal: this.signal,
      // Required by Node's fetch for a streamed request body.
      duplex: 'half',
    } as RequestInit);
  }
}

/** An upstream's answer as node:http received it, for the core. */
export class NodeResponse extends StreamBody<Response> implements Response {
  /**
   * @param status 200–599
   * @param body null for a status or method whose answer has none
   */
  constructor(
    readonly url: string,
    readonly status: number,
    readonly statusText: string,
    readonly headers: Headers,
    body: ReadableStream<Uint8Array> | null,
  ) {
    super(body);
  }

  get ok(): boolean {
    return this.status >= 200 && this.status <= 299;
  }
  get redirected(): boolean {
    return false;
  }
  get type(): Response['type'] {
    return 'basic';
  }
  get [Symbol.toStringTag](): string {
    return 'Response';
  }

  clone(): Response {
    return this.standard().clone();
  }

  protected makeStandard(): Response {
    return new Response(this.stream, { status: this.status, statusText: this.statusText, headers: this.headers });
  }
}
