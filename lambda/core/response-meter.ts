/**
 * Watches an upstream answer go by and learns what it used: the model that answered, the usage it reported and,
 * for estimates, the text it produced. It passes bytes through unchanged, except when the gateway itself asked for
 * stream usage (`stream_options.include_usage`) on the client's behalf: then it removes exactly what that option
 * added, so the client sees the stream it would have seen without the gateway.
 */
import type { Endpoint } from './tokens';
import type { TokenUsage } from './pricing';

/** Largest non-streaming answer kept in memory to read its usage; larger answers are metered by estimate. */
export const MAX_METERED_JSON_BYTES = 32 * 1024 * 1024;
/** Most answer text kept for a token estimate. */
const MAX_TEXT_CHARS = 4 * 1024 * 1024;

/**
 * More tokens than any model reads or writes in one request. A count past it is a broken upstream, not usage: taken
 * as given it would price at infinity and poison every total it is added to.
 */
export const MAX_REPORTED_TOKENS = 1_000_000_000;

function num(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? Math.round(value) : 0;
}

/** The usage, or null when a count is beyond belief (then the request is metered by estimate). */
function plausible(usage: TokenUsage): TokenUsage | null {
  for (const count of Object.values(usage)) if (count > MAX_REPORTED_TOKENS) return null;
  return usage;
}

function obj(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/**
 * Reads a usage object in either OpenAI shape: chat/completions/embeddings (`prompt_tokens`, `completion_tokens`)
 * or Responses (`input_tokens`, `output_tokens`). Null when it is not a usage object.
 */
export function usageFrom(value: unknown): TokenUsage | null {
  const usage = obj(value);
  if (usage === undefined) return null;
  if ('input_tokens' in usage || 'output_tokens' in usage) {
    const prompt = num(usage.input_tokens);
    const completion = num(usage.output_tokens);
    return plausible({
      prompt_tokens: prompt,
      completion_tokens: completion,
      cached_prompt_tokens: num(obj(usage.input_tokens_details)?.cached_tokens),
      reasoning_tokens: num(obj(usage.output_tokens_details)?.reasoning_tokens),
      total_tokens: 'total_tokens' in usage ? num(usage.total_tokens) : prompt + completion,
    });
  }
  if ('prompt_tokens' in usage || 'completion_tokens' in usage || 'total_tokens' in usage) {
    const prompt = num(usage.prompt_tokens);
    const completion = num(usage.completion_tokens);
    return plausible({
      prompt_tokens: prompt,
      completion_tokens: completion,
      cached_prompt_tokens: num(obj(usage.prompt_tokens_details)?.cached_tokens),
      reasoning_tokens: num(obj(usage.completion_tokens_details)?.reasoning_tokens),
      total_tokens: 'total_tokens' in usage ? num(usage.total_tokens) : prompt + completion,
    });
  }
  return null;
}

/** What the meter learnt from an answer. */
export interface MeterReading {
  readonly model: string | null;
  readonly usage: TokenUsage | null;
  /** Answer text for an estimate (content deltas, output text). */
  readonly text: string;
  /** An error the upstream reported inside a stream (`error` event), if any. */
  readonly streamError: string | null;
}

export interface ResponseMeter {
  /** Feeds a chunk from the upstream; returns what to send to the client (possibly empty). */
  push(chunk: Uint8Array): Uint8Array;
  /** Ends the input; returns any bytes still held back. */
  end(): Uint8Array;
  reading(): MeterReading;
}

const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

/** Chooses how to read an answer from its content type. */
export function createResponseMeter(
  contentType: string | null,
  endpoint: Endpoint,
  options: { readonly stripInjectedUsage: boolean },
): ResponseMeter {
  const type = (contentType ?? '').toLowerCase();
  if (type.includes('text/event-stream')) return new SseMeter(endpoint, options.stripInjectedUsage);
  if (type.includes('json')) return new JsonMeter();
  return new OpaqueMeter();
}

/** Binary or unknown answers (audio, files): passed through, nothing to read. */
class OpaqueMeter implements ResponseMeter {
  push(chunk: Uint8Array): Uint8Array {
    return chunk;
  }
  end(): Uint8Array {
    return EMPTY;
  }
  reading(): MeterReading {
    return { model: null, usage: null, text: '', streamError: null };
  }
}

/** A JSON answer: bytes go straight through; a copy is parsed once complete. */
class JsonMeter implements ResponseMeter {
  private readonly chunks: Uint8Array[] = [];
  private size = 0;
  private overflow = false;
  private parsed: MeterReading | undefined;

  push(chunk: Uint8Array): Uint8Array {
    if (!this.overflow) {
      this.size += chunk.byteLength;
      if (this.size > MAX_METERED_JSON_BYTES) {
        this.overflow = true;
        this.chunks.length = 0;
      } else {
        this.chunks.push(chunk);
      }
    }
    return chunk;
  }

  end(): Uint8Array {
    return EMPTY;
  }

  reading(): MeterReading {
    if (this.parsed) return this.parsed;
    let body: Record<string, unknown> | undefined;
    if (!this.overflow && this.size > 0) {
      try {
        body = obj(JSON.parse(Buffer.concat(this.chunks).toString('utf8')));
      } catch {
        body = undefined;
      }
    }
    this.chunks.length = 0;
    this.parsed = {
      model: typeof body?.model === 'string' ? body.model : null,
      usage: usageFrom(body?.usage),
      text: body === undefined ? '' : answerText(body),
      streamError: null,
    };
    return this.parsed;
  }
}

/** Text of a non-streaming answer: chat message contents, completion texts, Responses output text. */
function answerText(body: Record<string, unknown>): string {
  const parts: string[] = [];
  if (Array.isArray(body.choices)) {
    for (const choice of body.choices) {
      const c = obj(choice);
      const message = obj(c?.message);
      if (typeof message?.content === 'string') parts.push(message.content);
      if (Array.isArray(message?.tool_calls)) parts.push(JSON.stringify(message.tool_calls));
      if (typeof c?.text === 'string') parts.push(c.text);
    }
  }
  if (Array.isArray(body.output)) {
    for (const item of body.output) {
      const content = obj(item)?.content;
      if (Array.isArray(content)) {
        for (const part of content) {
          const text = obj(part)?.text;
          if (typeof text === 'string') parts.push(text);
        }
      }
    }
  }
  return parts.join('');
}

/** Largest SSE event held to be read; a longer one (no blank line in sight) passes through unread. */
export const MAX_METERED_EVENT_BYTES = 16 * 1024 * 1024;

const LF = 0x0a;
const CR = 0x0d;

/**
 * A server-sent-events answer. Events end at an empty line, whatever mix of CR, LF and CRLF the lines end with, and
 * are split as bytes: each byte is scanned once however long an event grows, and the bytes the client gets are the
 * upstream's own, even ones that are not UTF-8. In strip mode whole events are held until their terminating blank
 * line (a client cannot act on half an event anyway), so they can be rewritten; only rewritten events are re-encoded.
 */
class SseMeter implements ResponseMeter {
  private readonly decoder = new TextDecoder();
  /** Bytes of the event in progress. */
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  /** True once the line in progress has a byte that is not a line break. */
  private lineHasContent = false;
  /** True right after a CR: an LF now belongs to the same CRLF line break. */
  private afterCr = false;
  /** True while passing an over-long event through unread, up to its end. */
  private skipping = false;
  private model: string | null = null;
  private usage: TokenUsage | null = null;
  private streamError: string | null = null;
  private readonly text: string[] = [];
  private textLength = 0;

  constructor(
    private readonly endpoint: Endpoint,
    private readonly strip: boolean,
  ) {}

  push(chunk: Uint8Array): Uint8Array {
    const out: Uint8Array[] = [];
    let eventStart = 0;
    let scanned = 0;
    // Only CR and LF matter; indexOf jumps between them natively instead of looking at every byte.
    let nextLf = chunk.indexOf(LF);
    let nextCr = chunk.indexOf(CR);
    while (nextLf !== -1 || nextCr !== -1) {
      let at = nextLf === -1 ? nextCr : nextCr === -1 ? nextLf : Math.min(nextLf, nextCr);
      if (at > scanned) {
        this.lineHasContent = true;
        this.afterCr = false;
      }
      const byte = chunk[at]!;
      if (byte === LF && this.afterCr) {
        this.afterCr = false; // the second half of a CRLF
      } else {
        // A line break (CR, LF or CRLF) that ends an empty line ends the event.
        const blank = !this.lineHasContent;
        this.lineHasContent = false;
        this.afterCr = byte === CR;
        if (blank) {
          if (byte === CR && chunk[at + 1] === LF) {
            at++;
            this.afterCr = false;
          }
          this.eventEnded(chunk.subarray(eventStart, at + 1), out);
          eventStart = at + 1;
        }
      }
      scanned = at + 1;
      if (nextLf !== -1 && nextLf < scanned) nextLf = chunk.indexOf(LF, scanned);
      if (nextCr !== -1 && nextCr < scanned) nextCr = chunk.indexOf(CR, scanned);
    }
    if (scanned < chunk.byteLength) {
      this.lineHasContent = true;
      this.afterCr = false;
    }
    const rest = chunk.subarray(eventStart);
    if (rest.byteLength > 0) {
      if (this.skipping) {
        out.push(rest);
      } else {
        // A copy: the rest of the event comes in later chunks, and this one's memory is the caller's.
        this.held.push(new Uint8Array(rest));
        this.heldBytes += rest.byteLength;
        if (this.heldBytes > MAX_METERED_EVENT_BYTES) {
          // Too long to be a usage chunk: send what is held unchanged and pass the rest of the event through.
          out.push(this.takeHeld());
          this.skipping = true;
        }
      }
    }
    if (!this.strip) return chunk;
    return out.length === 0 ? EMPTY : out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  end(): Uint8Array {
    if (this.skipping || this.heldBytes === 0) return EMPTY;
    const shown = this.processEvent(this.takeHeld());
    return this.strip ? shown : EMPTY;
  }

  reading(): MeterReading {
    return { model: this.model, usage: this.usage, text: this.text.join(''), streamError: this.streamError };
  }

  /** An event's last bytes (through its blank line) arrived: read it and queue what the client should see. */
  private eventEnded(tail: Uint8Array, out: Uint8Array[]): void {
    if (this.skipping) {
      this.skipping = false;
      out.push(tail);
      return;
    }
    if (this.heldBytes === 0) {
      out.push(this.processEvent(tail));
      return;
    }
    this.held.push(tail);
    this.heldBytes += tail.byteLength;
    out.push(this.processEvent(this.takeHeld()));
  }

  private takeHeld(): Uint8Array {
    const event = this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held);
    this.held = [];
    this.heldBytes = 0;
    return event;
  }

  /** Reads one event; returns its bytes as the client should see them: the upstream's own unless rewritten. */
  private processEvent(bytes: Uint8Array): Uint8Array {
    const event = this.decoder.decode(bytes);
    const shown = this.rewrite(event);
    return shown === event ? bytes : encoder.encode(shown);
  }

  private rewrite(event: string): string {
    const data = dataOf(event);
    if (data === null || data === '[DONE]') return event;
    let payload: Record<string, unknown> | undefined;
    try {
      payload = obj(JSON.parse(data));
    } catch {
      return event;
    }
    if (payload === undefined) return event;
    this.observe(payload);
    if (!this.strip) return event;
    // The usage-only chunk that include_usage adds: empty choices and a usage object.
    if (Array.isArray(payload.choices) && payload.choices.length === 0 && obj(payload.usage) !== undefined) return '';
    if ('usage' in payload && payload.usage === null) return withoutNullUsage(event, payload);
    return event;
  }

  private observe(payload: Record<string, unknown>): void {
    if (typeof payload.model === 'string') this.model = payload.model;
    const usage = usageFrom(payload.usage);
    if (usage !== null) this.usage = usage;
    if (this.endpoint === 'responses') {
      const response = obj(payload.response);
      if (response !== undefined) {
        if (typeof response.model === 'string') this.model = response.model;
        const responseUsage = usageFrom(response.usage);
        if (responseUsage !== null) this.usage = responseUsage;
      }
      if (payload.type === 'response.output_text.delta' && typeof payload.delta === 'string') this.addText(payload.delta);
      if (payload.type === 'error' || payload.type === 'response.failed') {
        const message = obj(payload.error)?.message ?? obj(obj(response)?.error)?.message;
        this.streamError = typeof message === 'string' ? message.slice(0, 200) : String(payload.type);
      }
      return;
    }
    if (Array.isArray(payload.choices)) {
      for (const choice of payload.choices) {
        const c = obj(choice);
        const delta = obj(c?.delta);
        if (typeof delta?.content === 'string') this.addText(delta.content);
        if (Array.isArray(delta?.tool_calls)) this.addText(JSON.stringify(delta.tool_calls));
        if (typeof c?.text === 'string') this.addText(c.text);
      }
    }
    const error = obj(payload.error);
    if (error !== undefined) this.streamError = typeof error.message === 'string' ? error.message.slice(0, 200) : 'error';
  }

  private addText(text: string): void {
    if (this.textLength >= MAX_TEXT_CHARS) return;
    this.text.push(text);
    this.textLength += text.length;
  }
}

/** The data of an SSE event (multiple `data:` lines joined by newlines), or null when it has none. */
function dataOf(event: string): string | null {
  let data: string | null = null;
  for (const line of event.split(/\r\n|\r|\n/)) {
    if (!line.startsWith('data:')) continue;
    const value = line.slice(line.charAt(5) === ' ' ? 6 : 5);
    data = data === null ? value : `${data}\n${value}`;
  }
  return data;
}

/**
 * Removes the `"usage":null` member that include_usage adds to every chunk. Textual removal keeps every other byte
 * as the upstream sent it; if the text is not in the expected compact form, the chunk is re-serialised instead.
 */
function withoutNullUsage(event: string, payload: Record<string, unknown>): string {
  for (const pattern of [',"usage":null', '"usage":null,', ', "usage": null', '"usage": null, ']) {
    // OpenAI puts usage last, so the last occurrence is the top-level member.
    const index = event.lastIndexOf(pattern);
    if (index !== -1) return event.slice(0, index) + event.slice(index + pattern.length);
  }
  const { usage: _usage, ...rest } = payload;
  const terminator = /(\r\n\r\n|\r\r|\n\n)$/.exec(event)?.[1] ?? '\n\n';
  return `data: ${JSON.stringify(rest)}${terminator}`;
}
