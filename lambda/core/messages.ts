/**
 * Light `Request` and `Response` objects: the Web interfaces, without the cost of building the runtime's own. Node's
 * constructors spend tens of microseconds per message on WebIDL conversions, header copies, a Web stream for every
 * body (each made transferable between threads, whether or not it ever is) and, for a request, a second abort signal
 * that follows the given one through a weak reference; at a thousand requests a second that is a measurable share
 * of a server's one thread.
 *
 * The body is a {@link BodySource}: it becomes a Web stream only when someone asks for `body`, and is read whole
 * without one by `arrayBuffer()`. Every other use (`text()`, `json()`, `clone()`…) is served by a standard
 * `Request` or `Response` made on first use over the same body stream, so it behaves exactly like one; from then on
 * `body` and `bodyUsed` are that object's.
 *
 * Runtime-neutral (Web APIs only): the local server uses them for the requests it hands the core and the answers its
 * upstream client receives; the proxy for an answer it holds whole in memory.
 */

/** What a read gives: a chunk, or the end. */
export type ReadResult = { readonly done: false; readonly value: Uint8Array } | { readonly done: true; readonly value?: undefined };

/** The part of a `ReadableStreamDefaultReader` a body's consumer needs: one read at a time, or a cancel. */
export interface LightReader {
  read(): Promise<ReadResult>;
  cancel(reason?: unknown): Promise<void>;
}

/** A Web stream over a reader: pulls a chunk when its consumer wants one, passes a cancel on. */
export function streamOfReader(reader: LightReader): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const result = await reader.read();
      if (result.done) controller.close();
      else controller.enqueue(result.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/** Everything a reader has left, in one array. */
export async function readAll(reader: LightReader): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const result = await reader.read();
    if (result.done) break;
    chunks.push(result.value);
    size += result.value.byteLength;
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/** A message body, read one way or the other, once. */
export interface BodySource {
  /** The body as a Web stream. Called at most once, and never after {@link bytes}. */
  stream(): ReadableStream<Uint8Array>;
  /** The whole body. Called at most once, and never after {@link stream}. Rejects when the body breaks off. */
  bytes(): Promise<Uint8Array>;
  /** The whole body when it is already in memory. */
  readonly inMemory?: Uint8Array;
  /** A reader of the body without a Web stream, for a consumer that takes chunks as they come. */
  reader?(): LightReader;
}

/** A body read chunk by chunk through a reader. */
export function readerBody(reader: LightReader): BodySource {
  return { reader: () => reader, stream: () => streamOfReader(reader), bytes: () => readAll(reader) };
}

/** A body that is already in memory. */
export function bytesBody(bytes: Uint8Array): BodySource {
  return {
    inMemory: bytes,
    stream: () =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          if (bytes.byteLength > 0) controller.enqueue(bytes);
          controller.close();
        },
      }),
    bytes: async () => bytes,
  };
}

/** A body that is a Web stream already. */
export function streamBody(stream: ReadableStream<Uint8Array>): BodySource {
  return {
    stream: () => stream,
    bytes: async () => new Uint8Array(await new Response(stream).arrayBuffer()),
  };
}

/** An ArrayBuffer holding exactly these bytes (the view's own buffer when it is exactly that). */
function exactBuffer(bytes: Uint8Array): ArrayBuffer {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer) {
    return bytes.buffer;
  }
  return bytes.slice().buffer as ArrayBuffer;
}

/** The body members both share: the source as given until a standard object takes it over. */
abstract class LightBody<Standard extends Request | Response> {
  private standardMessage: Standard | undefined;
  private madeStream: ReadableStream<Uint8Array> | undefined;
  /** True once the body was read whole through the source. */
  private taken = false;

  constructor(private readonly source: BodySource | null) {}

  /** The body stream, made on first use. */
  protected get stream(): ReadableStream<Uint8Array> | null {
    if (this.source === null) return null;
    if (this.madeStream === undefined) {
      if (this.taken) {
        // Read already: like a standard body after arrayBuffer(), a stream that is locked and has nothing more.
        const used = new ReadableStream<Uint8Array>({ start: (controller) => controller.close() });
        used.getReader();
        this.madeStream = used;
      } else {
        this.madeStream = this.source.stream();
      }
    }
    return this.madeStream;
  }

  get body(): ReadableStream<Uint8Array> | null {
    return this.standardMessage === undefined ? this.stream : this.standardMessage.body;
  }

  get bodyUsed(): boolean {
    if (this.standardMessage !== undefined) return this.standardMessage.bodyUsed;
    // A body stream is locked from its first read on; the core never releases a reader it took.
    return this.taken || (this.madeStream !== undefined && this.madeStream.locked);
  }

  /**
   * The whole body when it is in memory and untouched, marking it used; undefined otherwise. For a server adapter
   * that can write it in one go instead of reading a stream.
   */
  takeInMemory(): Uint8Array | undefined {
    if (this.standardMessage !== undefined || this.madeStream !== undefined || this.taken) return undefined;
    const bytes = this.source?.inMemory;
    if (bytes !== undefined) this.taken = true;
    return bytes;
  }

  /**
   * A reader of the untouched body, without a Web stream, marking it used; undefined when the body was touched or
   * its source has no such reader (then read `body`).
   */
  takeReader(): LightReader | undefined {
    if (this.standardMessage !== undefined || this.madeStream !== undefined || this.taken) return undefined;
    const reader = this.source?.reader?.();
    if (reader !== undefined) this.taken = true;
    return reader;
  }

  // async: a body that cannot be read any more is a rejected promise, as with the standard object, not a throw.
  async arrayBuffer(): Promise<ArrayBuffer> {
    if (this.standardMessage === undefined && this.madeStream === undefined && !this.taken && this.source !== null) {
      this.taken = true;
      return exactBuffer(await this.source.bytes());
    }
    return this.standard().arrayBuffer();
  }
  async blob(): Promise<Blob> {
    return this.standard().blob();
  }
  async bytes(): Promise<Uint8Array> {
    return new Uint8Array(await this.arrayBuffer());
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

/** A request, as a server adapter received it. */
export class LightRequest extends LightBody<Request> implements Request {
  /**
   * @param url absolute URL (already parsed)
   * @param method a method a `Request` can carry (not CONNECT, TRACE or TRACK)
   * @param body null for GET and HEAD
   */
  constructor(
    readonly url: string,
    readonly method: string,
    readonly headers: Headers,
    readonly signal: AbortSignal,
    body: BodySource | null,
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

/** An answer: an upstream's as an HTTP client received it, or one held whole in memory. */
export class LightResponse extends LightBody<Response> implements Response {
  /**
   * @param url the URL it answers ('' for one the gateway makes)
   * @param status 200–599
   * @param body null for a status or method whose answer has none
   */
  constructor(
    readonly url: string,
    readonly status: number,
    readonly statusText: string,
    readonly headers: Headers,
    body: BodySource | null,
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
    return this.url === '' ? 'default' : 'basic';
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
