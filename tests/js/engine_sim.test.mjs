// The official openai npm client against engine-sim, as an application would use it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { scratch, synthModel, startEngineSim } from './harness.mjs';

let tmp, engine, client;

before(async () => {
  tmp = scratch();
  const model = synthModel(tmp.dir, 'js-model', '16MiB');
  engine = await startEngineSim(tmp.dir, model, ['--served-model-name', 'js-model', '--time-scale', '20',
                                                 '--max-model-len', '1024']);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${engine.port}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(() => {
  engine?.stop();
  tmp?.cleanup();
});

test('lists the served model', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['js-model']);
});

test('answers a chat completion', async () => {
  const r = await client.chat.completions.create({
    model: 'js-model',
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is Loadstar?' }],
    max_tokens: 16,
    // vLLM's extension, passed through by the SDK as-is.
    ignore_eos: true,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 16);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 16);
});

test('streams a chat completion token by token, with usage at the end', async () => {
  const stream = await client.chat.completions.create({
    model: 'js-model',
    messages: [{ role: 'user', content: 'Count to ten.' }],
    max_tokens: 12,
    ignore_eos: true,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let contentChunks = 0;
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta?.content) {
      text += choice.delta.content;
      contentChunks += 1;
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  assert.equal(contentChunks, 12);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 12);
  assert.ok(text.length > 12);
});

test('answers a legacy completion', async () => {
  const r = await client.completions.create({ model: 'js-model', prompt: 'Once upon a time', max_tokens: 5, ignore_eos: true });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.usage.completion_tokens, 5);
  assert.equal(typeof r.choices[0].text, 'string');
});

test('returns embeddings', async () => {
  const r = await client.embeddings.create({ model: 'js-model', input: ['hello world', 'goodbye'] });
  assert.equal(r.data.length, 2);
  assert.equal(r.data[0].embedding.length, 384);
});

test('an unknown model is a NotFoundError with the message', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-nope', messages: [{ role: 'user', content: 'hi' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `got ${err?.constructor?.name}`);
      assert.equal(err.status, 404);
      assert.match(err.message, /The model `gpt-nope` does not exist/);
      return true;
    },
  );
});

test('a prompt longer than the context is a BadRequestError', async () => {
  await assert.rejects(
    client.completions.create({ model: 'js-model', prompt: ' word'.repeat(1100), max_tokens: 4 }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.match(err.message, /maximum context length is 1024 tokens/);
      return true;
    },
  );
});
