// The Engine API on the main thread: attention maps (against the float64 reference), and the limit
// check before any download.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { demoPage, native, nativeTokens } from './helpers.mjs';

const fixture = demoPage();

// Probabilities and lambdas lie in [0, 1]; f32 through three layers of the shipped model stays
// within about 1e-6 of float64, so 1e-5 leaves room for summation order and nothing more.
const MAPS_MAX_ABS = 1e-5;

test('a model too large for the adapter fails before downloading, naming the limit', async () => {
  const e = await fixture.page.evaluate(async () => {
    // The 4 GiB embedding alone would be split across bindings by rows; the 4 GiB MLP matrices
    // cannot be.
    const config = {
      vocab_size: 262144, hidden_size: 8192, num_hidden_layers: 2, num_attention_heads: 64, num_key_value_heads: 8,
      head_dim: 128, intermediate_size: 262144, rope_theta: 10000, rms_norm_eps: 1e-5, max_position_embeddings: 4096,
      tie_word_embeddings: true, attention: 'diff_v2', rope_pairs: 'adjacent',
    };
    try {
      // The weights URL does not exist: the limit check must fail first.
      await window.diffattn.Engine.load({ config, weights: '/models/missing.safetensors', tokenizer: '/models/missing.json' });
      return null;
    } catch (e) {
      return { name: e.name, kind: e.kind, message: e.message };
    }
  });
  assert.ok(e, 'no error thrown');
  assert.equal(e.kind, 'Limit', e.message);
  assert.match(e.message, /model\.layers\.\d+\.[a-z_.]+\.weight needs \d+ bytes but the adapter's max_(storage_buffer_binding|buffer)_size is/);
});

test('attention maps match the float64 reference; generation aborts and resumes', async (t) => {
  const r = await fixture.page.evaluate(async () => {
    const engine = await window.diffattn.Engine.load('/models/diffv2-small/', { attentionMaps: true });
    const m = engine.attentionMaps('The cat sat on the mat because it was warm.', { layer: 3, head: 2 });
    const info = engine.info();
    // Main-thread generation: a second concurrent one is refused, an abort ends the first with
    // an AbortError, and the engine then generates again.
    const ac = new AbortController();
    const it = engine.generate('The cat', { maxTokens: 200, signal: ac.signal, seed: 3 });
    const first = await it.next();
    let busy = null;
    try {
      await engine.generate('x').next();
    } catch (e) {
      busy = e.kind;
    }
    ac.abort();
    let aborted = null;
    try {
      while (!(await it.next()).done);
    } catch (e) {
      aborted = e.name;
    }
    const stopReason = engine.stats.stopReason;
    const after = [];
    for await (const p of engine.generate('The cat', { maxTokens: 3, temperature: 0 })) after.push(p.id);
    engine.dispose();
    return {
      n: m.tokens.length, ids: Array.from(m.ids), p1: Array.from(m.p1), p2: Array.from(m.p2), lam: Array.from(m.lambda), diff: Array.from(m.diff), info,
      gen: { first: first.value, busy, aborted, stopReason, after },
    };
  });
  const { n } = r;
  assert.ok(n > 5);
  // The browser computes the maps in f32 on the CPU (wasm); the oracle is the float64 model on the
  // same weights and ids (`diffattn maps`).
  const ref = JSON.parse(native(['maps', '--model', 'models/diffv2-small', '--ids', r.ids.join(','), '--layer', '3', '--head', '2']));
  assert.deepEqual(ref.ids, r.ids);
  for (const key of ['p1', 'p2', 'lam', 'diff']) {
    const want = ref[key === 'lam' ? 'lambda' : key];
    const got = r[key];
    assert.equal(got.length, want.length, key);
    const maxAbs = Math.max(...got.map((g, i) => Math.abs(g - want[i])));
    t.diagnostic(`${key}: max abs error against float64 ${maxAbs.toExponential(2)}`);
    assert.ok(maxAbs <= MAPS_MAX_ABS, `${key}: max abs error ${maxAbs.toExponential(2)} > ${MAPS_MAX_ABS}`);
  }
  assert.ok(Number.isInteger(r.gen.first.id));
  assert.equal(r.gen.busy, 'Busy');
  assert.equal(r.gen.aborted, 'AbortError');
  assert.equal(r.gen.stopReason, 'cancelled');
  assert.equal(r.gen.after.length, 3);
  assert.equal(r.info.config.num_hidden_layers, 6);
  assert.equal(r.info.weightDtype, 'f16');
  assert.ok(r.info.gpu.limits.maxStorageBufferBindingSize > 0);
});

// Log-probabilities and alternatives per piece, and the logit bias, against the native CLI on the
// same model (its GPU path is checked against the CPU sampler's float64 log-softmax natively).
// Between two adapters f32 sums differ in the last bits: log-probabilities agree to 1e-3, and the
// order of alternatives is compared only where neighbours are that far apart.
const LOGPROB_TOL = 1e-3;

test('pieces carry log-probabilities and alternatives; a logit bias bans a token', async () => {
  const prompt = 'The cat sat on the';
  const r = await fixture.page.evaluate(async (prompt) => {
    const engine = await window.diffattn.Engine.load('/models/diffv2-small/');
    const run = async (opts) => {
      const out = [];
      for await (const p of engine.generate(prompt, { maxTokens: 6, temperature: 0, ...opts })) out.push(p);
      return out;
    };
    const plain = await run({ topLogprobs: 3 });
    const banned = plain[0].id;
    const biased = await run({ logitBias: { [banned]: -Infinity, 7: 0.5 } });
    const refused = [];
    for (const logitBias of [{ 1000000: 1 }, [[3, Infinity]], { 3: NaN }]) {
      try {
        await run({ logitBias });
        refused.push(null);
      } catch (e) {
        refused.push(e.kind);
      }
    }
    for (const topLogprobs of [21, 2.5]) {
      try {
        await run({ topLogprobs });
        refused.push(null);
      } catch (e) {
        refused.push(e.kind);
      }
    }
    engine.dispose();
    return { plain, banned, biased, refused };
  }, prompt);
  const tokens = (extra) =>
    nativeTokens(native(['generate', '--model', 'models/diffv2-small', '--prompt', prompt, '--max-tokens', '6', '--temperature', '0', '--json', ...extra]));
  const want = tokens(['--top-logprobs', '3']);
  assert.deepEqual(r.plain.map((p) => p.id), want.map((t) => t.id));
  r.plain.forEach((p, i) => {
    const w = want[i];
    assert.ok(Math.abs(p.logprob - w.logprob) <= LOGPROB_TOL, `piece ${i}: logprob ${p.logprob} against ${w.logprob}`);
    assert.equal(p.top.length, 3);
    assert.equal(p.top[0].id, p.id, `piece ${i}: greedy picks the most likely`);
    for (let k = 0; k < 3; k++) {
      const gapAbove = k === 0 ? Infinity : w.top[k - 1].logprob - w.top[k].logprob;
      const gapBelow = k === 2 ? Infinity : w.top[k].logprob - w.top[k + 1].logprob;
      if (gapAbove > LOGPROB_TOL && gapBelow > LOGPROB_TOL) assert.equal(p.top[k].id, w.top[k].id, `piece ${i} alternative ${k}`);
      const same = w.top.find((a) => a.id === p.top[k].id);
      if (same) assert.ok(Math.abs(same.logprob - p.top[k].logprob) <= LOGPROB_TOL, `piece ${i} alternative ${k}`);
    }
  });
  assert.ok(r.biased.every((p) => p.id !== r.banned && p.top === undefined), JSON.stringify(r.biased));
  const nativeBiased = tokens(['--logit-bias', `${r.banned}=-inf`, '--logit-bias', '7=0.5']);
  assert.deepEqual(r.biased.map((p) => p.id), nativeBiased.map((t) => t.id));
  assert.deepEqual(r.refused, ['Config', 'Config', 'Config', 'Config', 'Config']);
});
