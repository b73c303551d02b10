// A tiny static server for the demo: www/ at /, the npm package as if installed at
// /node_modules/diffattn/, and the models at /models/. Loopback only; no dependencies.
//   node www/serve.mjs [--port 8080]
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..');

const MOUNTS = [
  ['/node_modules/diffattn/', join(root, 'web')],
  ['/models/', join(root, 'models')],
  // Models too large to commit, fetched into the ignored target/models (see web/test/chat.test.mjs).
  ['/target-models/', join(root, 'target', 'models')],
  ['/', here],
];

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  // application/wasm lets the browser compile while downloading.
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ts': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
};

function resolvePath(urlPath, mounts) {
  let p;
  try {
    p = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  for (const [prefix, dir] of mounts) {
    if (!p.startsWith(prefix)) continue;
    const rel = p.slice(prefix.length) || 'index.html';
    const file = normalize(join(dir, rel));
    // No way out of the mounted directory (and no dotfiles, node_modules of the package etc.).
    if (!file.startsWith(dir + sep) || /(^|[\\/])(\.|node_modules)/.test(file.slice(dir.length))) return null;
    return file;
  }
  return null;
}

/**
 * Starts the server. `mounts` (`[[urlPrefix, dir]]`) are served before the standard ones;
 * `isolated` adds the headers that make pages cross-origin isolated (COOP/COEP), which
 * SharedArrayBuffer and so multi-threaded WASM (wllama's, in web/bench/browser.mjs) need.
 */
export function start({ port = 0, host = '127.0.0.1', quiet = true, mounts = [], isolated = false } = {}) {
  const all = [...mounts, ...MOUNTS];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const file = resolvePath(url.pathname, all);
    let st;
    try {
      st = file && statSync(file);
    } catch {
      st = null;
    }
    if (st?.isDirectory()) {
      res.writeHead(301, { location: url.pathname.replace(/\/?$/, '/') });
      return res.end();
    }
    if (!st?.isFile() || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(st ? 405 : 404, { 'content-type': 'text/plain' });
      return res.end(st ? 'method not allowed\n' : 'not found\n');
    }
    const isolation = isolated ? { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' } : {};
    res.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': st.size,
      'cache-control': 'no-cache',
      ...isolation,
    });
    if (!quiet) console.log(`${req.method} ${url.pathname} ${st.size}`);
    if (req.method === 'HEAD') return res.end();
    createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok({ server, url: `http://${host}:${server.address().port}/` }));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf('--port');
  const port = i > 0 ? Number(process.argv[i + 1]) : 8080;
  const { url } = await start({ port, quiet: !process.argv.includes('--verbose') });
  console.log(`diffattn demo: ${url}  (model: ${url}models/diffv2-small/)`);
}
