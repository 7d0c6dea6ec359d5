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

/**
 * A server-sent-events answer. Events are parsed as they complete. In strip mode whole events are held until
 * their terminating blank line (a client cannot act on half an event anyway), so they can be rewritten.
 */
class SseMeter implements ResponseMeter {
  private readonly decoder = new TextDecoder();
  private pending = '';
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
    this.pending += this.decoder.decode(chunk, { stream: true });
    const cut = lastEventBoundary(this.pending);
    if (cut === -1) return this.strip ? EMPTY : chunk;
    const complete = this.pending.slice(0, cut);
    this.pending = this.pending.slice(cut);
    const out = this.processEvents(complete);
    return this.strip ? encoder.encode(out) : chunk;
  }

  end(): Uint8Array {
    this.pending += this.decoder.decode();
    const rest = this.pending;
    this.pending = '';
    if (rest === '') return EMPTY;
    const out = this.processEvents(rest);
    return this.strip ? encoder.encode(out) : EMPTY;
  }

  reading(): MeterReading {
    return { model: this.model, usage: this.usage, text: this.text.join(''), streamError: this.streamError };
  }

  /** Reads each event in `block` and returns the block as the client should see it. */
  private processEvents(block: string): string {
    let out = '';
    let start = 0;
    while (start < block.length) {
      const end = nextEventEnd(block, start);
      const event = block.slice(start, end);
      start = end;
      out += this.processEvent(event);
    }
    return out;
  }

  private processEvent(event: string): string {
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

/** Index just past the last complete event (after a blank line), or -1. */
function lastEventBoundary(text: string): number {
  const lf = text.lastIndexOf('\n\n');
  const crlf = text.lastIndexOf('\r\n\r\n');
  const cr = text.lastIndexOf('\r\r');
  const best = Math.max(lf === -1 ? -1 : lf + 2, crlf === -1 ? -1 : crlf + 4, cr === -1 ? -1 : cr + 2);
  return best;
}

/** End of the event starting at `start`: just past its blank line, or the end of the text. */
function nextEventEnd(text: string, start: number): number {
  const candidates = [text.indexOf('\n\n', start), text.indexOf('\r\n\r\n', start), text.indexOf('\r\r', start)];
  let best = text.length;
  for (const [i, index] of candidates.entries()) {
    if (index === -1) continue;
    const end = index + (i === 1 ? 4 : 2);
    if (end < best) best = end;
  }
  return best;
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
