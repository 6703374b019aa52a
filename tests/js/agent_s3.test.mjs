// `loadstar agent` staging from a real S3-protocol server (the s3rver npm
// package, on loopback): ListObjectsV2 with a prefix, ranged GETs signed with
// Signature V4, credentials from the environment; and a wrong access key is
// a clear error. (s3rver 3.7 checks the access key, not V4 signatures:
// AWS's published vectors check those in tests/unit/agent_test.cpp.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import S3rver from 's3rver';
import { bin, scratch } from './harness.mjs';

async function startAgent(dir, env) {
  const portFile = join(dir, 'agent.port');
  const child = spawn(bin, ['agent', '--port', '0', '--port-file', portFile, '--cache-dir', join(dir, 'cache'),
    '--chunk-size', '1Mi', '--max-attempts', '2'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  for (let i = 0; i < 500 && !existsSync(portFile); ++i) await sleep(10);
  const port = Number(readFileSync(portFile, 'utf8').trim());
  return { url: `http://127.0.0.1:${port}`, child, log: () => log };
}

async function stage(agent, model, source) {
  const r = await fetch(`${agent.url}/v1/stage`, { method: 'POST', body: JSON.stringify({ model, source }) });
  assert.equal(r.status, 202);
  for (let i = 0; i < 1000; ++i) {
    const p = (await (await fetch(`${agent.url}/v1/models/${model}`)).json()).staging;
    if (p.state === 'ready' || p.state === 'failed') return p;
    await sleep(20);
  }
  throw new Error('staging did not finish');
}

test('the agent stages a model from an S3-compatible server', async () => {
  const { dir, cleanup } = scratch();
  const s3 = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: join(dir, 's3'),
    configureBuckets: [{ name: 'models', configs: [] }] });
  const { port } = await s3.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const files = {
    'config.json': Buffer.from('{"architectures":["LlamaForCausalLM"]}'),
    'model-00001-of-00002.safetensors': randomBytes(3 * 1024 * 1024 + 17),
    'model-00002-of-00002.safetensors': randomBytes(1024 * 1024),
    'sub dir/tokenizer.json': Buffer.from('{}'),
  };
  for (const [name, body] of Object.entries(files)) {
    const r = await fetch(`${endpoint}/models/llama/v1/${encodeURIComponent(name).replace('%2F', '/')}`, { method: 'PUT', body });
    assert.equal(r.status, 200, await r.text());
  }
  // Another model under a neighbouring prefix must not be listed.
  await fetch(`${endpoint}/models/llama/v2/other.bin`, { method: 'PUT', body: Buffer.from('x') });
  const agent = await startAgent(dir, {
    AWS_ENDPOINT_URL: endpoint, AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1',
  });
  try {
    const p = await stage(agent, 'llama', 's3://models/llama/v1');
    assert.equal(p.state, 'ready', JSON.stringify(p) + agent.log());
    for (const [name, body] of Object.entries(files)) {
      const got = readFileSync(join(p.dir, name));
      assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(body).digest('hex'), name);
    }
    assert.ok(!existsSync(join(p.dir, 'other.bin')));
    assert.equal(p.bytes_origin, Object.values(files).reduce((a, b) => a + b.length, 0));
    assert.ok(!agent.log().includes('S3RVER'), 'credentials must not be logged');
  } finally {
    agent.child.kill('SIGTERM');
  }
  const bad = await startAgent(join(dir, 'bad'), {
    AWS_ENDPOINT_URL: endpoint, AWS_ACCESS_KEY_ID: 'NOT-A-KEY', AWS_SECRET_ACCESS_KEY: 'x',
  });
  try {
    const p = await stage(bad, 'llama', 's3://models/llama/v1');
    assert.equal(p.state, 'failed');
    assert.match(p.error, /answered 403/);
    assert.match(p.error, /InvalidAccessKeyId/);
  } finally {
    bad.child.kill('SIGTERM');
    await s3.close();
    cleanup();
  }
});
