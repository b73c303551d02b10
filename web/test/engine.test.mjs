// The Engine API on the main thread: attention maps (against the float64 reference), and the limit
// check before any download.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { demoPage, native } from './helpers.mjs';

const fixture = demoPage();

// Probabilities and lambdas lie in [0, 1]; f32 through three layers of the shipped model stays
// within about 1e-6 of float64, so 1e-5 leaves room for summation order and nothing more.
const MAPS_MAX_ABS = 1e-5;

test('a model too large for the adapter fails before downloading, naming the limit', async () => {
  const e = await fixture.page.evaluate(async () => {
    const config = {
      vocab_size: 262144, hidden_size: 8192, num_hidden_layers: 2, num_attention_heads: 64, num_key_value_heads: 8,
      head_dim: 128, intermediate_size: 28672, rope_theta: 10000, rms_norm_eps: 1e-5, max_position_embeddings: 4096,
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
  assert.match(e.message, /model\.embed_tokens\.weight needs \d+ bytes but the adapter's max_(storage_buffer_binding|buffer)_size is/);
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
