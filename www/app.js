// The demo page. It uses only the package's public API, imported by name.
//   ?model=URL   model to load at start: a directory (default /models/diffv2-small/) or a .gguf
//                URL; "none": kernel only
//   ?gguf=URL    the .gguf the picker's SmolLM2 choice loads (loaded at start when ?model is not
//                given); a file input takes a local .gguf instead
//   ?worker=0    run the engine on the main thread instead of in a Web Worker
// A model with a chat template (a GGUF chat model) opens in chat mode; the shipped DIFF V2 model
// in text mode with its attention maps.
import { Engine, checkWebGPU, gpuInfo, diffAttention } from 'diffattn';
import { WorkerEngine } from 'diffattn/worker';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SHIPPED = '/models/diffv2-small/';
const ggufParam = params.get('gguf');
const modelUrl = params.get('model') ?? ggufParam ?? SHIPPED;
const useWorker = params.get('worker') !== '0';
// A chat model's KV cache gets 2,048 positions (SmolLM2: 90 MiB in f32) rather than the 8,192 its
// file allows: plenty for a demo conversation, and a quarter of the memory.
const CHAT_CONTEXT = 2048;

// What tests (and the curious) can read: the page's state, the last generation and its speed;
// in chat mode the conversation, the last reply, its ids, and the reply's length after each
// piece that added text (one entry per visible update while it streamed).
const status = {
  state: 'starting',
  error: null,
  mode: null,
  ids: [],
  text: '',
  tokensPerSecond: null,
  firstTokenMs: null,
  maps: null,
  mapsData: null,
  hover: null,
  pieces: 0,
  messages: [],
  reply: '',
  replyIds: [],
  partials: [],
  chatStats: null,
};
window.__diffattn = status;
window.diffattn = { diffAttention, gpuInfo, Engine, WorkerEngine };

let engine = null;
let controller = null;

const isGguf = (src) => ArrayBuffer.isView(src) || /\.gguf$/i.test(new URL(String(src), location.href).pathname);

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

function onProgress({ phase, loaded, total, fromCache }) {
  const bar = $('progress');
  bar.max = total || 1;
  bar.value = loaded;
  const verb = phase === 'upload' ? 'uploading to the GPU' : fromCache ? 'reading from the browser cache' : 'downloading';
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
    $('showMaps').disabled = !engine.info().attentionMaps;
  }
  const stats = engine.stats;
  status.tokensPerSecond = stats?.decodeTokensPerSecond ?? null;
  status.firstTokenMs = stats?.firstTokenMs ?? null;
  const first = tFirst === null ? '' : `, first token after ${(tFirst - t0).toFixed(0)} ms`;
  const tps = status.tokensPerSecond ? `${status.tokensPerSecond.toFixed(1)} tokens/s` : '';
  $('tps').textContent = `${status.ids.length} tokens, ${tps}${first}${final === 'stopped' ? ' (stopped)' : ''}`;
  // The maps follow the prompt just used; the state changes last, so a test that waits for it
  // sees the finished page.
  if (engine.info().attentionMaps) await showMaps();
  if (status.state !== 'error') status.state = final;
}

// Sequential ramp (white to blue) for probabilities, diverging (blue < 0 < red) for the
// difference; `t` is the value over the map's largest magnitude, so the scale reads from it.
function colour(t, diverging) {
  if (diverging) {
    const a = Math.min(1, Math.abs(t));
    return t >= 0 ? [255, 255 * (1 - a), 255 * (1 - a)] : [255 * (1 - a), 255 * (1 - a), 255];
  }
  const a = Math.sqrt(Math.max(0, Math.min(1, t)));
  return [255 * (1 - a * 0.85), 255 * (1 - a * 0.6), 255 * (1 - a * 0.2)];
}

function maxAbs(map) {
  let m = 1e-9;
  for (const v of map) m = Math.max(m, Math.abs(v));
  return m;
}

// Draws at token resolution; CSS scales it up with crisp pixels.
function paint(canvas, map, n, diverging) {
  const m = maxAbs(map);
  canvas.width = n;
  canvas.height = n;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) img.data.set([...colour(map[i] / m, diverging), 255], i * 4);
  ctx.putImageData(img, 0, 0);
  return m;
}

// Tokens as axis labels: leading spaces and newlines made visible, long ones cut.
function label(tok) {
  const t = tok.replace(/ /g, '·').replace(/\n/g, '↵');
  return t.length > 10 ? `${t.slice(0, 9)}…` : t;
}

const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

// Keep equal to the map column of .heatmap in style.css.
const MAP_PX = 232;

/** One heat map with key labels above, query labels on the left and its colour scale below. */
function heatmap(fig, { map, n, tokens, diverging, onHover }) {
  for (const c of [...fig.children]) if (c.tagName !== 'FIGCAPTION') c.remove();
  const cell = MAP_PX / n;
  // Labels thinner than a line of text would overlap: show every k-th one.
  const every = Math.ceil(10 / cell);
  const axis = (cls, dim) => {
    const box = el('div', cls);
    tokens.forEach((t, i) => {
      const s = el('span', '', i % every === 0 ? label(t) : '');
      s.style[dim] = `${cell}px`;
      s.title = `${i}: ${JSON.stringify(t)}`;
      s.dataset.token = t;
      box.append(s);
    });
    return box;
  };
  const corner = el('div', 'axis-title', 'query ↓  key →');
  const canvas = el('canvas', 'map');
  canvas.style.width = canvas.style.height = `${MAP_PX}px`;
  const m = paint(canvas, map, n, diverging);
  canvas.onmousemove = (ev) => {
    const r = canvas.getBoundingClientRect();
    const j = Math.floor(((ev.clientX - r.left) / r.width) * n);
    const i = Math.floor(((ev.clientY - r.top) / r.height) * n);
    if (i >= 0 && i < n && j >= 0 && j < n) onHover(i, j);
  };
  const scale = el('div', 'scale');
  const bar = el('canvas');
  bar.width = 64;
  bar.height = 1;
  const ctx = bar.getContext('2d');
  for (let x = 0; x < 64; x++) {
    const t = diverging ? (x / 63) * 2 - 1 : x / 63;
    const [r, g, b] = colour(t, diverging);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, 1);
  }
  scale.append(el('span', 'scale-min', (diverging ? -m : 0).toFixed(3)), bar, el('span', 'scale-max', m.toFixed(3)));
  fig.append(corner, axis('xlabels', 'width'), axis('ylabels', 'height'), canvas, el('div'), scale);
}

/** λ per query token as a small line plot on a fixed 0..1 axis, so heads compare at a glance. */
function lambdaPlot(lambda) {
  const W = 120;
  const H = 36;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', W);
  svg.setAttribute('height', H + 12);
  svg.setAttribute('class', 'lambda-plot');
  const n = lambda.length;
  const pts = Array.from(lambda, (v, i) => `${(((i + 0.5) / n) * W).toFixed(1)},${(H - v * H).toFixed(1)}`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    svg.append(e);
  };
  add('rect', { x: 0, y: 0, width: W, height: H, fill: '#f6f7fb', stroke: '#dde1ea' });
  add('line', { x1: 0, x2: W, y1: H / 2, y2: H / 2, stroke: '#dde1ea', 'stroke-dasharray': '2 2' });
  add('polyline', { points: pts.join(' '), fill: 'none', stroke: '#3366cc', 'stroke-width': 1.5 });
  add('text', { x: 2, y: H + 10, 'font-size': 9, fill: '#5b6475' }, 'λ per query token (0 to 1)');
  return svg;
}

async function showMaps() {
  const layer = Number($('layer').value);
  const head = Number($('head').value);
  const prompt = $('prompt').value;
  try {
    const heads = engine.info().config.num_attention_heads;
    const all = [];
    for (let h = 0; h < heads; h++) all.push(await engine.attentionMaps(prompt, { layer, head: h }));
    const m = all[head];
    const n = m.tokens.length;
    const tokens = m.tokens;
    const onHover = (i, j) => {
      const k = i * n + j;
      const v = { i, j, query: tokens[i], key: tokens[j], p1: m.p1[k], p2: m.p2[k], lambda: m.lambda[i], diff: m.diff[k] };
      status.hover = v;
      $('hover').textContent =
        `query ${i} ${JSON.stringify(v.query)} → key ${j} ${JSON.stringify(v.key)}: softmax 1 ${v.p1.toFixed(4)}, ` +
        `softmax 2 ${v.p2.toFixed(4)}, λ ${v.lambda.toFixed(3)}, difference ${v.diff.toFixed(4)}`;
    };
    heatmap($('fig-p1'), { map: m.p1, n, tokens, diverging: false, onHover });
    heatmap($('fig-p2'), { map: m.p2, n, tokens, diverging: false, onHover });
    heatmap($('fig-diff'), { map: m.diff, n, tokens, diverging: true, onHover });

    $('heads-title').textContent = `All ${heads} heads of layer ${layer}: softmax 1 − λ · softmax 2, and λ per query token`;
    const box = $('heads');
    box.replaceChildren();
    all.forEach((hm, h) => {
      const card = el('div', `head-card${h === head ? ' selected' : ''}`);
      card.dataset.head = String(h);
      const mean = hm.lambda.reduce((a, b) => a + b, 0) / n;
      const c = el('canvas');
      paint(c, hm.diff, n, true);
      card.append(el('div', 'head-title', `head ${h} · mean λ ${mean.toFixed(2)}`), c, lambdaPlot(hm.lambda));
      card.onclick = () => {
        $('head').value = String(h);
        showMaps();
      };
      box.append(card);
    });
    $('tokens').textContent = `tokens: ${tokens.map((t) => JSON.stringify(t)).join(' ')}`;
    status.maps = { layer, head, n, heads, tokens };
    // For tests: the numbers the hover read-out must show.
    status.mapsData = { p1: Array.from(m.p1), p2: Array.from(m.p2), lambda: Array.from(m.lambda), diff: Array.from(m.diff) };
  } catch (e) {
    fail(e);
  }
}

function chatOptions() {
  const num = (id) => Number($(id).value);
  return { maxTokens: num('chatMaxTokens'), temperature: num('chatTemperature'), seed: num('chatSeed') };
}

function bubble(role, text) {
  const b = el('div', `msg ${role}`, text);
  $('transcript').append(b);
  return b;
}

function chatBusy(busy) {
  $('send').disabled = busy;
  $('newChat').disabled = busy;
  $('loadModel').disabled = busy;
  $('chatStop').disabled = !busy;
}

/** Sends the message box's text and streams the reply; the whole history goes with it, and the
 * engine prefills only what its KV cache does not hold yet. */
async function send() {
  const text = $('chatInput').value.trim();
  if (!text) return;
  $('chatInput').value = '';
  status.messages.push({ role: 'user', content: text });
  bubble('user', text);
  const out = bubble('assistant', '');
  const system = $('system').value.trim();
  const messages = system ? [{ role: 'system', content: system }, ...status.messages] : [...status.messages];
  controller = new AbortController();
  chatBusy(true);
  Object.assign(status, { state: 'generating', reply: '', replyIds: [], partials: [], error: null });
  let final = null;
  try {
    for await (const piece of engine.chat(messages, { ...chatOptions(), signal: controller.signal })) {
      status.replyIds.push(piece.id);
      if (!piece.text) continue;
      status.reply += piece.text;
      out.textContent = status.reply;
      status.partials.push(status.reply.length);
    }
    final = 'done';
  } catch (e) {
    if (e.name !== 'AbortError') {
      chatBusy(false);
      return fail(e);
    }
    final = 'stopped';
  }
  chatBusy(false);
  // A stopped reply stays in the history as far as it got: the model said that much.
  status.messages.push({ role: 'assistant', content: status.reply });
  const s = engine.stats;
  status.chatStats = s;
  const tps = s?.decodeTokensPerSecond ? `, ${s.decodeTokensPerSecond.toFixed(1)} tokens/s` : '';
  $('chatStats').textContent = `${s?.generated ?? 0} tokens, ${s?.promptTokens ?? 0} prompt tokens prefilled${tps}${final === 'stopped' ? ' (stopped)' : ''}`;
  status.state = final;
}

function newChat() {
  status.messages = [];
  $('transcript').replaceChildren();
  $('chatStats').textContent = '';
}

/** Frees the current engine (one model on the GPU at a time) and loads `source`. */
async function loadModel(source) {
  if (engine) {
    if (useWorker) engine.terminate();
    else engine.dispose();
    engine = null;
  }
  Object.assign(status, { state: 'loading', error: null, mode: null, maps: null, mapsData: null });
  newChat();
  $('error').hidden = true;
  $('loading').hidden = false;
  for (const id of ['generate', 'showMaps', 'send', 'newChat', 'loadModel']) $(id).disabled = true;
  try {
    const gguf = isGguf(source);
    const load = useWorker ? WorkerEngine.load.bind(WorkerEngine) : Engine.load.bind(Engine);
    // Attention maps are DIFF V2's: a GGUF (standard attention) loads without them.
    engine = await load(source, gguf ? { onProgress, context: CHAT_CONTEXT } : { onProgress, attentionMaps: true });
    const info = engine.info();
    const c = info.config;
    const chat = Boolean(c.chat_template);
    $('adapter').textContent =
      `adapter: ${info.gpu.description}; path: ${info.path}; ` +
      `model: ${c.num_hidden_layers} layers, ${c.num_attention_heads} heads (${c.attention}), ` +
      `weights ${info.weightDtype}, KV cache ${info.kvDtype}, context ${info.context}; ` +
      `${chat ? 'chat mode; ' : ''}${useWorker ? 'in a Web Worker' : 'on the main thread'}`;
    $('modelPick').value = gguf ? 'gguf' : 'diffv2';
    pickChanged();
    $('gen-panel').hidden = chat;
    $('chat-panel').hidden = !chat;
    $('maps-panel').hidden = chat || !info.attentionMaps;
    $('loading').hidden = true;
    $('loadModel').disabled = false;
    status.mode = chat ? 'chat' : 'text';
    if (chat) {
      $('send').disabled = false;
      $('newChat').disabled = false;
    } else {
      $('layer').replaceChildren();
      $('head').replaceChildren();
      for (let l = 0; l < c.num_hidden_layers; l++) $('layer').append(new Option(String(l), String(l)));
      for (let h = 0; h < c.num_attention_heads; h++) $('head').append(new Option(String(h), String(h)));
      $('generate').disabled = false;
      $('showMaps').disabled = !info.attentionMaps;
      if (info.attentionMaps) await showMaps();
    }
    if (status.state !== 'error') status.state = 'ready';
  } catch (e) {
    $('loadModel').disabled = false;
    fail(e);
  }
}

/** The picker's choice: the shipped model, or the GGUF from the file input or else the URL. */
async function loadPicked() {
  if ($('modelPick').value === 'diffv2') return loadModel(SHIPPED);
  const file = $('ggufFile').files[0];
  if (file) return loadModel(new Uint8Array(await file.arrayBuffer()));
  const url = $('ggufUrl').value.trim();
  if (!url) return fail(new Error('SmolLM2 chat: give the .gguf file\'s URL or choose the file'));
  return loadModel(url);
}

function pickChanged() {
  const gguf = $('modelPick').value === 'gguf';
  $('gguf-url-label').hidden = !gguf;
  $('gguf-file-label').hidden = !gguf;
}

async function main() {
  if (ggufParam) $('ggufUrl').value = ggufParam;
  pickChanged();
  try {
    await checkWebGPU();
    if (modelUrl === 'none') {
      const g = await gpuInfo();
      $('adapter').textContent = `adapter: ${g.description}; kernel only (no model)`;
      $('loading').hidden = true;
      status.state = 'ready';
      return;
    }
  } catch (e) {
    return fail(e);
  }
  await loadModel(modelUrl);
}

$('generate').onclick = () => generate();
$('stop').onclick = () => controller?.abort(new DOMException('stopped by the user', 'AbortError'));
$('showMaps').onclick = () => showMaps();
$('layer').onchange = $('head').onchange = () => engine && showMaps();
$('send').onclick = () => send();
$('chatInput').onkeydown = (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !$('send').disabled) {
    ev.preventDefault();
    send();
  }
};
$('chatStop').onclick = () => controller?.abort(new DOMException('stopped by the user', 'AbortError'));
$('newChat').onclick = () => newChat();
$('modelPick').onchange = () => pickChanged();
$('loadModel').onclick = () => loadPicked();
main();
