import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, localConfigFromEnv } from '../../lambda/core/config';

describe('localConfigFromEnv', () => {
  it('defaults to port 8787 on loopback with ./.data and the OpenAI API', () => {
    const config = localConfigFromEnv({});
    assert.equal(config.port, 8787);
    assert.equal(config.host, '127.0.0.1');
    assert.equal(config.dataDir, './.data');
    assert.equal(config.upstreamUrl, 'https://api.openai.com');
    assert.deepEqual(config.gatewayKeys, []);
  });

  it('listens on all interfaces by default once gateway keys are set', () => {
    const config = localConfigFromEnv({ GATEWAY_KEYS: 'gw_aaaaaaaaaaaaaaaa, gw_bbbbbbbbbbbbbbbb' });
    assert.equal(config.host, '0.0.0.0');
    assert.deepEqual(config.gatewayKeys, ['gw_aaaaaaaaaaaaaaaa', 'gw_bbbbbbbbbbbbbbbb']);
  });

  it('refuses a non-loopback HOST without gateway keys, naming HOST', () => {
    assert.throws(() => localConfigFromEnv({ HOST: '0.0.0.0' }), (e: unknown) => e instanceof ConfigError && e.variable === 'HOST');
  });

  it('names the variable and never echoes a key when a key is too short', () => {
    assert.throws(
      () => localConfigFromEnv({ GATEWAY_KEYS: 'short-secret' }),
      (e: unknown) => e instanceof ConfigError && e.variable === 'GATEWAY_KEYS' && !e.message.includes('short-secret'),
    );
  });

  for (const [name, value] of [
    ['PORT', 'eighty'],
    ['PORT', '70000'],
    ['UPSTREAM_OPENAI_URL', 'ftp://example.com'],
    ['UPSTREAM_OPENAI_URL', 'not a url'],
    ['MAX_BODY_BYTES', '-1'],
    ['LOG_LEVEL', 'loud'],
    ['PROVIDER', 'Open AI'],
  ] as const) {
    it(`fails fast on ${name}=${value}`, () => {
      assert.throws(() => localConfigFromEnv({ [name]: value }), (e: unknown) => e instanceof ConfigError && e.variable === name);
    });
  }

  it('gives a request body two minutes, with pauses of at most 30 seconds, unless told otherwise', () => {
    const config = localConfigFromEnv({});
    assert.equal(config.bodyTimeoutMs, 120_000);
    assert.equal(config.bodyIdleTimeoutMs, 30_000);
    const tuned = localConfigFromEnv({ BODY_TIMEOUT_MS: '300000', BODY_IDLE_TIMEOUT_MS: '60000' });
    assert.deepEqual([tuned.bodyTimeoutMs, tuned.bodyIdleTimeoutMs], [300_000, 60_000]);
  });

  it('shortens the default pause to a body deadline below it', () => {
    assert.equal(localConfigFromEnv({ BODY_TIMEOUT_MS: '5000' }).bodyIdleTimeoutMs, 5_000);
  });

  for (const [env, variable] of [
    [{ BODY_TIMEOUT_MS: '2m' }, 'BODY_TIMEOUT_MS'],
    [{ BODY_TIMEOUT_MS: '0' }, 'BODY_TIMEOUT_MS'],
    [{ BODY_IDLE_TIMEOUT_MS: '-5' }, 'BODY_IDLE_TIMEOUT_MS'],
    [{ BODY_TIMEOUT_MS: '10000', BODY_IDLE_TIMEOUT_MS: '20000' }, 'BODY_IDLE_TIMEOUT_MS'],
  ] as const) {
    it(`fails fast on ${JSON.stringify(env)}, naming ${variable}`, () => {
      assert.throws(() => localConfigFromEnv(env), (e: unknown) => e instanceof ConfigError && e.variable === variable && e.message.startsWith(`${variable}: `));
    });
  }

  it('strips a trailing slash from the upstream URL', () => {
    assert.equal(localConfigFromEnv({ UPSTREAM_OPENAI_URL: 'http://127.0.0.1:9000/openai/' }).upstreamUrl, 'http://127.0.0.1:9000/openai');
  });
});
