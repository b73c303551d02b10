#!/usr/bin/env python3
"""Turns one bench/run.sh call's raw lines into a results file and the docs table.

Inputs: ``ours.jsonl`` (lines of ``diffattn bench ... --json``) and ``torch.jsonl`` (lines of
``bench/pytorch_baseline.py``). Output: ``<out-dir>/<YYYY-MM-DD>-<gpu-slug>.json`` with one row per
comparison, and the part of the docs file between ``<!-- results:begin -->`` and
``<!-- results:end -->`` (everything else in that file is kept). The table is also printed.

Row fields: work, unit, diffattn, baseline, baseline_value, ratio, bw_fraction. The ratio is
oriented so that above 1 means diffattn wins: baseline_value / diffattn for times ("us"),
diffattn / baseline_value for rates (TFLOP/s, tok/s, GB/s). bw_fraction is the K/V bytes one call
reads over its time, as a fraction of the read bandwidth our own probe measured.

Standard library only. ``--self-test`` checks all of this on made-up inputs.
"""

import argparse
import datetime
import json
import os
import re
import sys
import tempfile

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
# Units where less is better (times, memory): the ratio is baseline / ours.
LOWER_IS_BETTER = {"us", "ms", "s", "MiB"}

DOCS_TEMPLATE = """# Benchmarks

## Method

One call of `bench/run.sh` on the GPU machine produces everything below: it builds nothing (the
`diffattn` binary is built beforehand), runs the read-bandwidth probe (`diffattn bench bandwidth`),
the `diffattn bench attention` rows, and `bench/pytorch_baseline.py` (PyTorch SDPA on the same
shapes) in the same call on the same machine, then `bench/collect.py` writes the results file in
`bench/results/` and the table here.

- diffattn times one attention call with GPU timestamps around its compute passes; PyTorch is timed
  with a CUDA event pair around each call. Every figure is the median of the timed repeats.
- Decode K/V caches are rotated (each repeat reads the next of R separate caches, R large enough
  that at least 256 MiB lies between two uses of one cache), so L2 holds none of the cache a call
  reads: these are cold-cache, from-HBM numbers, as in real decoding.
- `ratio` is oriented so that above 1 means diffattn wins: baseline time / diffattn time for times
  (us), diffattn / baseline for rates (TFLOP/s, tok/s, GB/s). For "diff vs standard" rows the
  baseline is diffattn's own standard attention at the same h_kv (target: diff / standard <= 1.10,
  that is ratio >= 0.91).
- `bw fraction` is the bytes of K and V one decode call reads, divided by its time, as a fraction
  of the read bandwidth measured by the probe in the same call.

"""


# ---------------------------------------------------------------- reading


def read_jsonl(path):
    """Dicts with a "bench" key, in file order; anything else (log text, other JSON) is skipped."""
    out = []
    if not path or not os.path.exists(path):
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "bench" in obj:
                out.append(obj)
    return out


def torch_dtype(kv_dtype):
    return {"f16": "fp16", "f32": "fp32", "fp16": "fp16", "fp32": "fp32"}.get(kv_dtype, kv_dtype)


def shape_key(r, dtype):
    return (r.get("mode"), r.get("heads"), r.get("kv_heads"), r.get("head_dim"), r.get("seq"),
            r.get("queries"), dtype)


def ours_key(r):
    return (r.get("variant"),) + shape_key(r, torch_dtype(r.get("kv_dtype")))


def torch_key(r):
    return (r.get("variant"),) + shape_key(r, r.get("dtype"))


def has_time(r):
    return isinstance(r.get("median_us"), (int, float)) and "error" not in r


# ---------------------------------------------------------------- rows


def ratio(unit, ours, base):
    if not isinstance(ours, (int, float)) or not isinstance(base, (int, float)):
        return None
    if ours == 0 or base == 0:
        return None
    return base / ours if unit in LOWER_IS_BETTER else ours / base


def make_row(work, unit, ours, baseline, baseline_value, bw_fraction=None):
    return {"work": work, "unit": unit, "diffattn": ours, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio(unit, ours, baseline_value),
            "bw_fraction": bw_fraction}


def describe(r):
    return (f"h={r.get('heads')} h_kv={r.get('kv_heads')} d={r.get('head_dim')} "
            f"S={r.get('seq')} {r.get('kv_dtype')}")


def kv_bytes(r):
    """K plus V bytes one call reads: the row's own figure, else from the shape."""
    if isinstance(r.get("kv_bytes"), (int, float)):
        return r["kv_bytes"]
    try:
        width = {"f16": 2, "f32": 4}[r["kv_dtype"]]
        return 2 * r["seq"] * r["kv_heads"] * r["head_dim"] * width
    except (KeyError, TypeError):
        return None


def bw_fraction(r, read_gb_s):
    b = kv_bytes(r)
    if b is None or not read_gb_s or not r.get("median_us"):
        return None
    return b / (r["median_us"] * 1e-6) / (read_gb_s * 1e9)


def torch_tflop_s(t):
    """4 * visible * q_heads * d / time, with visible = N(N+1)/2 for causal prefill (N = S)."""
    n = t.get("queries") or t["seq"]
    visible = n * (n + 1) / 2 if t.get("mode") == "prefill" else n * t["seq"]
    q_heads = 2 * t["heads"] if t.get("variant") == "diff" else t["heads"]
    return 4 * visible * q_heads * t["head_dim"] / (t["median_us"] * 1e-6) / 1e12


def baseline_name(dtype, variant, t):
    name = f"pytorch {dtype} sdpa" + ("+diff" if variant == "diff" else "")
    if t is not None and t.get("gqa") == "repeat":
        name += " (K/V repeated)"
    return name


def first_by_key(rows, keyfn):
    seen = {}
    for r in rows:
        seen.setdefault(keyfn(r), r)
    return seen


def build_rows(ours, torch_rows):
    bw = next((r for r in ours if r["bench"] == "bandwidth" and "error" not in r), None)
    tbw = next((r for r in torch_rows if r["bench"] == "bandwidth" and "error" not in r), None)
    read = bw.get("read_gb_s") if bw else None
    att = [r for r in ours if r["bench"] == "attention" and has_time(r)]
    tatt = first_by_key([r for r in torch_rows if r["bench"] == "attention" and has_time(r)],
                        torch_key)
    first = first_by_key(att, ours_key)
    unique = list(first.values())

    rows = []
    if bw or tbw:
        rows.append(make_row("read bandwidth", "GB/s", read, "pytorch sum",
                             tbw.get("read_gb_s") if tbw else None))
        rows.append(make_row("copy bandwidth", "GB/s", bw.get("copy_gb_s") if bw else None,
                             "pytorch copy_", tbw.get("copy_gb_s") if tbw else None))
        # The floor of a short call: one tiny dispatch, and two dependent ones (first pass and
        # merge), against one and two tiny CUDA kernels.
        for key, work, base in (("one_dispatch_us", "one tiny dispatch", "pytorch one tiny kernel"),
                                ("two_dispatches_us", "two dependent tiny dispatches",
                                 "pytorch two tiny kernels")):
            if (bw and key in bw) or (tbw and key in tbw):
                rows.append(make_row(work, "us", bw.get(key) if bw else None, base,
                                     tbw.get(key) if tbw else None))

    for mode in ("decode", "prefill"):
        mine = [r for r in unique if r.get("mode") == mode]
        for r in mine:
            dtype = torch_dtype(r.get("kv_dtype"))
            t = tatt.get(ours_key(r))
            work = f"{mode} {r.get('variant')} {describe(r)}"
            if mode == "decode":
                rows.append(make_row(work, "us", r["median_us"],
                                     baseline_name(dtype, r.get("variant"), t),
                                     t["median_us"] if t else None, bw_fraction(r, read)))
            else:
                rows.append(make_row(work, "TFLOP/s", r.get("tflop_s"),
                                     baseline_name(dtype, r.get("variant"), t),
                                     torch_tflop_s(t) if t else None))
        for r in mine:
            if r.get("variant") != "diff":
                continue
            s = first.get(("standard",) + ours_key(r)[1:])
            if s is None:
                continue
            rows.append(make_row(f"{mode} diff vs standard {describe(r)}", "us", r["median_us"],
                                 "diffattn standard", s["median_us"]))

    # The same row measured again in later processes: buffer placement shows up here.
    counts = {}
    for r in att:
        k = ours_key(r)
        counts[k] = counts.get(k, 0) + 1
        if counts[k] > 1:
            f = first[k]
            rows.append(make_row(f"placement {r.get('mode')} {r.get('variant')} {describe(r)} "
                                 f"process {counts[k]}", "us", r["median_us"], "first process",
                                 f["median_us"]))

    rows.extend(gemm_rows(ours, torch_rows))
    rows.extend(generate_rows(ours, torch_rows))

    for r in ours:
        if r["bench"] == "row" and "work" in r:
            rows.append(make_row(r["work"], r.get("unit", ""), r.get("diffattn"),
                                 r.get("baseline", ""), r.get("baseline_value"),
                                 r.get("bw_fraction")))
    return rows


def gemm_rows(ours, torch_rows):
    """The prompt products and the tensor-core ceiling (TFLOP/s), each against PyTorch's fp16
    matmul of the same shape (its best case: both operands f16)."""
    tg = {(r.get("m"), r.get("n"), r.get("k")): r for r in torch_rows
          if r.get("bench") == "gemm" and "error" not in r}
    rows = []
    for r in ours:
        if r.get("bench") != "gemm" or not has_time(r):
            continue
        t = tg.get((r.get("m"), r.get("n"), r.get("k")))
        rows.append(make_row(f"gemm {r.get('kernel')} {r.get('m')}x{r.get('n')}x{r.get('k')}",
                             "TFLOP/s", r.get("tflop_s"), "pytorch fp16 matmul",
                             t.get("tflop_s") if t else None))
    return rows


def generate_rows(ours, torch_rows):
    """Token generation (batch 1, greedy): per diffattn model/prompt, decode tok/s against the
    fastest PyTorch way of the same model and prompt, prefill tok/s against PyTorch eager, first
    token ms against the fastest PyTorch first token. The random SmolLM2-shape model is
    "smollm2-135m" on our side and "smollm2-135m-arch" on PyTorch's."""
    def ok(r):
        return r["bench"] == "generate" and "error" not in r and r.get("decode_tok_s")

    def model_key(name):
        return {"smollm2-135m-arch": "smollm2-135m"}.get(name, name)

    mine = [r for r in ours if ok(r) and not r.get("temperature")]
    sampled = [r for r in ours if ok(r) and r.get("temperature")]
    theirs = [r for r in torch_rows if ok(r)]
    rows = []
    # Sampled decoding has no PyTorch counterpart: it is compared with our own greedy decoding of
    # the same model, prompt and KV type.
    for r in sampled:
        greedy = next((g for g in mine if g.get("model") == r.get("model")
                       and g.get("prompt_tokens") == r.get("prompt_tokens")
                       and g.get("kv") == r.get("kv")), None)
        rows.append(make_row(
            f"generate {r.get('model')} ({r.get('weights')} weights, {r.get('kv')} KV), prompt "
            f"{r.get('prompt_tokens')}: decode sampled at temperature {r.get('temperature')}",
            "tok/s", r["decode_tok_s"], "diffattn greedy",
            greedy["decode_tok_s"] if greedy else None))
    for r in mine:
        same = [t for t in theirs if model_key(t.get("model")) == model_key(r.get("model"))
                and t.get("prompt_tokens") == r.get("prompt_tokens")]
        what = (f"generate {r.get('model')} ({r.get('weights')} weights, {r.get('kv')} KV), "
                f"prompt {r.get('prompt_tokens')}")
        best = max(same, key=lambda t: t["decode_tok_s"], default=None)
        rows.append(make_row(f"{what}: decode", "tok/s", r["decode_tok_s"],
                             f"pytorch {best['dtype']} {best['way']}" if best else "pytorch",
                             best["decode_tok_s"] if best else None))
        eager = [t for t in same if t.get("way") == "eager" and t.get("prefill_tok_s")]
        fast = max(eager, key=lambda t: t["prefill_tok_s"], default=None)
        rows.append(make_row(f"{what}: prefill", "tok/s", r.get("prefill_tok_s"),
                             f"pytorch {fast['dtype']} eager" if fast else "pytorch eager",
                             fast["prefill_tok_s"] if fast else None))
        firsts = [t for t in same if t.get("first_token_ms")]
        quick = min(firsts, key=lambda t: t["first_token_ms"], default=None)
        rows.append(make_row(f"{what}: first token", "ms", r.get("first_token_ms"),
                             f"pytorch {quick['dtype']} {quick['way']}" if quick else "pytorch",
                             quick["first_token_ms"] if quick else None))
        # A quantized GGUF model's memory beside the same shape with f16 weights (ratio > 1: less).
        f16 = next((g for g in mine if g.get("model") == r.get("model")
                    and g.get("weights") == "f16"), None)
        if "gguf" in str(r.get("weights")) and r.get("gpu_memory_mib") and f16:
            rows.append(make_row(f"{what}: GPU memory", "MiB", r["gpu_memory_mib"],
                                 "diffattn f16 weights", f16.get("gpu_memory_mib")))
        if r.get("gpu_ms_per_token") is not None:
            rows.append(make_row(f"{what}: GPU ms per decode token (host {r.get('host_ms_per_token', 0):.3f} ms)",
                                 "ms", r["gpu_ms_per_token"], "pytorch gpu events",
                                 best.get("gpu_ms_per_token") if best else None))
    return rows


# ---------------------------------------------------------------- machine


def machine(ours, torch_rows):
    env = next((r for r in torch_rows if r["bench"] == "env" and "error" not in r), {})
    adapter = next((r for r in ours if r["bench"] == "adapter"), {})
    named = next((r.get("adapter") for r in ours if isinstance(r.get("adapter"), str)), None)
    gpu = env.get("gpu") or adapter.get("name") or named or "unknown-gpu"
    driver = env.get("driver") or adapter.get("driver_info") or adapter.get("driver")
    return gpu, driver


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------- formatting


def fmt_value(v, unit):
    if v is None:
        return "n/a"
    if not isinstance(v, (int, float)):
        return str(v)
    if unit == "us":
        return f"{v:.1f}"
    if unit == "TFLOP/s":
        return f"{v:.2f}"
    if unit == "GB/s":
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    if unit == "tok/s":
        return f"{v:.1f}"
    return f"{v:.4g}"


def table(rows):
    lines = ["| work | unit | diffattn | baseline | baseline value | ratio | bw fraction |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        ratio_s = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        frac = "" if r["bw_fraction"] is None else f"{100 * r['bw_fraction']:.1f}%"
        lines.append(f"| {r['work']} | {r['unit']} | {fmt_value(r['diffattn'], r['unit'])} | "
                     f"{r['baseline']} | {fmt_value(r['baseline_value'], r['unit'])} | "
                     f"{ratio_s} | {frac} |")
    return "\n".join(lines)


def results_block(result):
    driver = f", driver {result['driver']}" if result["driver"] else ""
    head = (f"{result['gpu']}{driver}, {result['date']}, commit `{result['commit']}` "
            f"(ratio > 1: diffattn wins)")
    return f"{head}\n\n{table(result['rows'])}\n"


def markers(part):
    """The docs markers of a part's table: the whole run's, or a named part's own."""
    if not part:
        return BEGIN, END
    return f"<!-- results-{part}:begin -->", f"<!-- results-{part}:end -->"


def update_docs(path, block, part=None):
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else DOCS_TEMPLATE
    begin, end = markers(part)
    section = f"{begin}\n{block}{end}"
    b, e = text.find(begin), text.find(end)
    if b >= 0 and e > b:
        text = text[:b] + section + text[e + len(end):]
    else:
        title = f"Results ({part})" if part else "Results"
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------- main


def collect(ours_path, torch_path, commit, out_dir, docs, date=None, quiet=False, part=None):
    ours = read_jsonl(ours_path)
    torch_rows = read_jsonl(torch_path)
    gpu, driver = machine(ours, torch_rows)
    date = date or datetime.date.today().isoformat()
    result = {"date": date, "gpu": gpu, "driver": driver, "commit": commit,
              "rows": build_rows(ours, torch_rows)}
    os.makedirs(out_dir, exist_ok=True)
    name = f"{date}-{slug(gpu)}" + (f"-{slug(part)}" if part else "")
    out = os.path.join(out_dir, f"{name}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    block = results_block(result)
    if docs:
        update_docs(docs, block, part)
    if not quiet:
        print(block)
        print(f"wrote {out}" + (f" and {docs}" if docs else ""), file=sys.stderr)
    return out, result


# ---------------------------------------------------------------- self-test


def _att(variant, seq, us, mode="decode", heads=32, kv=8, d=128, **extra):
    n = 1 if mode == "decode" else seq
    r = {"bench": "attention", "mode": mode, "variant": variant, "heads": heads, "kv_heads": kv,
         "head_dim": d, "seq": seq, "queries": n, "median_us": us}
    r.update(extra)
    return r


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        kvb = 2 * 65536 * 8 * 128 * 2  # 256 MiB of f16 K and V
        ours = [
            "diffattn log text, not JSON",
            json.dumps({"no_bench": 1}),
            json.dumps({"bench": "adapter", "name": "Fake GPU X", "driver": "fake"}),
            json.dumps({"bench": "bandwidth", "read_gb_s": 4000.0, "copy_gb_s": 3000.0,
                        "bytes": 1 << 30, "adapter": "Fake GPU X", "one_dispatch_us": 4.0,
                        "two_dispatches_us": 6.0}),
            json.dumps(_att("diff", 65536, 100.0, kv_dtype="f16", kv_bytes=kvb, rotate=1)),
            json.dumps(_att("standard", 65536, 95.0, kv_dtype="f16", kv_bytes=kvb)),
            json.dumps({"bench": "gemm", "kernel": "gemm_coop", "m": 64, "n": 32, "k": 16,
                        "median_us": 10.0, "tflop_s": 50.0}),
            json.dumps({"bench": "gemm", "kernel": "ceiling 2x4 x2", "error": "not available"}),
            json.dumps(_att("diff", 16384, 80.0, kv_dtype="f32")),  # no torch row, no kv_bytes
            json.dumps(_att("diff", 4096, 50000.0, mode="prefill", kv_dtype="f32",
                            tflop_s=5.5)),
            json.dumps(_att("standard", 4096, 30000.0, mode="prefill", kv_dtype="f32",
                            tflop_s=4.6)),
            json.dumps(_att("diff", 65536, 120.0, kv_dtype="f16", kv_bytes=kvb)),
            json.dumps(_att("diff", 65536, 90.0, kv_dtype="f16", kv_bytes=kvb)),
            json.dumps({"bench": "row", "work": "generate 128 tokens", "unit": "tok/s",
                        "diffattn": 300.0, "baseline": "pytorch eager", "baseline_value": 200.0}),
            json.dumps({"bench": "generate", "impl": "diffattn", "model": "smollm2-135m",
                        "weights": "f16", "kv": "f16", "prompt_tokens": 16, "tokens": 256,
                        "prefill_tok_s": 2000.0, "first_token_ms": 8.0, "decode_tok_s": 350.0,
                        "gpu_ms_per_token": 2.0, "host_ms_per_token": 0.9}),
            json.dumps({"bench": "generate", "impl": "diffattn", "model": "smollm2-135m",
                        "weights": "f16", "kv": "f16", "prompt_tokens": 16, "tokens": 256,
                        "temperature": 0.8, "prefill_tok_s": 2000.0, "first_token_ms": 8.0,
                        "decode_tok_s": 175.0}),
        ]
        torch_lines = [
            json.dumps({"bench": "env", "gpu": "NVIDIA H200 (fake)", "driver": "999.1",
                        "torch": "2.11", "cuda": "12.9"}),
            json.dumps({"bench": "bandwidth", "impl": "pytorch", "read_gb_s": 4400.0,
                        "copy_gb_s": 3600.0, "one_dispatch_us": 2.0, "two_dispatches_us": 3.0}),
            json.dumps(_att("diff", 65536, 150.0, impl="pytorch", dtype="fp16")),
            json.dumps({"bench": "gemm", "impl": "pytorch", "m": 64, "n": 32, "k": 16,
                        "median_us": 5.0, "tflop_s": 200.0}),
            json.dumps(_att("standard", 65536, 76.0, impl="pytorch", dtype="fp16")),
            json.dumps(_att("diff", 4096, 40000.0, mode="prefill", impl="pytorch",
                            dtype="fp32", gqa="repeat")),
            json.dumps(_att("standard", 4096, 10.0, mode="prefill", impl="pytorch",
                            dtype="fp32", error="out of memory")),
            json.dumps({"bench": "generate", "impl": "pytorch", "model": "smollm2-135m-arch",
                        "way": "eager", "dtype": "fp16", "prompt_tokens": 16, "tokens": 256,
                        "prefill_tok_s": 4000.0, "first_token_ms": 4.0, "decode_tok_s": 25.0}),
            json.dumps({"bench": "generate", "impl": "pytorch", "model": "smollm2-135m-arch",
                        "way": "cuda-graph", "dtype": "fp16", "prompt_tokens": 16, "tokens": 256,
                        "prefill_tok_s": 3000.0, "first_token_ms": 5.0, "decode_tok_s": 200.0,
                        "gpu_ms_per_token": 4.0}),
            json.dumps({"bench": "generate", "impl": "pytorch", "model": "smollm2-135m-arch",
                        "way": "transformers-generate", "dtype": "fp16", "prompt_tokens": 16,
                        "tokens": 64, "error": "failed"}),
        ]
        paths = {}
        for name, lines in (("ours.jsonl", ours), ("torch.jsonl", torch_lines)):
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "w") as f:
                f.write("\n".join(lines) + "\n")
        docs = os.path.join(tmp, "BENCHMARKS.md")
        with open(docs, "w") as f:
            f.write(f"# Benchmarks\n\nintro kept\n\n{BEGIN}\nold table\n{END}\n\n## Notes\n\ntail kept\n")

        out, result = collect(paths["ours.jsonl"], paths["torch.jsonl"], "abc123",
                              os.path.join(tmp, "results"), docs, date="2026-01-02", quiet=True)
        assert os.path.basename(out) == "2026-01-02-nvidia-h200-fake.json", out
        saved = json.load(open(out))
        assert saved["gpu"] == "NVIDIA H200 (fake)" and saved["driver"] == "999.1"
        assert saved["commit"] == "abc123" and saved["date"] == "2026-01-02"
        rows = {r["work"]: r for r in saved["rows"]}

        def close(a, b):
            return a is not None and abs(a - b) < 1e-9 * max(1.0, abs(b))

        r = rows["read bandwidth"]
        assert r["unit"] == "GB/s" and r["baseline"] == "pytorch sum" and close(r["ratio"], 4000 / 4400)
        r = rows["gemm gemm_coop 64x32x16"]
        assert r["unit"] == "TFLOP/s" and r["baseline"] == "pytorch fp16 matmul"
        assert close(r["ratio"], 0.25), r  # a rate: ours / torch
        assert not any(w.startswith("gemm ceiling") for w in rows), "an error row was kept"
        r = rows["two dependent tiny dispatches"]
        assert r["unit"] == "us" and r["baseline"] == "pytorch two tiny kernels"
        assert r["diffattn"] == 6.0 and close(r["ratio"], 0.5), r
        r = rows["decode diff h=32 h_kv=8 d=128 S=65536 f16"]
        assert r["baseline"] == "pytorch fp16 sdpa+diff" and r["baseline_value"] == 150.0
        assert close(r["ratio"], 1.5), r  # time: torch / ours, above 1 = diffattn wins
        assert close(r["bw_fraction"], kvb / 100e-6 / 4000e9), r
        r = rows["decode standard h=32 h_kv=8 d=128 S=65536 f16"]
        assert r["baseline"] == "pytorch fp16 sdpa" and close(r["ratio"], 76 / 95)
        r = rows["decode diff h=32 h_kv=8 d=128 S=16384 f32"]
        assert r["baseline"] == "pytorch fp32 sdpa+diff"
        assert r["baseline_value"] is None and r["ratio"] is None, r  # missing counterpart
        assert close(r["bw_fraction"], 2 * 16384 * 8 * 128 * 4 / 80e-6 / 4000e9), r
        r = rows["decode diff vs standard h=32 h_kv=8 d=128 S=65536 f16"]
        assert r["baseline"] == "diffattn standard" and close(r["ratio"], 95 / 100), r
        r = rows["prefill diff h=32 h_kv=8 d=128 S=4096 f32"]
        tflop = 4 * (4096 * 4097 / 2) * 64 * 128 / 40000e-6 / 1e12
        assert r["unit"] == "TFLOP/s" and r["baseline"] == "pytorch fp32 sdpa+diff (K/V repeated)"
        assert close(r["baseline_value"], tflop) and close(r["ratio"], 5.5 / tflop), r
        r = rows["prefill standard h=32 h_kv=8 d=128 S=4096 f32"]
        assert r["baseline_value"] is None and r["ratio"] is None, r  # torch row had an error
        r = rows["prefill diff vs standard h=32 h_kv=8 d=128 S=4096 f32"]
        assert close(r["ratio"], 30000 / 50000), r
        p2 = rows["placement decode diff h=32 h_kv=8 d=128 S=65536 f16 process 2"]
        p3 = rows["placement decode diff h=32 h_kv=8 d=128 S=65536 f16 process 3"]
        assert p2["diffattn"] == 120.0 and p2["baseline_value"] == 100.0 and close(p2["ratio"], 100 / 120)
        assert p3["baseline"] == "first process" and close(p3["ratio"], 100 / 90)
        assert "placement decode diff h=32 h_kv=8 d=128 S=65536 f16 process 1" not in rows
        r = rows["generate 128 tokens"]
        assert r["unit"] == "tok/s" and close(r["ratio"], 1.5), r
        g = "generate smollm2-135m (f16 weights, f16 KV), prompt 16"
        r = rows[f"{g}: decode"]
        assert r["baseline"] == "pytorch fp16 cuda-graph" and close(r["ratio"], 350 / 200), r
        r = rows[f"{g}: prefill"]
        assert r["baseline"] == "pytorch fp16 eager" and close(r["ratio"], 2000 / 4000), r
        r = rows[f"{g}: first token"]
        assert r["unit"] == "ms" and close(r["ratio"], 4 / 8), r
        r = rows[f"{g}: GPU ms per decode token (host 0.900 ms)"]
        assert close(r["ratio"], 4 / 2), r
        r = rows[f"{g}: decode sampled at temperature 0.8"]
        assert r["baseline"] == "diffattn greedy" and close(r["ratio"], 175 / 350), r

        text = open(docs).read()
        assert text.startswith("# Benchmarks\n\nintro kept\n\n" + BEGIN), text[:80]
        assert text.endswith(END + "\n\n## Notes\n\ntail kept\n"), text[-80:]
        assert "old table" not in text and text.count(BEGIN) == 1
        assert "| decode diff h=32 h_kv=8 d=128 S=65536 f16 | us | 100.0 |" in text
        assert "abc123" in text and "| 1.50 |" in text and "%" in text

        # Second run, same docs: idempotent outside the markers.
        collect(paths["ours.jsonl"], paths["torch.jsonl"], "def456",
                os.path.join(tmp, "results"), docs, date="2026-01-02", quiet=True)
        again = open(docs).read()
        assert again.replace("def456", "abc123") == text

        # A partial run: its own file and its own table; the whole run's table stays.
        out3, _ = collect(paths["ours.jsonl"], paths["torch.jsonl"], "p1",
                          os.path.join(tmp, "results"), docs, date="2026-01-02", quiet=True,
                          part="generate")
        assert os.path.basename(out3) == "2026-01-02-nvidia-h200-fake-generate.json", out3
        both = open(docs).read()
        assert both.count(BEGIN) == 1 and "<!-- results-generate:begin -->" in both
        assert "## Results (generate)" in both and "def456" in both and "p1" in both

        # No docs file yet, no torch lines at all: the template is created, nothing crashes.
        fresh = os.path.join(tmp, "new", "BENCHMARKS.md")
        out2, res2 = collect(paths["ours.jsonl"], os.path.join(tmp, "missing.jsonl"), "x",
                             os.path.join(tmp, "r2"), fresh, date="2026-01-02", quiet=True)
        assert os.path.basename(out2) == "2026-01-02-fake-gpu-x.json", out2
        made = open(fresh).read()
        assert made.startswith("# Benchmarks\n") and "## Method" in made
        assert BEGIN in made and END in made
        assert all(r["ratio"] is None for r in res2["rows"]
                   if r["baseline"].startswith("pytorch") and r["unit"] != "tok/s"), res2["rows"]
    print("collect.py self-test: ok")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", help="lines of `diffattn bench ... --json`")
    ap.add_argument("--torch", help="lines of bench/pytorch_baseline.py")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--docs", default="docs/BENCHMARKS.md")
    ap.add_argument("--date", help="YYYY-MM-DD (default: today)")
    ap.add_argument("--part", help="a partial run (e.g. generate): its own results file "
                    "(<date>-<gpu>-<part>.json) and its own table in the docs")
    ap.add_argument("--self-test", action="store_true", help="run the built-in test and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.ours:
        ap.error("--ours is required")
    collect(args.ours, args.torch, args.commit, args.out_dir, args.docs, date=args.date,
            part=args.part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
