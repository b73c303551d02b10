// Compiled by tsc only (never imported): the package's types must reject misuse, so that a
// passing type check means the .d.ts describes the API rather than letting anything through.
import { Engine, modelCache } from 'diffattn';
import { WorkerEngine } from 'diffattn/worker';

export async function misuse(): Promise<void> {
  // @ts-expect-error wasmUrl is a string or URL
  await Engine.load('/m/', { wasmUrl: 5 });
  // @ts-expect-error workerUrl belongs to the worker entry only
  await Engine.load('/m/', { workerUrl: '/w.js' });
  const w = await WorkerEngine.load('/m.gguf', { workerUrl: new URL('/w.js', location.href), wasmUrl: '/x.wasm', cache: false });
  await WorkerEngine.load(new Uint8Array(8));
  for await (const p of w.chat([{ role: 'user', content: 'hi' }], { maxTokens: 4 })) void p.id;
  // @ts-expect-error chat takes messages, not a prompt string
  w.chat('hi');
  // @ts-expect-error a message's content is a string
  w.chat([{ role: 'user', content: 5 }]);
  const files = await modelCache.list();
  // @ts-expect-error verifiedBy is 'manifest' | 'download'
  const v: 'hash' = files[0].verifiedBy;
  const n: number = await modelCache.delete('/m/');
  Engine.load('/m/', {
    onProgress: (p) => {
      // @ts-expect-error fromCache is a boolean
      const s: string = p.fromCache;
      void s;
    },
  });
  void v;
  void n;
}
