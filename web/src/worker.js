// Runs inside a module Web Worker: the engine lives here, so decoding never blocks the page.
// The page side is worker-client.js; messages are {id, op, ...} in and {id, progress|piece|result|error} out.
import { Engine, diffAttention, gpuInfo } from './index.js';

let engine = null;
const running = new Map();

function errorInfo(e) {
  return { message: e?.message ?? String(e), name: e?.name ?? 'Error', kind: e?.kind };
}

self.onmessage = async ({ data: msg }) => {
  const { id, op } = msg;
  const reply = (m, transfer = []) => self.postMessage({ id, ...m }, transfer);
  try {
    switch (op) {
      case 'load': {
        engine?.dispose();
        engine = null;
        const ac = new AbortController();
        running.set(id, ac);
        try {
          engine = await Engine.load(msg.source, {
            ...msg.options,
            signal: ac.signal,
            onProgress: (p) => reply({ progress: p }),
            onCacheError: (e) => reply({ cacheError: errorInfo(e) }),
          });
        } finally {
          running.delete(id);
        }
        return reply({ result: engine.info() });
      }
      case 'generate':
      case 'chat': {
        if (!engine) throw Object.assign(new Error('no model loaded'), { name: 'DiffAttnError', kind: 'Model' });
        const ac = new AbortController();
        running.set(id, ac);
        try {
          const options = { ...msg.options, signal: ac.signal };
          const pieces = op === 'chat' ? engine.chat(msg.messages, options) : engine.generate(msg.prompt, options);
          for await (const piece of pieces) reply({ piece });
        } finally {
          running.delete(id);
        }
        return reply({ result: engine.stats });
      }
      case 'abort':
        running.get(msg.target)?.abort(new DOMException('generation aborted', 'AbortError'));
        return reply({ result: null });
      case 'maps':
        return reply({ result: engine.attentionMaps(msg.prompt, msg.options) });
      case 'encode':
        return reply({ result: engine.encode(msg.text) });
      case 'gpuInfo':
        return reply({ result: await gpuInfo() });
      case 'diffAttention': {
        const out = await diffAttention(msg.args);
        return reply({ result: out }, [out.buffer]);
      }
      default:
        throw new Error(`unknown op ${op}`);
    }
  } catch (e) {
    reply({ error: errorInfo(e) });
  }
};
