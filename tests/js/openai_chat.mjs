// The official openai client as a command, for tests that drive a gateway
// they do not start themselves (the real-node test reaches the gateway
// Service's cluster IP): a chat completion and a streamed one with usage.
//
//   node tests/js/openai_chat.mjs BASE_URL MODEL [MAX_TOKENS]
//
// Prints one JSON line: {reply: {role, content, usage}, stream: {chunks, usage}}.
// Exits 1 with the client's error on failure.
import OpenAI from 'openai';

const [baseURL, model, maxTokens = '6'] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error('usage: openai_chat.mjs BASE_URL MODEL [MAX_TOKENS]');
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY ?? 'unused', maxRetries: 0, timeout: 60_000 });
try {
  const r = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'Hello from a real node!' }],
    max_tokens: Number(maxTokens),
  });
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'Stream please.' }],
    max_tokens: Number(maxTokens),
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0 && chunk.choices[0].delta.content) chunks++;
    if (chunk.usage) usage = chunk.usage;
  }
  console.log(JSON.stringify({
    reply: { role: r.choices[0].message.role, content: r.choices[0].message.content, usage: r.usage },
    stream: { chunks, usage },
  }));
} catch (e) {
  console.error(`openai_chat: ${e.status ?? ''} ${e.message}`);
  process.exit(1);
}
