#!/usr/bin/env python3
"""PyTorch token-generation baseline for bench/run.sh (batch 1, greedy), beside
``diffattn bench generate``.

Models: the shipped DIFF V2 model (models/diffv2-small, through train/model.py's modules) and the
SmolLM2-135M architecture with random weights (standard attention, train/model.py's standard
variant). Both run through a static-KV-cache forward written here (`StaticLM`): preallocated
K/V, positions as tensors, so that one decode step can be captured as a CUDA graph. At startup
its logits are checked against train/model.py's full forward (fp32).

Ways: "eager" (a Python loop of static-cache steps, argmax on the GPU, no per-token sync) and
"cuda-graph" (one step captured and replayed, the token fed back on the GPU). For the SmolLM2
shape also "transformers-generate" (LlamaForCausalLM.generate, greedy) where transformers runs.

Each row: {"bench": "generate", "impl": "pytorch", "model", "way", "dtype", "prompt_tokens",
"tokens", "prefill_tok_s", "prefill_ms", "first_token_ms", "decode_tok_s", "gpu_ms_per_token",
"host_ms_per_token", "gpu_memory_mib"}; a failing row carries "error" instead. JSON lines on stdout,
progress on stderr. Usage: pytorch_generate.py [--quick] [--device cpu|cuda].
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "train"))
from model import LanguageModel, ModelConfig, apply_rope_interleaved  # noqa: E402

SMOLLM2 = dict(
    vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, intermediate_size=1536, rope_theta=100000.0,
    rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
    attention="standard",
)


def emit(obj):
    print(json.dumps(obj), flush=True)


def log(msg):
    print(f"pytorch_generate: {msg}", file=sys.stderr, flush=True)


class StaticLM:
    """A LanguageModel's weights run with a preallocated KV cache of `context` positions.

    `forward(ids, pos)`: ids (1, T) at positions pos .. pos + T - 1 (pos a 1-element long tensor);
    writes K/V there and returns the last position's logits (1, vocab) in float32. Attention reads
    the whole cache under a mask (keys at or before each query's position), so shapes never depend
    on the position and a T = 1 step can be captured as a CUDA graph.
    """

    def __init__(self, lm: LanguageModel, context: int, dtype, device):
        self.lm = lm.to(device=device, dtype=dtype).eval()
        cfg = lm.cfg
        self.cfg, self.context = cfg, context
        shape = (1, cfg.num_key_value_heads, context, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        i = torch.arange(0, cfg.head_dim // 2, device=device, dtype=torch.float32)
        inv_freq = cfg.rope_theta ** (-2.0 * i / cfg.head_dim)
        ang = torch.arange(context, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.cos, self.sin = ang.cos(), ang.sin()
        self.keys = torch.arange(context, device=device)

    @torch.no_grad()
    def forward(self, ids, pos):
        cfg, m = self.cfg, self.lm.model
        T = ids.shape[1]
        positions = pos + torch.arange(T, device=ids.device)
        cos, sin = self.cos[positions], self.sin[positions]
        mask = self.keys[None, :] <= positions[:, None]  # (T, context)
        x = m.embed_tokens(ids)
        d, h = cfg.head_dim, cfg.num_attention_heads
        for l, layer in enumerate(m.layers):
            att = layer.self_attn
            a = layer.input_layernorm(x)
            q = apply_rope_interleaved(att.q_proj(a).view(1, T, att.hq, d), cos, sin).transpose(1, 2)
            k = apply_rope_interleaved(att.k_proj(a).view(1, T, att.hkv, d), cos, sin).transpose(1, 2)
            v = att.v_proj(a).view(1, T, att.hkv, d).transpose(1, 2)
            self.k[l].index_copy_(2, positions, k)
            self.v[l].index_copy_(2, positions, v)
            rep = att.hq // att.hkv
            kk = self.k[l].repeat_interleave(rep, dim=1)
            vv = self.v[l].repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=1.0 / math.sqrt(d))
            o = o.transpose(1, 2)
            if cfg.attention == "diff_v2":
                lam = torch.sigmoid(att.lambda_proj(a).float())
                c = (o[:, :, 0::2].float() - lam[..., None] * o[:, :, 1::2].float()).to(o.dtype)
            else:
                c = o
            x = x + att.o_proj(c.reshape(1, T, h * d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = m.norm(x[:, -1:])
        return F.linear(x, m.embed_tokens.weight)[:, -1].float()


def load_shipped(device):
    from safetensors.torch import load_file

    d = os.path.join(ROOT, "models", "diffv2-small")
    cfg = ModelConfig.load(os.path.join(d, "config.json"))
    lm = LanguageModel(cfg)
    state = {}
    for name in sorted(os.listdir(d)):  # one file or shards, as the model directory holds them
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(d, name)))
    missing, unexpected = lm.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights: missing {missing}, unexpected {unexpected}")
    return lm


def load_smollm2_arch():
    lm = LanguageModel(ModelConfig(**SMOLLM2))
    lm.reset_parameters(seed=7)
    return lm


def check_static(lm, device):
    """The static-cache forward against train/model.py's full forward, fp32, on a short prefix
    (prefill of 5 tokens, then 3 single steps)."""
    ids = torch.randint(0, lm.cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3))
    ids = ids.to(device)
    ref = lm.to(device=device, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(ids).float()
    s = StaticLM(ref, 16, torch.float32, device)
    got = [s.forward(ids[:, :5], torch.zeros(1, dtype=torch.long, device=device))]
    for t in range(5, 8):
        got.append(s.forward(ids[:, t:t + 1], torch.full((1,), t, dtype=torch.long, device=device)))
    for i, g in zip([4, 5, 6, 7], got):
        w = want[0, i]
        rel = ((g[0] - w).norm() / w.norm()).item()
        if not rel <= 1e-4:
            raise RuntimeError(f"static-cache logits differ from model.py at position {i}: rel {rel:.2e}")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def generate_once(s, prompt, tokens, way, device, graph):
    """One greedy generation: (first_token_s, decode_s, gpu_s or None, ids)."""
    t0 = time.perf_counter()
    logits = s.forward(prompt, torch.zeros(1, dtype=torch.long, device=device))
    first = logits.argmax(-1)
    first_id = first.item()
    first_s = time.perf_counter() - t0
    out = torch.empty(tokens, dtype=torch.long, device=device)
    out[0] = first[0]
    P = prompt.shape[1]
    ev = None
    if device == "cuda":
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    t1 = time.perf_counter()
    if ev:
        ev[0].record()
    if way == "cuda-graph":
        g, ids, pos, nxt = graph
        ids.copy_(first.view(1, 1))
        pos.fill_(P)
        for i in range(1, tokens):
            g.replay()
            out[i] = nxt[0]
    else:
        ids = first.view(1, 1)
        for i in range(1, tokens):
            pos = torch.full((1,), P + i - 1, dtype=torch.long, device=device)
            ids = s.forward(ids, pos).argmax(-1).view(1, 1)
            out[i] = ids[0, 0]
    if ev:
        ev[1].record()
    sync(device)
    decode_s = time.perf_counter() - t1
    gpu_s = ev[0].elapsed_time(ev[1]) / 1e3 if ev else None
    ids_host = out.tolist()
    assert ids_host[0] == first_id
    return first_s, decode_s, gpu_s, ids_host


def capture(s, device):
    """One decode step as a CUDA graph: reads ids/pos, writes the argmax to nxt and ids, pos += 1."""
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    nxt = torch.zeros(1, dtype=torch.long, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
            nxt.copy_(s.forward(ids, pos).argmax(-1))
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        nxt.copy_(s.forward(ids, pos).argmax(-1))
        ids.copy_(nxt.view(1, 1))
        pos.add_(1)
    return g, ids, pos, nxt


def row(model, way, dtype_name, P, N, runs, device):
    runs = sorted(runs, key=lambda r: r[1])
    first_s = sorted(r[0] for r in runs)[len(runs) // 2]
    first_s_, decode_s, gpu_s, _ = runs[len(runs) // 2]
    steps = N - 1
    return {
        "bench": "generate", "impl": "pytorch", "model": model, "way": way, "dtype": dtype_name,
        "prompt_tokens": P, "tokens": N,
        "prefill_tok_s": P / first_s, "prefill_ms": first_s * 1e3, "first_token_ms": first_s * 1e3,
        "decode_tok_s": steps / decode_s,
        "gpu_ms_per_token": gpu_s * 1e3 / steps if gpu_s is not None else None,
        "host_ms_per_token": None,
        "gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def run_rows(model, lm, cases, dtypes, ways, repeats, device):
    for dtype_name in dtypes:
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
        for P, N in cases:
            context = ((P + N + 63) // 64) * 64
            gen = torch.Generator().manual_seed(11)
            prompt = torch.randint(0, lm.cfg.vocab_size, (1, P), generator=gen).to(device)
            s = StaticLM(lm, context, dtype, device)
            reference_ids = None
            for way in ways:
                base = {"bench": "generate", "impl": "pytorch", "model": model, "way": way,
                        "dtype": dtype_name, "prompt_tokens": P, "tokens": N}
                try:
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    graph = None
                    if way == "cuda-graph":
                        if device != "cuda":
                            raise RuntimeError("CUDA graphs need a CUDA device")
                        graph = capture(s, device)
                    generate_once(s, prompt, N, way, device, graph)  # warm-up
                    t_warm = time.perf_counter()
                    while time.perf_counter() - t_warm < 1.0:
                        generate_once(s, prompt, N, way, device, graph)
                    runs = [generate_once(s, prompt, N, way, device, graph) for _ in range(repeats)]
                    ids = runs[0][3]
                    if reference_ids is None:
                        reference_ids = ids
                    elif ids != reference_ids:
                        log(f"{model} {dtype_name} {way}: greedy ids differ from the first way's")
                    r = row(model, way, dtype_name, P, N, runs, device)
                    log(f"{model} {dtype_name} {way} P={P}: decode {r['decode_tok_s']:.1f} tok/s, "
                        f"first token {r['first_token_ms']:.2f} ms")
                    emit(r)
                except Exception as e:  # one failing way must not lose the others
                    log(f"{model} {dtype_name} {way}: FAILED {e}")
                    emit({**base, "error": str(e)[:500]})
            del s
            if device == "cuda":
                torch.cuda.empty_cache()


def transformers_row(N, device, quick):
    base = {"bench": "generate", "impl": "pytorch", "model": "smollm2-135m-arch",
            "way": "transformers-generate", "dtype": "fp16", "prompt_tokens": 16, "tokens": N}
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        c = SMOLLM2
        cfg = LlamaConfig(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
            head_dim=c["head_dim"], rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"],
            max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=True,
        )
        torch.manual_seed(7)
        dtype = torch.float16 if device == "cuda" else torch.float32
        m = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
        prompt = torch.randint(0, c["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(11))
        prompt = prompt.to(device)
        kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            m.generate(prompt, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
            sync(device)
            t = time.perf_counter()
            m.generate(prompt, **kw)
            sync(device)
            total = time.perf_counter() - t
            t = time.perf_counter()
            m.generate(prompt, **{**kw, "max_new_tokens": 1, "min_new_tokens": 1})
            sync(device)
            first = time.perf_counter() - t
        r = {**base, "dtype": "fp16" if dtype == torch.float16 else "fp32",
             "prefill_tok_s": 16 / first, "prefill_ms": first * 1e3, "first_token_ms": first * 1e3,
             "decode_tok_s": (N - 1) / max(total - first, 1e-9), "gpu_ms_per_token": None,
             "host_ms_per_token": None,
             "gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
        log(f"transformers generate: {r['decode_tok_s']:.1f} tok/s")
        emit(r)
    except Exception as e:
        log(f"transformers generate: FAILED {e}")
        emit({**base, "error": str(e)[:500]})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few tokens, for a smoke test")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = args.device
    if device == "cuda":
        emit({"bench": "env", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cuda": torch.version.cuda})
    N = 16 if args.quick else 256
    repeats = 1 if args.quick else 3
    ways = ["eager", "cuda-graph"]
    try:
        shipped = load_shipped("cpu")
        check_static(shipped, "cpu")
        log("static-cache forward matches model.py (fp32)")
    except Exception as e:
        log(f"shipped model: FAILED {e}")
        emit({"bench": "generate", "impl": "pytorch", "model": "diffv2-small", "error": str(e)[:500]})
        shipped = None
    if shipped is not None:
        cases = [(16, N), (454, 48 if args.quick else 59)]
        run_rows("diffv2-small", shipped, cases, ["fp32", "fp16"], ways, repeats, device)
    smol = load_smollm2_arch()
    run_rows("smollm2-135m-arch", smol, [(16, N)], ["fp16", "fp32"], ways, repeats, device)
    transformers_row(32 if args.quick else 64, device, args.quick)


if __name__ == "__main__":
    main()
