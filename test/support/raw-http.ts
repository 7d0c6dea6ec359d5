/**
 * HTTP/1.1 over a bare `net.Socket`, for tests that must send what `fetch` and `node:http` refuse to: control
 * characters and raw bytes in headers, lying `Content-Length`s, malformed framing, absolute-form targets, unknown
 * methods. The answer is read until the server closes the connection and parsed leniently: a response cut short
 * (a broken stream) is reported as incomplete rather than thrown.
 *
 * @example
 * const exchange = await rawExchange(port, rawRequest({ method: 'GET', target: '/healthz' }));
 * exchange.responses[0]?.status; // 200
 */
import { connect } from 'node:net';

/** A header as sent: its value may hold any bytes. */
export type RawHeader = readonly [name: string, value: string | Buffer];

export interface RawRequestOptions {
  readonly method: string;
  /** The request target exactly as it goes on the request line. */
  readonly target: string;
  /** @default 'HTTP/1.1' */
  readonly version?: string;
  /** Headers in order. `Host` and `Connection: close` are added unless given (`host: null` to send none). */
  readonly headers?: readonly RawHeader[];
  readonly host?: string | null;
  readonly body?: Buffer | string;
  /**
   * How the body is framed: `length` (a true Content-Length), `chunked`, `none` (no framing header at all), or a
   * number to send as a (possibly lying) Content-Length. @default 'length' when there is a body, else 'none'
   */
  readonly framing?: 'length' | 'chunked' | 'none' | number;
}

/** Serialises one request. Strings are sent as latin1, so `\xff` is one byte 0xff. */
export function rawRequest(options: RawRequestOptions): Buffer {
  const body = options.body === undefined ? undefined : Buffer.isBuffer(options.body) ? options.body : Buffer.from(options.body, 'utf8');
  const framing = options.framing ?? (body === undefined ? 'none' : 'length');
  const parts: Buffer[] = [Buffer.from(`${options.method} ${options.target} ${options.version ?? 'HTTP/1.1'}\r\n`, 'latin1')];
  const headers = [...(options.headers ?? [])];
  const has = (name: string) => headers.some(([n]) => n.toLowerCase() === name);
  if (options.host !== null && !has('host')) headers.unshift(['Host', options.host ?? '127.0.0.1']);
  if (!has('connection')) headers.push(['Connection', 'close']);
  if (framing === 'length') headers.push(['Content-Length', String(body?.byteLength ?? 0)]);
  else if (framing === 'chunked') headers.push(['Transfer-Encoding', 'chunked']);
  else if (typeof framing === 'number') headers.push(['Content-Length', String(framing)]);
  for (const [name, value] of headers) {
    parts.push(Buffer.from(`${name}: `, 'latin1'), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('\r\n'));
  if (body !== undefined) {
    if (framing === 'chunked') {
      // Two chunks when there is enough body, so the server really reassembles.
      const half = Math.floor(body.byteLength / 2);
      for (const piece of [body.subarray(0, half), body.subarray(half)]) {
        if (piece.byteLength > 0) parts.push(Buffer.from(`${piece.byteLength.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
      }
      parts.push(Buffer.from('0\r\n\r\n'));
    } else {
      parts.push(body);
    }
  }
  return Buffer.concat(parts);
}

export interface RawResponse {
  readonly status: number;
  readonly reason: string;
  /** Header names in lower case; repeated headers joined with `, `. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** False when the connection closed before the body's framing said it was complete. */
  readonly complete: boolean;
}

export interface RawExchange {
  /** Every response read, in order (several when requests were pipelined). */
  readonly responses: readonly RawResponse[];
  /** Everything the server sent. */
  readonly raw: Buffer;
  /** True when the socket failed (e.g. reset) rather than closing cleanly. */
  readonly reset: boolean;
}

export interface RawExchangeOptions {
  /** Half-close after sending (the server sees end of input). @default false */
  readonly endAfterSend?: boolean;
  /** Give up and destroy the socket after this long; the exchange then holds what arrived. @default 15000 */
  readonly timeoutMs?: number;
  /** The request was a HEAD: answers carry no body whatever their Content-Length says. @default false */
  readonly head?: boolean;
}

/** Sends `bytes` to 127.0.0.1:`port` and collects everything until the server closes the connection. */
export function rawExchange(port: number, bytes: Buffer, options: RawExchangeOptions = {}): Promise<RawExchange> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let reset = false;
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const raw = Buffer.concat(chunks);
      resolve({ responses: parseResponses(raw, options.head ?? false), raw, reset });
    };
    const timer = setTimeout(() => {
      reset = true;
      socket.destroy();
      finish();
    }, options.timeoutMs ?? 15_000);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {
      reset = true;
    });
    socket.on('close', finish);
    socket.write(bytes, () => {
      if (options.endAfterSend) socket.end();
    });
  });
}

/** Parses consecutive HTTP/1.x responses; stops at the first one that is incomplete or unreadable. */
export function parseResponses(raw: Buffer, head = false): RawResponse[] {
  const responses: RawResponse[] = [];
  let offset = 0;
  while (offset < raw.byteLength) {
    const headEnd = raw.indexOf('\r\n\r\n', offset);
    if (headEnd === -1) break;
    const lines = raw.subarray(offset, headEnd).toString('latin1').split('\r\n');
    const statusLine = /^HTTP\/\d\.\d (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (statusLine === null) break;
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const status = Number(statusLine[1]);
    let cursor = headEnd + 4;
    // Interim answers (100 Continue) have no body; the real answer follows.
    if (status >= 100 && status < 200) {
      offset = cursor;
      continue;
    }
    let body: Buffer;
    let complete: boolean;
    if (head || status === 204 || status === 304) {
      body = Buffer.alloc(0);
      complete = true;
    } else if ((headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) {
      const pieces: Buffer[] = [];
      complete = false;
      for (;;) {
        const lineEnd = raw.indexOf('\r\n', cursor);
        if (lineEnd === -1) break;
        const size = Number.parseInt(raw.subarray(cursor, lineEnd).toString('latin1'), 16);
        if (!Number.isFinite(size)) break;
        if (size === 0) {
          const trailerEnd = raw.indexOf('\r\n', lineEnd + 2);
          cursor = trailerEnd === -1 ? raw.byteLength : trailerEnd + 2;
          complete = trailerEnd !== -1;
          break;
        }
        if (lineEnd + 2 + size > raw.byteLength) {
          pieces.push(raw.subarray(lineEnd + 2));
          cursor = raw.byteLength;
          break;
        }
        pieces.push(raw.subarray(lineEnd + 2, lineEnd + 2 + size));
        cursor = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(pieces);
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      body = raw.subarray(cursor, Math.min(raw.byteLength, cursor + length));
      complete = body.byteLength === length;
      cursor += body.byteLength;
    } else {
      // Neither: the body runs to the end of the connection (or there is none).
      body = raw.subarray(cursor);
      complete = true;
      cursor = raw.byteLength;
    }
    responses.push({ status, reason: statusLine[2] ?? '', headers, body, complete });
    if (!complete) break;
    offset = cursor;
  }
  return responses;
}
