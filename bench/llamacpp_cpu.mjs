// llama.cpp on the CPU (node-llama-cpp, prebuilt, no GPU) on a GGUF file: prefill and greedy
// decode speed for one prompt, as one JSON line, to stand beside `diffattn bench generate` on the
// same file and machine (bench/cpu.sh).
//
//   node bench/llamacpp_cpu.mjs MODEL.gguf [PROMPT_TOKENS] [TOKENS] [REPEATS] [THREADS]
//
// THREADS defaults to the machine's cores; it is always given explicitly, as node-llama-cpp's own
// default ran 40-1000x slower on the 2-core test machine (oversubscribed spinning threads).
//
// node-llama-cpp is imported from LLAMA_CPP_MODULE (bench/cpu.sh installs the pinned 3.21.1 into a
// scratch folder and points it there), else by name. Prompt ids are fixed, below 30,000.
import os from "node:os";

const { getLlama } = await import(process.env.LLAMA_CPP_MODULE ?? "node-llama-cpp");

const [model, promptArg = "64", tokensArg = "64", repeatsArg = "3", threadsArg] =
  process.argv.slice(2);
if (!model) {
  console.error("usage: node bench/llamacpp_cpu.mjs MODEL.gguf [PROMPT_TOKENS] [TOKENS] [REPEATS]");
  process.exit(2);
}
const promptTokens = Number(promptArg);
const tokens = Number(tokensArg);
const repeats = Number(repeatsArg);
const threads = Number(threadsArg ?? os.availableParallelism());

const llama = await getLlama({ gpu: false, build: "never" });
const t0 = performance.now();
const m = await llama.loadModel({ modelPath: model });
const loadMs = performance.now() - t0;
const prompt = Array.from({ length: promptTokens }, (_, i) => (1000 + i * 37) % 30000);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const prefill = [];
const decode = [];
// One warm-up run, then the timed ones; a fresh context each, as a fresh conversation.
for (let r = 0; r <= repeats; r++) {
  const ctx = await m.createContext({ contextSize: promptTokens + tokens + 8, threads });
  const seq = ctx.getSequence();
  let t = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillS = (performance.now() - t) / 1000;
  let n = 0;
  t = performance.now();
  for await (const _ of seq.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
    if (++n >= tokens) break;
  }
  const decodeS = (performance.now() - t) / 1000;
  console.error(`run ${r}: prefill ${prefillS.toFixed(3)} s, decode ${n} in ${decodeS.toFixed(3)} s`);
  if (r > 0) {
    prefill.push(promptTokens / prefillS);
    decode.push(n / decodeS);
  }
  await ctx.dispose();
}
console.log(JSON.stringify({
  bench: "generate", impl: "llama.cpp (node-llama-cpp 3.21.1, CPU)", model,
  threads, prompt_tokens: promptTokens, tokens,
  load_ms: loadMs, prefill_tok_s: median(prefill), decode_tok_s: median(decode),
}));
await m.dispose();
