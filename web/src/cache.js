// The browser model cache: downloaded model files kept in the Cache API, so that a page reload
// or a visit the next day loads from disk.
//
// Two caches: `diffattn-models-v1` holds each file's bytes under its URL; `diffattn-models-meta-v1`
// holds, under the same URL, what a complete copy measures ({size, sha256}). The meta entry is
// written only after the whole download arrived and hashed as expected and the bytes were
// stored, so an interrupted download or a failed write leaves no entry that would be trusted.
// A cached copy is used only after it hashes to its meta entry (and to the model's manifest.json,
// when there is one); otherwise it is deleted and the file downloaded again.
import { DiffAttnError } from './core.js';
import { Sha256 } from './sha256.js';

const DATA = 'diffattn-models-v1';
const META = 'diffattn-models-meta-v1';
const MANIFEST_FORMAT = 'diffattn-manifest';

/** Whether this context has the Cache API (it needs a secure context: https or localhost). */
export function cacheAvailable() {
  return typeof globalThis.caches?.open === 'function';
}

function href(url) {
  return new URL(String(url), globalThis.location?.href).href;
}

function mib(n) {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

async function hashStream(body, limit) {
  const h = new Sha256();
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    h.update(value);
    // A copy longer than it should be is wrong already: stop reading it.
    if (h.length > limit) {
      await reader.cancel();
      return { size: h.length, sha256: null };
    }
  }
  return { size: h.length, sha256: h.hex() };
}

/** Turns a failed cache write into an error that says what happened and what to do. */
async function storageError(e, url, size) {
  const name = decodeURIComponent(new URL(url).pathname.split('/').pop() || url);
  const what = `${name}${size ? ` (${mib(size)})` : ''} was not cached`;
  const after = 'it was loaded from the network and will be downloaded again next time';
  if (e?.name === 'QuotaExceededError') {
    let used = '';
    try {
      const est = await navigator.storage?.estimate?.();
      if (est?.quota) used = `; this site uses ${mib(est.usage ?? 0)} of its ${mib(est.quota)} quota`;
    } catch {
      // The estimate only adds detail to the message.
    }
    return new DiffAttnError(
      `the browser's storage quota is exhausted: ${what}${used}. The model still loads (${after}); free space with modelCache.clear() or modelCache.delete(url), or in the browser's site settings.`,
      'Quota',
    );
  }
  return new DiffAttnError(`the model cache could not be written: ${what} (${e?.name ?? 'Error'}: ${e?.message ?? e}); ${after}`, 'Cache');
}

/**
 * The files of one model load: cached copies checked against the manifest (if any), downloads
 * hashed on the way in and stored once complete. `cache: false` makes it a plain fetcher.
 */
export class ModelFiles {
  #signal;
  #useCache;
  #onCacheError;
  #manifest = null;
  #manifestBase = null;
  #stores = null;

  constructor({ signal, cache = true, onCacheError } = {}) {
    this.#signal = signal;
    this.#useCache = cache !== false && cacheAvailable();
    this.#onCacheError = onCacheError ?? ((e) => console.warn(e.message));
  }

  async #open() {
    this.#stores ??= Promise.all([caches.open(DATA), caches.open(META)]);
    return this.#stores;
  }

  async #fetch(url, { optional = false } = {}) {
    let r;
    try {
      r = await fetch(url, { signal: this.#signal });
    } catch (e) {
      if (this.#signal?.aborted) throw this.#signal.reason;
      throw new DiffAttnError(`${url}: fetch failed (${e.message})`, 'Io');
    }
    if (optional && r.status === 404) return null;
    if (!r.ok) throw new DiffAttnError(`${url}: HTTP ${r.status} ${r.statusText}`, r.status === 404 ? 'NotFound' : 'Io');
    return r;
  }

  /**
   * Reads `manifest.json` in the model directory `base`. It is always asked of the network (it is
   * small, and it is how a changed model is noticed); a cached copy stands in when offline.
   */
  async loadManifest(base) {
    const url = new URL('manifest.json', base).href;
    let text = null;
    let r = null;
    try {
      r = await this.#fetch(url, { optional: true });
    } catch (e) {
      if (this.#signal?.aborted || !this.#useCache) throw e;
      const [data] = await this.#open();
      const cached = await data.match(url);
      if (!cached) throw e;
      text = await cached.text();
    }
    if (r) {
      text = await r.text();
      if (this.#useCache) {
        const [data] = await this.#open();
        await data.put(url, new Response(text, { headers: { 'content-type': 'application/json' } })).catch(() => {});
      }
    }
    if (text === null) return null;
    let m;
    try {
      m = JSON.parse(text);
    } catch (e) {
      throw new DiffAttnError(`${url}: not valid JSON (${e.message})`, 'Format');
    }
    if (m?.format !== MANIFEST_FORMAT || m.version !== 1 || typeof m.files !== 'object' || m.files === null) {
      throw new DiffAttnError(`${url}: not a diffattn manifest (format "${MANIFEST_FORMAT}", version 1; write one with \`diffattn manifest DIR\`)`, 'Format');
    }
    for (const [k, e] of Object.entries(m.files)) {
      if (!Number.isSafeInteger(e?.size) || e.size < 0 || !/^[0-9a-f]{64}$/.test(e?.sha256 ?? '')) {
        throw new DiffAttnError(`${url}: the entry for ${k} needs a size and a 64-digit hex sha256`, 'Format');
      }
    }
    this.#manifest = m.files;
    this.#manifestBase = base;
    return m.files;
  }

  /** Whether the manifest lists `url` (undefined when there is no manifest). */
  listed(url) {
    return this.#manifest ? this.#expected(url) !== null : undefined;
  }

  #expected(url) {
    if (!this.#manifest) return null;
    const base = this.#manifestBase.href;
    if (!url.startsWith(base)) return null;
    return this.#manifest[decodeURIComponent(url.slice(base.length))] ?? null;
  }

  /**
   * Opens one file: `{url, size, fromCache, response}` (size null where nothing says it); null for
   * a missing optional file. Nothing is read yet except a cached copy, which is verified here.
   */
  async open(url, { optional = false } = {}) {
    url = href(url);
    const want = this.#expected(url);
    if (this.#useCache) {
      const hit = await this.#cached(url, want);
      if (hit) return { url, size: hit.size, fromCache: true, response: hit.response, want: hit };
    }
    const response = await this.#fetch(url, { optional });
    if (!response) return null;
    const declared = Number(response.headers.get('content-length'));
    // Content-Length is the body size only when the server did not compress it.
    const exact = declared > 0 && !response.headers.get('content-encoding') ? declared : null;
    return { url, size: want?.size ?? exact, fromCache: false, response, want };
  }

  async #cached(url, want) {
    const [data, meta] = await this.#open();
    const m = await meta.match(url);
    if (!m) return null;
    let rec;
    try {
      rec = await m.json();
    } catch {
      rec = null;
    }
    // Stale (the manifest names other bytes now) or unreadable: drop it and download.
    const current = rec && Number.isSafeInteger(rec.size) && (!want || (want.size === rec.size && want.sha256 === rec.sha256));
    if (current) {
      const r = await data.match(url);
      if (r?.body) {
        const got = await hashStream(r.body, rec.size);
        if (got.size === rec.size && got.sha256 === rec.sha256) {
          const again = await data.match(url);
          if (again) return { size: rec.size, sha256: rec.sha256, response: again };
        }
      }
    }
    await Promise.all([data.delete(url), meta.delete(url)]);
    return null;
  }

  /**
   * Reads an opened file to its end, passing each chunk to `onChunk`. A download is hashed on the
   * way and checked against the manifest, then stored in the cache (and its meta entry written)
   * only if complete; a failed cache write is reported through `onCacheError`, not thrown.
   */
  async consume(file, onChunk) {
    const { url, response, fromCache, want } = file;
    let body = response.body;
    let store = null;
    if (!fromCache && this.#useCache && body) {
      const [data] = await this.#open();
      const [mine, theirs] = body.tee();
      body = mine;
      const stored = new Response(theirs, { headers: { 'content-type': response.headers.get('content-type') ?? 'application/octet-stream' } });
      store = data.put(url, stored).then(
        () => null,
        (e) => {
          // The copy for the cache is no longer read: stop it buffering the rest of the file.
          stored.body?.cancel().catch(() => {});
          return e ?? new Error('cache write failed');
        },
      );
    }
    const hash = !fromCache && (store || want) ? new Sha256() : null;
    let n = 0;
    try {
      if (body) {
        const reader = body.getReader();
        for (;;) {
          let chunk;
          try {
            chunk = await reader.read();
          } catch (e) {
            if (this.#signal?.aborted) throw this.#signal.reason;
            throw new DiffAttnError(`${url}: the ${fromCache ? 'cache read' : 'download'} broke off after ${n} bytes (${e?.message ?? e})`, 'Io');
          }
          const { done, value } = chunk;
          if (done) break;
          n += value.length;
          hash?.update(value);
          onChunk(value);
        }
      }
      if (fromCache) return;
      if (file.size !== null && n !== file.size) {
        throw new DiffAttnError(`${url}: received ${n} bytes but expected ${file.size}`, 'Io');
      }
      const sha256 = hash?.hex();
      if (want && (n !== want.size || sha256 !== want.sha256)) {
        throw new DiffAttnError(
          `${url}: the download does not match manifest.json (${n} bytes, sha256 ${sha256}; the manifest says ${want.size} bytes, sha256 ${want.sha256})`,
          'Integrity',
        );
      }
      if (store) {
        const err = await store;
        store = null;
        if (err) {
          await this.#forget(url);
          this.#onCacheError(await storageError(err, url, n));
          return;
        }
        const [, meta] = await this.#open();
        const rec = { url, size: n, sha256, verifiedBy: want ? 'manifest' : 'download', storedAt: new Date().toISOString() };
        try {
          await meta.put(url, new Response(JSON.stringify(rec), { headers: { 'content-type': 'application/json' } }));
        } catch (e) {
          await this.#forget(url);
          this.#onCacheError(await storageError(e, url, n));
        }
      }
    } finally {
      if (store) {
        // Failed or abandoned before the end: whatever the cache received is not kept. Not
        // awaited: the cache's copy may still be downloading, and the error should not wait.
        store.then(() => this.#forget(url));
      }
    }
  }

  async #forget(url) {
    const [data, meta] = await this.#open();
    await Promise.all([data.delete(url), meta.delete(url)]).catch(() => {});
  }

  /** The whole file as bytes (for the small files: config, tokenizer, index). */
  async bytes(file) {
    const parts = [];
    let n = 0;
    await this.consume(file, (c) => {
      parts.push(c);
      n += c.length;
    });
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

function requireCache() {
  if (!cacheAvailable()) {
    throw new DiffAttnError('the Cache API is not available here (it needs a secure context: https or localhost)', 'Unsupported');
  }
}

/**
 * The cached model files of this origin (shared by pages and workers). Entries are complete,
 * verified files; a download in progress or one that failed is never listed.
 */
export const modelCache = {
  /** Every cached file: `{url, size, sha256, verifiedBy: 'manifest' | 'download', storedAt}`. */
  async list() {
    requireCache();
    const meta = await caches.open(META);
    const out = [];
    for (const req of await meta.keys()) {
      const r = await meta.match(req);
      try {
        out.push(await r.json());
      } catch {
        out.push({ url: req.url, size: null, sha256: null, verifiedBy: null, storedAt: null });
      }
    }
    return out.sort((a, b) => (a.url < b.url ? -1 : 1));
  },

  /**
   * Deletes one file (a file URL) or every file of a model (a URL ending in `/`); relative URLs
   * resolve against the page. Returns how many files were removed.
   */
  async delete(url) {
    requireCache();
    const target = href(url);
    const [data, meta] = await Promise.all([caches.open(DATA), caches.open(META)]);
    const keys = [...(await data.keys()), ...(await meta.keys())].map((r) => r.url);
    const hit = new Set(keys.filter((k) => (target.endsWith('/') ? k.startsWith(target) : k === target)));
    let files = 0;
    for (const k of hit) {
      if (await meta.delete(k)) files++;
      await data.delete(k);
    }
    return files;
  },

  /** Deletes every cached model file. */
  async clear() {
    requireCache();
    await Promise.all([caches.delete(DATA), caches.delete(META)]);
  },
};
