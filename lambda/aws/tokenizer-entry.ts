/**
 * Entry of the tokenizer bundle shipped next to the proxy bundle as `tokenizer.js` and loaded on first use.
 */
export { o200kCounter } from '../tokenizer';
