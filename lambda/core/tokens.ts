/**
 * Token estimation for answers that carry no usage. The tokenizer's rank table is large (megabytes), so it is
 * loaded lazily through a loader the runtime supplies, and only when an estimate is actually needed.
 */

/** Counts tokens in text. */
export interface TokenCounter {
  count(text: string): number;
}

/** Supplies the counter on first use; the runtime decides where it comes from (a module, a file next to the bundle). */
export type TokenCounterLoader = () => Promise<TokenCounter>;

/** Memoises a loader so the table is read at most once per process. */
export function lazyTokenCounter(load: TokenCounterLoader): TokenCounterLoader {
  let pending: Promise<TokenCounter> | undefined;
  return () => {
    pending ??= load().catch((error: unknown) => {
      pending = undefined;
      throw error;
    });
    return pending;
  };
}

// OpenAI's documented overhead for chat formatting: 3 tokens per message and 3 to prime the reply.
const TOKENS_PER_MESSAGE = 3;
const REPLY_PRIMING_TOKENS = 3;

function textOf(content: unknown, parts: string[]): void {
  if (typeof content === 'string') {
    parts.push(content);
  } else if (Array.isArray(content)) {
    for (const part of content) textOf(part, parts);
  } else if (content !== null && typeof content === 'object') {
    const record = content as Record<string, unknown>;
    for (const key of ['text', 'content', 'input_text', 'output_text', 'arguments', 'name', 'refusal']) {
      if (key in record) textOf(record[key], parts);
    }
    if ('tool_calls' in record) textOf(record.tool_calls, parts);
    if ('function' in record) textOf(record.function, parts);
  }
}

/**
 * Estimated prompt tokens of a request body, by endpoint: chat `messages`, completions `prompt`, responses
 * `instructions` + `input`, embeddings `input` (token-id arrays count as their length).
 */
export function estimatePromptTokens(counter: TokenCounter, endpoint: Endpoint, body: Record<string, unknown>): number {
  switch (endpoint) {
    case 'chat': {
      const messages = Array.isArray(body.messages) ? body.messages : [];
      let total = REPLY_PRIMING_TOKENS;
      for (const message of messages) {
        const parts: string[] = [];
        textOf(message, parts);
        if (message !== null && typeof message === 'object' && typeof (message as { role?: unknown }).role === 'string') {
          parts.push((message as { role: string }).role);
        }
        total += TOKENS_PER_MESSAGE + counter.count(parts.join('\n'));
      }
      return total;
    }
    case 'completions':
    case 'embeddings': {
      const input = endpoint === 'completions' ? body.prompt : body.input;
      return countInput(counter, input);
    }
    case 'responses': {
      const parts: string[] = [];
      textOf(body.instructions, parts);
      textOf(body.input, parts);
      return parts.length === 0 ? 0 : counter.count(parts.join('\n'));
    }
    default:
      return 0;
  }
}

function countInput(counter: TokenCounter, input: unknown): number {
  if (typeof input === 'string') return counter.count(input);
  if (Array.isArray(input)) {
    if (input.every((x) => typeof x === 'number')) return input.length;
    return input.reduce((sum: number, item: unknown) => sum + countInput(counter, item), 0);
  }
  return 0;
}

/** The OpenAI endpoints the gateway understands the usage of. */
export type Endpoint = 'chat' | 'completions' | 'responses' | 'embeddings' | 'other';

/** @example endpointOf('/v1/chat/completions') // 'chat' */
export function endpointOf(path: string): Endpoint {
  const trimmed = path.replace(/\/+$/, '');
  if (trimmed.endsWith('/chat/completions')) return 'chat';
  if (trimmed.endsWith('/completions')) return 'completions';
  if (trimmed.endsWith('/responses')) return 'responses';
  if (trimmed.endsWith('/embeddings')) return 'embeddings';
  return 'other';
}
