// Without --enable-unsafe-webgpu, headless Chromium offers no adapter: the page must say so and
// what to enable, not hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { browser, server, open, waitState } from './helpers.mjs';

test('a browser without WebGPU gets a clear error', async () => {
  const srv = await server();
  const b = await browser({ webgpu: false });
  try {
    const page = await open(b, srv.url);
    const st = await waitState(page, ['error'], 60_000);
    assert.equal(st.state, 'error');
    assert.match(st.error, /WebGPU is not available/);
    assert.match(st.error, /--enable-unsafe-webgpu/);
    const shown = await page.textContent('#error');
    assert.equal(shown, st.error);
    assert.ok(await page.isVisible('#error'));
  } finally {
    await b.close();
    srv.server.close();
  }
});
