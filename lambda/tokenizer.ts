/**
 * The tokenizer used for estimates: OpenAI's o200k_base BPE (GPT-4o, GPT-4.1, GPT-5, o-series). Its rank table
 * is megabytes, so runtimes load this module lazily; on AWS it is bundled as a separate file next to the proxy.
 */
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import type { TokenCounter } from './core/tokens';

// Special-token text such as "<|endoftext|>" in user content is counted as plain text, not refused.
const AS_PLAIN_TEXT = { disallowedSpecial: new Set<string>() };

export const o200kCounter: TokenCounter = {
  count: (text) => (text === '' ? 0 : countTokens(text, AS_PLAIN_TEXT)),
};
