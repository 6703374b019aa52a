// The official openai npm client against `loadstar up`: the gateway in front
// of engine-sim replicas, as a user of the quickstart would call it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { scratch, startUp } from './harness.mjs';

const yaml = `apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny
  replicas: 2
  engine: {name: engine-sim, args: ["--time-scale", "10"]}
`;

let tmp, up, client;

before(async () => {
  tmp = scratch();
  up = await startUp(tmp.dir, yaml, 'chat', 2, ['--max-body-size', '64KiB']);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${up.port}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(() => {
  up?.stop();
  tmp?.cleanup();
});

test('lists the services as models', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['chat']);
});

test('chat completion through the gateway', async () => {
  const r = await client.chat.completions.create({
    model: 'chat',
    messages: [{ role: 'user', content: 'Hello!' }],
    max_tokens: 10,
    ignore_eos: true,
  });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.usage.completion_tokens, 10);
});

test('streaming chat through the gateway, chunk by chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'chat',
    messages: [{ role: 'user', content: 'Stream please.' }],
    max_tokens: 8,
    ignore_eos: true,
    stream: true,
  });
  let chunks = 0;
  let sawUsage = false;
  for await (const chunk of stream) {
    if (chunk.usage) sawUsage = true;
    if (chunk.choices[0]?.delta?.content) chunks += 1;
  }
  assert.equal(chunks, 8);
  assert.equal(sawUsage, false, 'the client did not ask for usage');
});

test('legacy completion through the gateway', async () => {
  const r = await client.completions.create({ model: 'chat', prompt: 'Once upon a time', max_tokens: 4, ignore_eos: true });
  assert.equal(r.usage.completion_tokens, 4);
});

test('an unknown model is a NotFoundError', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }), (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError);
    assert.match(err.message, /The model `nope` does not exist/);
    return true;
  });
});

test('an oversized request is refused with 413', async () => {
  await assert.rejects(client.completions.create({ model: 'chat', prompt: 'x'.repeat(100_000) }), (err) => {
    assert.ok(err instanceof OpenAI.APIError);
    assert.equal(err.status, 413);
    assert.match(err.message, /over the limit/);
    return true;
  });
});
