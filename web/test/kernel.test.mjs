// diffAttention in the browser (SwiftShader, on whichever kernel path the browser build selects)
// against the float64 CPU reference (`diffattn attn --reference`) on the same inputs, with the
// native conformance tests' bound for f32 K/V: relative L2 error at most 1e-5.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { demoPage, native, writeSafetensors, readSafetensors, random, relL2, tmp } from './helpers.mjs';

const fixture = demoPage();

const CASES = [
  { name: 'prefill, causal, GQA', heads: 4, kvHeads: 2, headDim: 64, n: 37, s: 37, causal: true, pastLen: 0, mode: 'diff' },
  { name: 'chunk after a cache, causal', heads: 6, kvHeads: 2, headDim: 32, n: 9, s: 70, causal: true, pastLen: 61, mode: 'diff' },
  { name: 'decode, one query', heads: 4, kvHeads: 1, headDim: 64, n: 1, s: 300, causal: true, pastLen: 299, mode: 'diff' },
  { name: 'not causal', heads: 2, kvHeads: 2, headDim: 16, n: 20, s: 33, causal: false, pastLen: 0, mode: 'diff' },
  { name: 'standard attention', heads: 4, kvHeads: 2, headDim: 64, n: 17, s: 17, causal: true, pastLen: 0, mode: 'standard' },
];

for (const [i, c] of CASES.entries()) {
  test(`diffAttention matches the float64 reference: ${c.name}`, async (ctx) => {
    const qh = c.mode === 'diff' ? 2 * c.heads : c.heads;
    const t = {
      q: { shape: [c.n, qh, c.headDim], data: random(10 * i + 1, c.n * qh * c.headDim) },
      k: { shape: [c.s, c.kvHeads, c.headDim], data: random(10 * i + 2, c.s * c.kvHeads * c.headDim) },
      v: { shape: [c.s, c.kvHeads, c.headDim], data: random(10 * i + 3, c.s * c.kvHeads * c.headDim) },
      lam: { shape: [c.n, c.heads], data: random(10 * i + 4, c.n * c.heads).map((x) => 3 * x) },
    };
    // Large-ish logits, as a trained model produces, exercise the online softmax's max shift.
    t.q.data = t.q.data.map((x) => 4 * x);
    const dir = tmp();
    writeSafetensors(join(dir, 'in.safetensors'), t);
    const args = ['attn', '--reference', '--in', join(dir, 'in.safetensors'), '--out', join(dir, 'ref.safetensors'), '--mode', c.mode, '--past-len', String(c.pastLen)];
    if (c.causal) args.push('--causal');
    native(args);
    const want = readSafetensors(join(dir, 'ref.safetensors')).out;
    assert.equal(want.dtype, 'F64');
    assert.deepEqual(want.shape, [c.n, c.heads, c.headDim]);

    const got = await fixture.page.evaluate(
      async ({ t, c }) => {
        const f = (a) => new Float32Array(a);
        const out = await window.diffattn.diffAttention({
          q: f(t.q), k: f(t.k), v: f(t.v), lam: c.mode === 'diff' ? f(t.lam) : undefined,
          heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, causal: c.causal, pastLen: c.pastLen, mode: c.mode,
        });
        return Array.from(out);
      },
      { t: { q: Array.from(t.q.data), k: Array.from(t.k.data), v: Array.from(t.v.data), lam: Array.from(t.lam.data) }, c },
    );
    assert.equal(got.length, want.data.length);
    assert.ok(got.every(Number.isFinite), 'non-finite output');
    const err = relL2(got, want.data);
    ctx.diagnostic(`relative L2 against float64: ${err.toExponential(2)}`);
    assert.ok(err <= 1e-5, `relative L2 ${err.toExponential(2)} > 1e-5`);
  });
}

test('diffAttention rejects bad shapes with a typed error', async () => {
  const e = await fixture.page.evaluate(async () => {
    try {
      await window.diffattn.diffAttention({
        q: new Float32Array(100), k: new Float32Array(128), v: new Float32Array(128), lam: new Float32Array(2),
        heads: 1, kvHeads: 1, headDim: 64,
      });
      return null;
    } catch (e) {
      return { name: e.name, kind: e.kind, message: e.message };
    }
  });
  assert.ok(e, 'no error thrown');
  assert.equal(e.name, 'DiffAttnError');
  assert.equal(e.kind, 'Shape');
  assert.match(e.message, /tensor `q`/);
});
