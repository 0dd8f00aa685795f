// The official `openai` npm client against the proxy: tests/test_conformance.py runs this with
// `node tests/node/client.mjs` and reads one JSON object from stdout.
//
// Environment:
//   RVR_BASE_URL  the proxy's base URL, ending in /v1
//   RVR_API_KEY   the proxy's API key
//   RVR_CASES     a JSON array of cases: {"name", "kind", "model", ...}; kinds below
//
// Output: {"openai_version": ..., "results": {name: {"ok": true, ...} | {"ok": false, "error": {...}}}}.
// A case that throws is reported, never fatal: one broken case must not hide the others.

import OpenAI from 'openai';
import { readFileSync } from 'node:fs';

const { version } = JSON.parse(
  readFileSync(new URL('./node_modules/openai/package.json', import.meta.url), 'utf8'),
);

const client = new OpenAI({
  baseURL: process.env.RVR_BASE_URL,
  apiKey: process.env.RVR_API_KEY,
  maxRetries: 0,
  timeout: 30_000,
});

const messages = (text) => [{ role: 'user', content: text }];

// Accumulates raw chunks as a client without the SDK's helper would: per choice index, content
// concatenated, tool calls assembled by their `index`, the finish reason kept.
function assemble(chunks) {
  const choices = {};
  let usage = null;
  for (const chunk of chunks) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices ?? []) {
      const choice = (choices[c.index] ??= { content: '', tool_calls: [], finish_reason: null, logprobs: [] });
      const delta = c.delta ?? {};
      if (delta.content) choice.content += delta.content;
      for (const call of delta.tool_calls ?? []) {
        const slot = (choice.tool_calls[call.index] ??= { id: null, type: null, function: { name: '', arguments: '' } });
        if (call.id) slot.id = call.id;
        if (call.type) slot.type = call.type;
        if (call.function?.name) slot.function.name += call.function.name;
        if (call.function?.arguments) slot.function.arguments += call.function.arguments;
      }
      if (c.logprobs?.content) choice.logprobs.push(...c.logprobs.content);
      if (c.finish_reason) choice.finish_reason = c.finish_reason;
    }
  }
  return { choices, usage };
}

const kinds = {
  // A plain chat completion.
  async chat(c) {
    const completion = await client.chat.completions.create({ model: c.model, messages: messages(c.prompt), ...c.extra });
    return { completion };
  },
  // A streamed chat completion, read chunk by chunk.
  async stream(c) {
    const stream = await client.chat.completions.create({
      model: c.model, messages: messages(c.prompt), stream: true, ...c.extra,
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks, assembled: assemble(chunks) };
  },
  // The SDK's streaming helper, which assembles tool calls itself (`finalChatCompletion`).
  async stream_helper(c) {
    const stream = client.chat.completions.stream({ model: c.model, messages: messages(c.prompt), ...c.extra });
    const argumentDeltas = [];
    stream.on('tool_calls.function.arguments.delta', (event) => argumentDeltas.push(event.arguments_delta));
    const completion = await stream.finalChatCompletion();
    return { completion, argument_deltas: argumentDeltas.length };
  },
  // A text completion.
  async completion(c) {
    const completion = await client.completions.create({ model: c.model, prompt: c.prompt, ...c.extra });
    return { completion };
  },
  async models() {
    const models = [];
    for await (const model of client.models.list()) models.push(model);
    return { models };
  },
  async model(c) {
    return { model: await client.models.retrieve(c.model) };
  },
};

async function run(c) {
  try {
    return { ok: true, ...(await kinds[c.kind](c)) };
  } catch (err) {
    const error = { class: err?.constructor?.name, message: String(err?.message ?? err) };
    if (err instanceof OpenAI.APIError) {
      Object.assign(error, { status: err.status ?? null, type: err.type ?? null, code: err.code ?? null, param: err.param ?? null, body: err.error ?? null });
    }
    return { ok: false, error };
  }
}

const cases = JSON.parse(process.env.RVR_CASES ?? '[]');
const results = {};
await Promise.all(cases.map(async (c) => { results[c.name] = await run(c); }));
process.stdout.write(JSON.stringify({ openai_version: version, node_version: process.version, results }) + '\n');
