// The demo page. It uses only the package's public API, imported by name.
//   ?model=URL   model directory (default /models/diffv2-small/; "none": kernel only)
//   ?worker=0    run the engine on the main thread instead of in a Web Worker
import { Engine, checkWebGPU, gpuInfo, diffAttention } from 'diffattn';
import { WorkerEngine } from 'diffattn/worker';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelUrl = params.get('model') ?? '/models/diffv2-small/';
const useWorker = params.get('worker') !== '0';

// What tests (and the curious) can read: the page's state, the last generation and its speed.
const status = { state: 'starting', error: null, ids: [], text: '', tokensPerSecond: null, maps: null, pieces: 0 };
window.__diffattn = status;
window.diffattn = { diffAttention, gpuInfo, Engine };

let engine = null;
let controller = null;

function fail(e) {
  status.state = 'error';
  status.error = e?.message ?? String(e);
  $('error').textContent = status.error;
  $('error').hidden = false;
  $('loading').hidden = true;
  console.error(e);
}

function mib(n) {
  return (n / 2 ** 20).toFixed(1);
}

function onProgress({ phase, loaded, total }) {
  const bar = $('progress');
  bar.max = total || 1;
  bar.value = loaded;
  const verb = phase === 'download' ? 'downloading' : 'uploading to the GPU';
  $('progress-label').textContent = `${verb}: ${mib(loaded)} / ${mib(total)} MiB`;
}

function options() {
  const num = (id) => Number($(id).value);
  return {
    maxTokens: num('maxTokens'),
    temperature: num('temperature'),
    topK: num('topK'),
    topP: num('topP'),
    repeatPenalty: num('repeatPenalty'),
    seed: num('seed'),
  };
}

async function generate() {
  const prompt = $('prompt').value;
  controller = new AbortController();
  $('generate').disabled = true;
  $('stop').disabled = false;
  $('showMaps').disabled = true;
  const out = $('output');
  out.textContent = '';
  const p = document.createElement('span');
  p.className = 'prompt';
  p.textContent = prompt;
  out.append(p);
  const gen = document.createElement('span');
  out.append(gen);
  Object.assign(status, { state: 'generating', ids: [], text: '', pieces: 0, error: null });
  const t0 = performance.now();
  let tFirst = null;
  let final = null;
  try {
    for await (const piece of engine.generate(prompt, { ...options(), signal: controller.signal })) {
      tFirst ??= performance.now();
      status.ids.push(piece.id);
      status.text += piece.text;
      status.pieces += 1;
      gen.textContent += piece.text;
      const n = status.ids.length;
      const s = (performance.now() - tFirst) / 1000;
      if (n > 1 && s > 0) $('tps').textContent = `${n} tokens, ${((n - 1) / s).toFixed(1)} tokens/s`;
    }
    final = 'done';
  } catch (e) {
    if (e.name === 'AbortError') final = 'stopped';
    else return fail(e);
  } finally {
    $('generate').disabled = false;
    $('stop').disabled = true;
    $('showMaps').disabled = false;
  }
  const stats = engine.stats;
  status.tokensPerSecond = stats?.decodeTokensPerSecond ?? null;
  const first = tFirst === null ? '' : `, first token after ${(tFirst - t0).toFixed(0)} ms`;
  const tps = status.tokensPerSecond ? `${status.tokensPerSecond.toFixed(1)} tokens/s` : '';
  $('tps').textContent = `${status.ids.length} tokens, ${tps}${first}${final === 'stopped' ? ' (stopped)' : ''}`;
  // The maps follow the prompt just used; the state changes last, so a test that waits for it
  // sees the finished page.
  await showMaps();
  if (status.state !== 'error') status.state = final;
}

// Sequential colour ramp for probabilities, diverging (blue < 0 < red) for the difference.
function draw(canvas, map, n, diverging) {
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(n, n);
  let maxAbs = 1e-9;
  for (const v of map) maxAbs = Math.max(maxAbs, Math.abs(v));
  for (let i = 0; i < n * n; i++) {
    const t = map[i] / maxAbs;
    let r, g, b;
    if (diverging) {
      const a = Math.min(1, Math.abs(t));
      [r, g, b] = t >= 0 ? [255, 255 * (1 - a), 255 * (1 - a)] : [255 * (1 - a), 255 * (1 - a), 255];
    } else {
      const a = Math.sqrt(Math.max(0, t));
      [r, g, b] = [255 * (1 - a * 0.85), 255 * (1 - a * 0.6), 255 * (1 - a * 0.2)];
    }
    img.data.set([r, g, b, 255], i * 4);
  }
  // Draw at token resolution, then let CSS scale it up with crisp pixels.
  canvas.width = n;
  canvas.height = n;
  ctx.putImageData(img, 0, 0);
}

async function showMaps() {
  const layer = Number($('layer').value);
  const head = Number($('head').value);
  try {
    const m = await engine.attentionMaps($('prompt').value, { layer, head });
    const n = m.tokens.length;
    draw($('map1'), m.p1, n, false);
    draw($('map2'), m.p2, n, false);
    draw($('mapDiff'), m.diff, n, true);
    const lam = Array.from(m.lambda, (x) => x.toFixed(2));
    $('lambda').textContent = `λ per query token (layer ${layer}, head ${head}): ${lam.join(' ')}`;
    $('tokens').textContent = `tokens: ${m.tokens.map((t) => JSON.stringify(t)).join(' ')}`;
    status.maps = { layer, head, n };
  } catch (e) {
    fail(e);
  }
}

async function main() {
  try {
    await checkWebGPU();
    if (modelUrl === 'none') {
      const g = await gpuInfo();
      $('adapter').textContent = `adapter: ${g.description}; kernel only (no model)`;
      $('loading').hidden = true;
      status.state = 'ready';
      return;
    }
    const load = useWorker ? WorkerEngine.load.bind(WorkerEngine) : Engine.load.bind(Engine);
    engine = await load(modelUrl, { onProgress, attentionMaps: true });
    const info = engine.info();
    const c = info.config;
    $('adapter').textContent =
      `adapter: ${info.gpu.description}; path: ${info.path}; ` +
      `model: ${c.num_hidden_layers} layers, ${c.num_attention_heads} heads (${c.attention}), ` +
      `weights ${info.weightDtype}, KV cache ${info.kvDtype}; ${useWorker ? 'in a Web Worker' : 'on the main thread'}`;
    for (let l = 0; l < c.num_hidden_layers; l++) $('layer').append(new Option(String(l), String(l)));
    for (let h = 0; h < c.num_attention_heads; h++) $('head').append(new Option(String(h), String(h)));
    $('loading').hidden = true;
    $('generate').disabled = false;
    $('showMaps').disabled = false;
    await showMaps();
    if (status.state !== 'error') status.state = 'ready';
  } catch (e) {
    fail(e);
  }
}

$('generate').onclick = () => generate();
$('stop').onclick = () => controller?.abort(new DOMException('stopped by the user', 'AbortError'));
$('showMaps').onclick = () => showMaps();
$('layer').onchange = $('head').onchange = () => engine && showMaps();
main();
