// diffattn: DIFF V2 attention and small DIFF V2 language models on WebGPU, from Rust/WebAssembly.
export { DiffAttnError, checkWebGPU, init, gpuInfo, diffAttention } from './core.js';
export { Engine } from './engine.js';
export { modelCache } from './cache.js';
