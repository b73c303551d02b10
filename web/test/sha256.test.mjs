// The streaming SHA-256 the model cache hashes downloads with, against Node's (OpenSSL's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Sha256 } from '../src/sha256.js';
import { random } from './helpers.mjs';

test('equals OpenSSL on every padding case, fed in pieces of any size', () => {
  // Lengths around the 55/56/64-byte padding edges, and one that spans many blocks.
  const lengths = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 65_537];
  const noise = random(5, 70_000);
  const bytes = new Uint8Array(noise.length);
  for (let i = 0; i < noise.length; i++) bytes[i] = Math.floor((noise[i] + 1) * 128) & 0xff;
  for (const n of lengths) {
    const data = bytes.subarray(0, n);
    const want = createHash('sha256').update(data).digest('hex');
    for (const piece of [1, 7, 64, 1 << 20]) {
      const h = new Sha256();
      for (let i = 0; i < n; i += piece) h.update(data.subarray(i, i + piece));
      assert.equal(h.length, n);
      assert.equal(h.hex(), want, `${n} bytes in pieces of ${piece}`);
    }
  }
  assert.equal(new Sha256().update(new TextEncoder().encode('abc')).hex(), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});
