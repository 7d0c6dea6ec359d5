/** Placeholder tokenizer entry: replaced by the real tokenizer bundle entry. */
export function countTokens(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}
