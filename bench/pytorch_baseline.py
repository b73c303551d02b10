#!/usr/bin/env python3
"""PyTorch baseline for `diffattn bench`: the same attention calls, timed with CUDA events.

What it measures, one JSON object per line on stdout:

* ``env``: GPU name, NVIDIA driver, torch and CUDA versions.
* ``bandwidth``: what PyTorch reaches on this GPU for a plain read (``torch.sum`` over 1 GiB of
  fp32) and a copy (``dst.copy_(src)``, 1 GiB each way, read + write bytes counted). This is the
  ceiling a memory-bound decode kernel can hope for, measured by the same tool as the baseline.
* ``attention``: ``torch.nn.functional.scaled_dot_product_attention`` on the shapes that
  ``bench/run.sh`` gives diffattn. "diff" is DIFF V2 attention: SDPA over 2h query heads, then
  ``o[:, 0::2] - sigmoid(lam) * o[:, 1::2]``, both inside the timed region. "standard" is SDPA over
  h query heads. Decode is one query at the end of S cached keys (no mask needed: the query sees
  every key); prefill is N = S queries, causal.

Why it is built this way, so that the comparison is fair to PyTorch:

* Inputs are made directly in the (1, heads, seq, d) layout SDPA wants; no transpose, expansion or
  output re-layout is timed (diffattn writes (N, h, d), this writes (1, h, N, d)).
* GQA uses ``enable_gqa=True`` where a fused SDPA backend accepts it (flash attention: fp16).
  Where none does (fp32, or a torch without the flag), two ways are timed and the faster is
  reported: K/V repeated to the query heads before timing under the fused backends (the row then
  says ``"gqa": "repeat"``), and ``enable_gqa=True`` under the default dispatch (the math
  fallback, which repeats inside the call). ``tried_us`` lists both times.
* Each repeat is timed with its own CUDA event pair. A short GPU sleep is queued before each start
  event so that the host has enqueued the whole call before the GPU reaches it: launch gaps inside
  one call are not counted, which matches diffattn's GPU timestamps around one recorded pass.
* Decode rows rotate through R separate K/V caches (R = max(1, ceil(256 MiB / kv_bytes)), total at
  most 8 GiB), one per call, so the H200's L2 (tens of MiB) holds none of the cache a call reads.
* Medians over 30 timed repeats (5 for fp32 prefill) after 5 warm-up calls.

Usage: python3 bench/pytorch_baseline.py [--quick] > torch.jsonl
"""

import argparse
import json
import math
import subprocess
import sys
import warnings
from contextlib import nullcontext

import torch
import torch.nn.functional as F

MIB = 1 << 20
GIB = 1 << 30
WARMUP = 5
REPEATS = 30
PREFILL_FP32_REPEATS = 5
ROTATE_TARGET_BYTES = 256 * MIB
ROTATE_CAP_BYTES = 8 * GIB
SLEEP_CYCLES = 1_000_000  # ~0.5 ms at ~2 GHz: longer than the host needs to enqueue one call
SEED = 1234

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
DECODE_SHAPES = [(32, 8, 128), (16, 4, 64)]
DECODE_SEQS = [1024, 4096, 16384, 32768, 65536]
SMALL_SHAPE, SMALL_SEQS = (6, 2, 64), [1024, 4096]
PREFILL_SHAPE, PREFILL_SEQ = (32, 8, 128), 4096


def emit(obj):
    print(json.dumps(obj), flush=True)


def log(msg):
    print(f"pytorch_baseline: {msg}", file=sys.stderr, flush=True)


def nvidia_driver():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        return out.splitlines()[0].strip() if out else None
    except Exception:  # no nvidia-smi, or it failed: the driver is simply unknown
        return None


def env_line():
    return {
        "bench": "env",
        "gpu": torch.cuda.get_device_name(),
        "driver": nvidia_driver(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


# ---------------------------------------------------------------- timing


def gpu_sleep():
    """Keeps the GPU busy while the host enqueues the next timed call (see the docstring)."""
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(SLEEP_CYCLES)


def time_calls(fn, warmup, repeats):
    """Median GPU time in microseconds of fn(i), i counting every call (warm-up included)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    events = []
    for r in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        gpu_sleep()
        start.record()
        fn(warmup + r)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times_us = sorted(s.elapsed_time(e) * 1e3 for s, e in events)
    return times_us[len(times_us) // 2]


# ---------------------------------------------------------------- bandwidth


def bandwidth_line(repeats):
    n = GIB // 4
    src = torch.randn(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    read_us = time_calls(lambda i: torch.sum(src), WARMUP, repeats)
    copy_us = time_calls(lambda i: dst.copy_(src), WARMUP, repeats)
    del src, dst
    torch.cuda.empty_cache()
    # The fixed cost of a kernel: one tiny in-place add, and two in a row (a short attention
    # call's floor, as our bench measures it for one compute pass of one and two dispatches).
    tiny = torch.zeros(1024, device="cuda", dtype=torch.float32)
    one_us = time_calls(lambda i: tiny.add_(1.0), WARMUP, repeats)
    two_us = time_calls(lambda i: tiny.add_(1.0).add_(1.0), WARMUP, repeats)
    return {
        "bench": "bandwidth",
        "impl": "pytorch",
        "read_gb_s": GIB / (read_us * 1e-6) / 1e9,
        "copy_gb_s": 2 * GIB / (copy_us * 1e-6) / 1e9,
        "bytes": GIB,
        "one_dispatch_us": one_us,
        "two_dispatches_us": two_us,
    }


# ---------------------------------------------------------------- gemm

# The product shapes `diffattn bench gemm` times in bench/run.sh: (m, n, k).
GEMM_SHAPES = [(4096, 4096, 4096), (4096, 1536, 384)]


def gemm_line(m, n, k, repeats):
    """fp16 x fp16 -> fp16 matmul (x W^T), CUDA-event timed: the tensor cores' rate in PyTorch."""
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    us = time_calls(lambda i: x @ w.T, WARMUP, repeats)
    del x, w
    return {"bench": "gemm", "impl": "pytorch", "m": m, "n": n, "k": k, "median_us": us,
            "tflop_s": 2.0 * m * n * k / (us * 1e-6) / 1e12}


# ---------------------------------------------------------------- attention


def fused_backends():
    """A context that allows only the fused SDPA backends (no math fallback), or None."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    wanted = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
    backends = [getattr(SDPBackend, name) for name in wanted if hasattr(SDPBackend, name)]
    return lambda: sdpa_kernel(backends)


def sdpa_runs(q, k, v, causal, gqa, ctx):
    """True when one SDPA call with these inputs and options runs under ctx."""
    kwargs = {"enable_gqa": True} if gqa else {}
    try:
        with warnings.catch_warnings(), ctx():
            warnings.simplefilter("ignore")  # "no kernel available" explanations: expected here
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kwargs)
        torch.cuda.synchronize()
        return True
    except (RuntimeError, TypeError):
        return False


def gqa_candidates(q_heads, kv_heads, d, n, dtype, causal):
    """Ways to run GQA here, as (gqa, backend context, backend name); all of them are timed.

    A fused backend with enable_gqa=True (flash attention, fp16) is the one to beat and is used
    alone. Otherwise (fp32) both remaining ways are timed and the faster is kept: K/V repeated
    before timing under a fused backend, and enable_gqa=True under the default dispatch.
    """
    fused = fused_backends()
    # Small probe tensors: backend eligibility depends on dtype, head counts and d, not on length.
    q = torch.zeros(1, q_heads, min(n, 128), d, device="cuda", dtype=dtype)
    k = torch.zeros(1, kv_heads, 128, d, device="cuda", dtype=dtype)
    if kv_heads == q_heads:
        return [("none", fused or nullcontext, "fused" if fused else "default")]
    if fused and sdpa_runs(q, k, k, causal, True, fused):
        return [("enable_gqa", fused, "fused")]
    ways = []
    kr = k.repeat_interleave(q_heads // kv_heads, dim=1)
    if fused and sdpa_runs(q, kr, kr, causal, False, fused):
        ways.append(("repeat", fused, "fused"))
    if sdpa_runs(q, k, k, causal, True, nullcontext):
        ways.append(("enable_gqa", nullcontext, "default"))
    return ways or [("repeat", nullcontext, "default")]


def rotation(kv_bytes, decode):
    if not decode:
        return 1
    r = max(1, math.ceil(ROTATE_TARGET_BYTES / kv_bytes))
    return max(1, min(r, ROTATE_CAP_BYTES // kv_bytes))


def make_inputs(q_heads, kv_heads, d, n, seq, dtype, gqa, rotate, h, gen):
    """q (1, q_heads, n, d); R caches of K and V (1, heads, seq, d); lam as (1, h, n)."""
    q = torch.randn(1, q_heads, n, d, device="cuda", dtype=dtype, generator=gen)
    kv_store_heads = q_heads if gqa == "repeat" else kv_heads
    ks, vs = [], []
    for _ in range(rotate):
        k = torch.randn(1, kv_heads, seq, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(1, kv_heads, seq, d, device="cuda", dtype=dtype, generator=gen)
        if kv_store_heads != kv_heads:
            group = q_heads // kv_heads
            k = k.repeat_interleave(group, dim=1).contiguous()
            v = v.repeat_interleave(group, dim=1).contiguous()
        ks.append(k)
        vs.append(v)
    # lam is (N, h) token-major in the model; laid out once, untimed, to broadcast over (1, h, N, d).
    lam = torch.randn(n, h, device="cuda", dtype=dtype, generator=gen).t().contiguous()[None]
    return q, ks, vs, lam


def attention_fn(variant, q, ks, vs, lam, causal, gqa):
    kwargs = {"enable_gqa": True} if gqa == "enable_gqa" else {}
    rotate = len(ks)

    def standard(i):
        return F.scaled_dot_product_attention(
            q, ks[i % rotate], vs[i % rotate], is_causal=causal, **kwargs
        )

    def diff(i):
        o = standard(i)
        return o[:, 0::2] - torch.sigmoid(lam)[..., None] * o[:, 1::2]

    return diff if variant == "diff" else standard


def time_way(way, variant, shape, n, seq, dtype, decode, repeats):
    """(median_us, rotate, kv_bytes) of one way of running the call."""
    gqa, ctx, _ = way
    h, kv_heads, d = shape
    q_heads = 2 * h if variant == "diff" else h
    stored_heads = q_heads if gqa == "repeat" else kv_heads
    kv_bytes = 2 * seq * stored_heads * d * torch.finfo(dtype).bits // 8
    rotate = rotation(kv_bytes, decode)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(SEED)
    q, ks, vs, lam = make_inputs(q_heads, kv_heads, d, n, seq, dtype, gqa, rotate, h, gen)
    fn = attention_fn(variant, q, ks, vs, lam, not decode, gqa)
    with ctx():
        median_us = time_calls(fn, WARMUP, repeats)
    del q, ks, vs, lam, fn
    torch.cuda.empty_cache()
    return median_us, rotate, kv_bytes


def attention_line(mode, variant, dtype_name, shape, seq, quick):
    h, kv_heads, d = shape
    decode = mode == "decode"
    dtype = DTYPES[dtype_name]
    n = 1 if decode else seq
    q_heads = 2 * h if variant == "diff" else h
    repeats = PREFILL_FP32_REPEATS if (not decode and dtype_name == "fp32") else REPEATS
    if quick:
        repeats = min(repeats, 10)
    row = None
    tried = {}
    for way in gqa_candidates(q_heads, kv_heads, d, n, dtype, not decode):
        try:
            us, rotate, kv_bytes = time_way(way, variant, shape, n, seq, dtype, decode, repeats)
        except RuntimeError as e:  # e.g. out of memory for one way: the others may still run
            log(f"{mode} {variant} {dtype_name} gqa={way[0]}/{way[2]} failed: {e}")
            torch.cuda.empty_cache()
            continue
        tried[f"{way[0]}/{way[2]}"] = us
        if row is None or us < row["median_us"]:
            row = {
                "bench": "attention", "impl": "pytorch", "dtype": dtype_name, "mode": mode,
                "variant": variant, "heads": h, "kv_heads": kv_heads, "head_dim": d,
                "seq": seq, "queries": n, "median_us": us, "rotate": rotate,
                "repeats": repeats, "kv_bytes": kv_bytes, "gqa": way[0], "backends": way[2],
            }
    if row is None:
        raise RuntimeError("no way of running this call worked")
    if len(tried) > 1:
        row["tried_us"] = tried
    return row


def attention_cases(quick):
    """(mode, variant, dtype, shape, seq) for every row, in output order."""
    if quick:
        return [("decode", v, "fp16", s, S) for s, S in [((16, 4, 64), 1024), ((32, 8, 128), 4096)]
                for v in ("diff", "standard")]
    cases = []
    for dtype in ("fp16", "fp32"):
        for shape in DECODE_SHAPES:
            for seq in DECODE_SEQS:
                cases += [("decode", v, dtype, shape, seq) for v in ("diff", "standard")]
        for seq in SMALL_SEQS:
            cases += [("decode", v, dtype, SMALL_SHAPE, seq) for v in ("diff", "standard")]
    for dtype in ("fp16", "fp32"):
        cases += [("prefill", v, dtype, PREFILL_SHAPE, PREFILL_SEQ) for v in ("diff", "standard")]
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 shapes only (smoke test)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        log("CUDA is not available; nothing measured")
        emit({"bench": "env", "error": "no CUDA"})
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # the default, stated: fp32 stays fp32
    emit(env_line())
    try:
        emit(bandwidth_line(10 if args.quick else 20))
    except Exception as e:
        log(f"bandwidth failed: {e}")
        emit({"bench": "bandwidth", "impl": "pytorch", "error": str(e)})
    for m, n, k in GEMM_SHAPES:
        try:
            emit(gemm_line(m, n, k, 10 if args.quick else 20))
        except Exception as e:
            log(f"gemm {m}x{n}x{k} failed: {e}")
            emit({"bench": "gemm", "impl": "pytorch", "m": m, "n": n, "k": k, "error": str(e)})
    for mode, variant, dtype, shape, seq in attention_cases(args.quick):
        h, hk, d = shape
        label = f"{mode} {variant} {dtype} h={h} h_kv={hk} d={d} S={seq}"
        try:
            row = attention_line(mode, variant, dtype, shape, seq, args.quick)
            log(f"{label}: {row['median_us']:.1f} us (gqa {row['gqa']}, rotate {row['rotate']})")
            emit(row)
        except Exception as e:  # one failing shape (e.g. out of memory) must not end the run
            log(f"{label} failed: {e}")
            emit({"bench": "attention", "impl": "pytorch", "mode": mode, "variant": variant,
                  "dtype": dtype, "heads": h, "kv_heads": hk, "head_dim": d, "seq": seq,
                  "error": str(e)})
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
