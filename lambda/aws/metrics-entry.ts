/** Placeholder buffered entry: replaced by the real metrics adapter. */
export const handler = async (): Promise<{ statusCode: number; body: string }> => ({ statusCode: 200, body: '{}' });
