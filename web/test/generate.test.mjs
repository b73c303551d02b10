// The demo page with the shipped model: greedy generation equals the native CLI's, a stopped
// generation leaves the engine usable, and a screenshot is kept in test-results/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { artefacts, browser, server, open, waitState, native } from './helpers.mjs';

const PROMPT = 'Once upon a time, there was a little girl named Lily. She';
const SAMPLING = { temperature: '0', repeatPenalty: '1.1', topK: '40', topP: '0.95', seed: '1' };
const N = 24;

let srv, b, page, nativeIds;
before(async () => {
  srv = await server();
  b = await browser();
  page = await open(b, srv.url);
  const out = native([
    'generate', '--model', 'models/diffv2-small', '--prompt', PROMPT, '--max-tokens', String(N), '--json',
    '--temperature', '0', '--repeat-penalty', '1.1', '--seed', '1',
  ]);
  nativeIds = out
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((o) => Number.isInteger(o.id))
    .map((o) => o.id);
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
  writeFileSync(join(artefacts, 'perf.json'), JSON.stringify({ tokensPerSecond: tps, tokens: st.ids.length }) + '\n');
  console.log(`# browser decode: ${tps.toFixed(1)} tokens/s over ${st.ids.length} tokens`);
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
  console.log(`# browser decode, second run: ${again.tokensPerSecond.toFixed(1)} tokens/s`);
});
