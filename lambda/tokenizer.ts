/**
 * The tokenizer used for estimates: OpenAI's o200k_base BPE (GPT-4o, GPT-4.1, GPT-5, o-series). Its rank table
 * is megabytes, so runtimes load this module lazily; on AWS it is bundled as a separate file next to the proxy.
 */
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import type { TokenCounter } from './core/tokens';

// Special-token text such as "<|endoftext|>" in user content is counted as plain text, not refused.
const AS_PLAIN_TEXT = { disallowedSpecial: new Set<string>() };

/**
 * Longest run of non-space characters counted in one piece. BPE merging is quadratic in the length of a piece, and
 * a run such as 64 KB of one letter is one piece: counted whole it blocks the process for seconds (a megabyte, for
 * hours). Cut into pieces this long, it costs linear time and the estimate moves by at most a token per cut.
 */
export const MAX_COUNTED_RUN = 128;

const LONG_RUN = new RegExp(`\\S{${MAX_COUNTED_RUN + 1}}`);

function isSpace(code: number): boolean {
  return code === 0x20 || (code >= 0x09 && code <= 0x0d) || code === 0xa0 || code === 0x3000 || (code >= 0x2000 && code <= 0x200a);
}

/** Splits `text` inside its over-long non-space runs only (never between the halves of a surrogate pair). */
function pieces(text: string): string[] {
  const out: string[] = [];
  let start = 0;
  let run = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (isSpace(code)) {
      run = 0;
    } else if (++run > MAX_COUNTED_RUN && !(code >= 0xdc00 && code <= 0xdfff)) {
      out.push(text.slice(start, i));
      start = i;
      run = 1;
    }
  }
  out.push(text.slice(start));
  return out;
}

export const o200kCounter: TokenCounter = {
  count(text) {
    if (text === '') return 0;
    if (!LONG_RUN.test(text)) return countTokens(text, AS_PLAIN_TEXT);
    let total = 0;
    for (const piece of pieces(text)) total += countTokens(piece, AS_PLAIN_TEXT);
    return total;
  },
};
