// What `npm pack` ships: exactly the files the import needs, of a sane size, at the crate's version.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');

// pkg/ is built by `pretest` (and by `prepack` for a real pack), so the scripts are skipped here.
function packList() {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: web, encoding: 'utf8' });
  return JSON.parse(out)[0];
}

test('the tarball holds exactly what the import needs', () => {
  const pack = packList();
  const files = pack.files.map((f) => f.path).sort();
  const src = ['cache.js', 'core.js', 'engine.js', 'index.d.ts', 'index.js', 'worker-client.d.ts', 'sha256.js', 'worker-client.js', 'worker.js'];
  const want = ['README.md', 'package.json', 'pkg/diffattn.js', 'pkg/diffattn_bg.wasm', ...src.map((f) => `src/${f}`)].sort();
  assert.deepEqual(files, want);
  // Every module the exports map names is in the tarball.
  const pkg = JSON.parse(readFileSync(join(web, 'package.json'), 'utf8'));
  const targets = Object.values(pkg.exports).flatMap((e) => (typeof e === 'string' ? [e] : Object.values(e)));
  for (const t of targets) assert.ok(files.includes(t.replace(/^\.\//, '')), `exports names ${t}`);
  const wasm = pack.files.find((f) => f.path === 'pkg/diffattn_bg.wasm');
  assert.ok(wasm.size > 500_000 && wasm.size < 8_000_000, `wasm of ${wasm.size} bytes`);
  assert.ok(pack.size < 4_000_000, `tarball of ${pack.size} bytes`);
  console.log(`# npm tarball: ${pack.size} bytes packed, ${pack.unpackedSize} unpacked, wasm ${wasm.size} bytes`);
});

test('the package and the crate have one version, and packing builds the wasm', () => {
  const pkg = JSON.parse(readFileSync(join(web, 'package.json'), 'utf8'));
  const cargo = readFileSync(join(web, '..', 'Cargo.toml'), 'utf8');
  const crate = /^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms.exec(cargo)?.[1];
  assert.equal(pkg.version, crate);
  assert.equal(pkg.scripts.prepack, 'node scripts/build.mjs', 'a clean clone must not pack without pkg/');
});
