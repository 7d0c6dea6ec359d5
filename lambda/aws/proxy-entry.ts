/** Placeholder streaming entry: replaced by the real proxy adapter. */
declare const awslambda: {
  streamifyResponse(fn: (event: unknown, stream: NodeJS.WritableStream) => Promise<void>): unknown;
};
export const handler = awslambda.streamifyResponse(async (_event, stream) => {
  stream.end('placeholder');
});
