// The official openai npm client against `loadstar up` running llama.cpp's
// llama-server (a real engine; scripts/llama-server.sh builds it) on a
// synthetic GGUF with a real tokenizer. Skipped without llama-server unless
// LOADSTAR_REQUIRE_LLAMA=1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import OpenAI from 'openai';
import { scratch, startUp } from './harness.mjs';

const script = new URL('../../scripts/llama-server.sh', import.meta.url).pathname;
const have = spawnSync(script, ['path']).status === 0;
if (!have && process.env.LOADSTAR_REQUIRE_LLAMA === '1') throw new Error('no llama-server (scripts/llama-server.sh build)');

const yaml = `apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny-gguf}
spec: {source: "synth://tiny-gguf", format: gguf, size: 26Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny-gguf
  replicas: 1
  engine: {name: llama.cpp, contextLength: 1024, maxSequences: 2, threads: 1}
`;

let tmp, up, client;

before(async () => {
  if (!have) return;
  tmp = scratch();
  up = await startUp(tmp.dir, yaml, 'chat', 1);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${up.port}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(() => {
  up?.stop();
  tmp?.cleanup();
});

test('chat, a stream with usage, and a completion from llama-server through the gateway', { skip: !have }, async () => {
  const r = await client.chat.completions.create({
    model: 'chat',
    messages: [{ role: 'user', content: 'Hello!' }],
    max_tokens: 6,
  });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.usage.prompt_tokens > 3 && r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 6);

  const stream = await client.chat.completions.create({
    model: 'chat',
    messages: [{ role: 'user', content: 'Stream please.' }],
    max_tokens: 5,
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices[0]?.delta?.content) chunks += 1;
  }
  assert.ok(chunks >= 1);
  // A token can decode to no text yet (part of a UTF-8 character, which
  // llama-server holds until it is whole), so content chunks can be fewer
  // than the tokens the usage counts.
  assert.ok(usage && usage.completion_tokens >= chunks && usage.completion_tokens <= 5,
    JSON.stringify(usage) + ` with ${chunks} content chunks`);

  const c = await client.completions.create({ model: 'chat', prompt: 'Once upon a time', max_tokens: 3 });
  assert.equal(c.object, 'text_completion');
});
