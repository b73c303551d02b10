// The demo page with the shipped model: greedy generation equals the native CLI's, the attention
// viewer (axis labels, hover read-out, colour scales, all heads), a stopped generation leaves the
// engine usable, and a screenshot is kept in test-results/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { artefacts, browser, server, open, waitState, nativeGreedyIds } from './helpers.mjs';

const PROMPT = 'Once upon a time, there was a little girl named Lily. She';
const SAMPLING = { temperature: '0', repeatPenalty: '1.1', topK: '40', topP: '0.95', seed: '1' };
const N = 24;

let srv, b, page, nativeIds;
before(async () => {
  srv = await server();
  b = await browser();
  page = await open(b, srv.url);
  nativeIds = nativeGreedyIds(PROMPT, N);
  assert.equal(nativeIds.length, N, `native generated ${nativeIds.length} tokens`);
  await waitState(page, ['ready']);
});
after(async () => {
  await b?.close();
  srv?.server.close();
});

async function setControls(values) {
  for (const [id, v] of Object.entries(values)) await page.fill(`#${id}`, v);
}

async function generate(maxTokens) {
  await setControls({ ...SAMPLING, maxTokens: String(maxTokens) });
  await page.fill('#prompt', PROMPT);
  await page.click('#generate');
  return waitState(page, ['done']);
}

test('the page shows the adapter, the path and the attention maps', async () => {
  const adapter = await page.textContent('#adapter');
  assert.match(adapter, /adapter: .+; path: .+f32 arithmetic/);
  const st = await page.evaluate(() => window.__diffattn);
  assert.ok(st.maps && st.maps.n > 3, `maps: ${JSON.stringify(st.maps)}`);
});

test(`greedy generation of ${N} tokens equals the native CLI`, async () => {
  const st = await generate(N);
  assert.deepEqual(st.ids, nativeIds);
  assert.ok(st.text.length > 0);
  const tps = st.tokensPerSecond;
  assert.ok(tps > 0, `tokens/s: ${tps}`);
  const firstTokenMs = st.firstTokenMs;
  assert.ok(firstTokenMs > 0, `first token after ${firstTokenMs} ms`);
  writeFileSync(join(artefacts, 'perf.json'), JSON.stringify({ tokensPerSecond: tps, firstTokenMs, tokens: st.ids.length }) + '\n');
  console.log(`# browser decode: ${tps.toFixed(1)} tokens/s over ${st.ids.length} tokens, first token after ${firstTokenMs.toFixed(0)} ms`);
});

test('the attention viewer labels its axes, reads out the cell under the pointer and shows every head', async () => {
  const st = await page.evaluate(() => window.__diffattn);
  const { n, heads, tokens } = st.maps;
  assert.equal(heads, 6);
  assert.equal(tokens.length, n);
  for (const fig of ['fig-p1', 'fig-p2', 'fig-diff']) {
    // Keys across the top, queries down the side, both the prompt's tokens in order.
    for (const axis of ['xlabels', 'ylabels']) {
      const labels = await page.$$eval(`#${fig} .${axis} span`, (xs) => xs.map((x) => ({ token: x.dataset.token, text: x.textContent })));
      assert.deepEqual(labels.map((l) => l.token), tokens, `${fig} ${axis}`);
      assert.ok(labels.every((l) => l.text.length > 0), `${fig} ${axis}: a token without its label`);
    }
    const scale = await page.$eval(`#${fig} .scale`, (e) => [e.querySelector('.scale-min').textContent, e.querySelector('.scale-max').textContent]);
    const diverging = fig === 'fig-diff';
    assert.equal(Number(scale[0]), diverging ? -Number(scale[1]) : 0, `${fig} scale ${scale}`);
    assert.ok(Number(scale[1]) > 0 && Number(scale[1]) <= 1, `${fig} scale ${scale}`);
  }
  // Point at the cell of query n-1, key 1 of the difference map: the read-out names both tokens
  // and gives that cell's values.
  const [i, j] = [n - 1, 1];
  const box = await page.locator('#fig-diff canvas.map').boundingBox();
  await page.locator('#fig-diff canvas.map').hover({ position: { x: ((j + 0.5) / n) * box.width, y: ((i + 0.5) / n) * box.height } });
  const hover = await page.evaluate(() => window.__diffattn.hover);
  assert.deepEqual([hover.i, hover.j], [i, j]);
  const text = await page.textContent('#hover');
  const d = st.mapsData;
  const k = i * n + j;
  assert.ok(text.includes(`query ${i} ${JSON.stringify(tokens[i])} → key ${j} ${JSON.stringify(tokens[j])}`), text);
  for (const [name, v, digits] of [['softmax 1', d.p1[k], 4], ['softmax 2', d.p2[k], 4], ['λ', d.lambda[i], 3], ['difference', d.diff[k], 4]]) {
    assert.ok(text.includes(`${name} ${v.toFixed(digits)}`), `${name} ${v} in: ${text}`);
  }
  // One card per head, each with its difference map and a λ plot of one point per query token.
  const cards = await page.$$eval('#heads .head-card', (cs) =>
    cs.map((c) => ({ head: c.dataset.head, title: c.querySelector('.head-title').textContent, canvas: c.querySelector('canvas')?.width, points: c.querySelector('svg.lambda-plot polyline').getAttribute('points').trim().split(/\s+/).length })),
  );
  assert.equal(cards.length, heads);
  cards.forEach((c, h) => {
    assert.equal(c.head, String(h));
    assert.match(c.title, new RegExp(`^head ${h} · mean λ 0\\.\\d\\d$`));
    assert.equal(c.canvas, n);
    assert.equal(c.points, n);
  });
  const mean = d.lambda.reduce((a, b) => a + b, 0) / n;
  assert.ok(cards[st.maps.head].title.endsWith(mean.toFixed(2)));
  assert.match(await page.textContent('#caption'), /row i is query token i .* column j is key token j/s);
  await page.setViewportSize({ width: 1100, height: 900 });
  await page.screenshot({ path: join(artefacts, 'demo.png'), fullPage: true });
});

test('stopping a generation midway leaves the engine usable', async () => {
  await setControls({ temperature: '0.8', maxTokens: '400', seed: '7' });
  await page.click('#generate');
  await page.waitForFunction(() => window.__diffattn.pieces >= 4, null, { timeout: 120_000, polling: 50 });
  await page.click('#stop');
  const stopped = await waitState(page, ['stopped', 'done']);
  assert.equal(stopped.state, 'stopped');
  assert.ok(stopped.pieces < 400);
  const again = await generate(N);
  assert.deepEqual(again.ids, nativeIds);
  console.log(`# browser decode, second run: ${again.tokensPerSecond.toFixed(1)} tokens/s, first token after ${again.firstTokenMs.toFixed(0)} ms`);
});
