// `npm run build`: the Rust crate to wasm32, wasm-bindgen's `--target web` glue into pkg/, and
// wasm-opt where a working binaryen is installed. Prints the module's size raw and gzipped.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(web, '..');
const pkg = join(web, 'pkg');
const profile = process.env.DIFFATTN_WASM_PROFILE || 'wasm-release';
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, 'target');

function run(cmd, args, opts = {}) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
}

// The CLI and the crate must agree exactly, or the generated glue calls imports that do not exist.
function lockedBindgenVersion() {
  const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
  const m = lock.match(/name = "wasm-bindgen"\nversion = "([^"]+)"/);
  if (!m) throw new Error('Cargo.lock has no wasm-bindgen entry');
  return m[1];
}

const want = lockedBindgenVersion();
let have;
try {
  have = execFileSync('wasm-bindgen', ['--version'], { encoding: 'utf8' }).trim().split(/\s+/)[1];
} catch {
  have = null;
}
if (have !== want) {
  console.error(
    `wasm-bindgen ${have ?? 'is not installed'}${have ? ' is installed' : ''}; this crate needs ${want}. ` +
      `Run web/ci-setup.sh, or: cargo install wasm-bindgen-cli --version ${want}`,
  );
  process.exit(1);
}

run('cargo', ['build', '--lib', '--target', 'wasm32-unknown-unknown', '--profile', profile]);
const built = join(targetDir, 'wasm32-unknown-unknown', profile, 'diffattn.wasm');
run('wasm-bindgen', ['--target', 'web', '--no-typescript', '--out-dir', pkg, '--out-name', 'diffattn', built]);

const wasm = join(pkg, 'diffattn_bg.wasm');
// Debian's binaryen 108 emits modules Chromium rejects (DESIGN.md section 5); only the npm
// binaryen, with the features Rust's wasm32 target emits, is trusted here.
const wasmOpt = join(web, 'node_modules', '.bin', 'wasm-opt');
if (existsSync(wasmOpt) && process.env.DIFFATTN_NO_WASM_OPT !== '1') {
  const features = [
    '--enable-bulk-memory', '--enable-bulk-memory-opt', '--enable-nontrapping-float-to-int',
    '--enable-sign-ext', '--enable-mutable-globals', '--enable-reference-types', '--enable-multivalue',
  ];
  const before = statSync(wasm).size;
  run(wasmOpt, ['-Os', ...features, wasm, '-o', `${wasm}.opt`]);
  renameSync(`${wasm}.opt`, wasm);
  console.log(`wasm-opt: ${before} -> ${statSync(wasm).size} bytes`);
} else {
  console.log('wasm-opt skipped (npm binaryen not installed)');
}

const bytes = readFileSync(wasm);
const gz = gzipSync(bytes, { level: 9 }).length;
const sizes = { raw: bytes.length, gzip: gz };
writeFileSync(join(pkg, 'size.json'), JSON.stringify(sizes) + '\n');
console.log(`pkg/diffattn_bg.wasm: ${(bytes.length / 1024).toFixed(0)} KiB raw, ${(gz / 1024).toFixed(0)} KiB gzipped`);
