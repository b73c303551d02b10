"""CPU smoke test of the stability sweep tooling (train/stability.py), end to end on a tiny
made-up corpus and a tiny model: prepare (checksums, document split), lock-step training with
the per-step log (loss, gradient norm, context RMS), the spike and divergence rules, the time
guard, and the --plot path (tables and PNGs).

    python train/test_stability.py [--keep NEW_FOLDER]   (a few minutes on two busy cores; needs torch, matplotlib)

Not part of CI (CI has no torch).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stability as st  # noqa: E402

TINY = ["--hidden-size", "16", "--layers", "2", "--heads", "2", "--kv-heads", "1",
        "--head-dim", "8", "--intermediate-size", "32", "--seq-len", "16", "--batch-size", "2",
        "--warmup-steps", "20", "--measure-steps", "10", "--log-every", "10",
        "--eval-every", "50", "--device", "cpu"]
WORDS = ("the sea was calm that morning and a ship came in with its sails down while "
         "Elizabeth said nothing to the king of the old house by the river").split()


def cli(*args, check=True):
    p = subprocess.run([sys.executable, os.path.join(HERE, "stability.py"), *args],
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"stability.py {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def make_corpora(folder: str) -> None:
    """Two small corpora in the shared format (documents separated by a line <|endoftext|>),
    xz-compressed, with their SHA256SUMS."""
    rng = np.random.default_rng(7)
    sums = []
    for name, n_docs in (("corpus_lit.txt.xz", 160), ("corpus_docs.txt.xz", 70)):
        docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(15, 30)))) + "."
                for _ in range(n_docs)]
        text = ("\n" + st.EOT + "\n").join(docs) + "\n"
        path = os.path.join(folder, name)
        with lzma.open(path, "wb") as f:
            f.write(text.encode())
        sums.append(f"{hashlib.sha256(open(path, 'rb').read()).hexdigest()}  {name}\n")
    with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
        f.writelines(sums)


def test_definitions() -> None:
    rng = np.random.default_rng(0)
    flat = list(4.0 + 0.05 * rng.standard_normal(300))
    assert st.spike_steps(flat, 1.5) == [], "noise alone is not a spike"
    spiky = list(flat)
    spiky[149] = 6.5          # step 150: > 1.5 x median (~4.0)
    spiky[150] = 6.2          # step 151: same event
    spiky[199] = 5.9          # step 200: 5.9 < 6.0, below the threshold
    spiky[39] = 50.0          # step 40: inside the first 100 steps, never a spike
    assert st.spike_steps(spiky, 1.5) == [150, 151], st.spike_steps(spiky, 1.5)
    assert st.spike_events([150, 151, 160]) == [[150, 151], [160, 160]]
    falling = list(np.linspace(9.0, 3.0, 400))
    assert st.spike_steps(falling, 1.5) == [], "a falling loss has no spikes"
    g = [0.5] * 300
    g[219] = 2.4              # 4.8x the median: below the 5x rule
    g[249] = 2.6              # 5.2x: a gradient-norm spike at step 250
    assert st.spike_steps(g, st.GRAD_SPIKE_FACTOR) == [250]
    g[259] = float("nan")     # a NaN is a divergence, not a spike; windows holding it skip
    assert st.spike_steps(g, st.GRAD_SPIKE_FACTOR) == [250]
    assert st.first_nonfinite([1.0, 2.0, float("inf")], [1.0, float("nan"), 1.0]) == 2
    run = {"loss": [3.0, 3.0], "grad_norm": [1.0, 1.0], "final_val_lit": 4.2}
    assert st.divergence(run, None)["diverged"] is None
    assert st.divergence(run, 3.5)["diverged"] is False
    assert st.divergence(run, 3.1)["diverged"] is True          # 4.2 > 3.1 + 1.0
    assert st.divergence({**run, "grad_norm": [1.0, float("inf")]}, 3.5)["diverged"] is True
    assert st.divergence({**run, "final_val_lit": float("nan")}, 3.5)["diverged"] is True
    # Run names and slices: every run of the sweep once, 6 runs per slice, names round-trip.
    sweep = st.full_sweep()
    assert len(sweep) == len(set(sweep)) == 36
    for name in sweep:
        p = st.parse_run(name)
        assert st.run_name(p["variant"], p["lr_mult"], p["seed"], p["clip"]) == name
    assert all(len(s) == (6 if k.isdigit() else 3) for k, s in st.SLICES.items())
    assert all(st.SLICES[k + "a"] + st.SLICES[k + "b"] == st.SLICES[k] for k in "123456")
    assert st.slice_runs("2b+3") == st.SLICES["2b"] + st.SLICES["3"]
    for bad in ("1+1a", "7", "2b+", "3+3"):
        try:
            st.slice_runs(bad)
        except ValueError:
            continue
        raise AssertionError(f"slice_runs({bad!r}) was accepted")
    assert {n for n in sweep if n.endswith("-noclip")} == {
        st.run_name(v, m, 0, False) for v in st.VARIANTS for m in st.NOCLIP_MULTS}
    # One pass: the window order is a permutation, the same on every call.
    o = st.window_order(1000, 0)
    assert sorted(o.tolist()) == list(range(1000))
    assert (o == st.window_order(1000, 0)).all() and not (o == st.window_order(1000, 1)).all()
    # The schedule of train/train.py: linear warm-up, cosine to 0.1 x peak at the last step.
    assert math.isclose(st.lr_at(0, 100, 1.0, 10, 0.1), 0.1)
    assert math.isclose(st.lr_at(9, 100, 1.0, 10, 0.1), 1.0)
    assert math.isclose(st.lr_at(100, 100, 1.0, 10, 0.1), 0.1)
    print("definitions: ok")


def test_run_internals(data: str) -> None:
    """The context-RMS hook measures the o_proj input; a non-finite loss stops the run."""
    import argparse

    import torch

    ap_args = argparse.Namespace(hidden_size=16, layers=2, heads=2, kv_heads=1, head_dim=8,
                                 intermediate_size=32, seq_len=16, base_lr=None,
                                 weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    x = torch.randint(0, meta["vocab_size"], (2, 16))
    y = torch.randint(0, meta["vocab_size"], (2, 16))
    for variant, width in (("diff_v2", 16), ("standard", 16), ("standard_2h", 32)):
        r = st.Run(st.run_name(variant, 1, 0, True), ap_args, meta, torch.device("cpu"))
        seen = []
        hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, inp: seen.append(inp[0].detach().double()))
            for layer in r.model.model.layers]
        r.step(x, y, 1e-3, 1, True)
        for h in hooks:
            h.remove()
        assert all(c.shape[-1] == width for c in seen), (variant, [c.shape for c in seen])
        r.flush()
        assert r.rms_steps == [1] and len(r.ctx_rms) == 2
        for layer, c in enumerate(seen):
            want = float(c.pow(2).mean().sqrt())
            assert math.isclose(r.ctx_rms[layer][0], want, rel_tol=1e-5), (variant, layer)
        assert len(r.loss) == 1 and r.grad_norm[0] > 0 and r.active
        # Step 2 without RMS capture, then a NaN loss at step 3 (as a diverging run would give).
        r.step(x, y, 1e-3, 2, False)
        r.pending.append(torch.tensor([float("nan"), 1.0]))
        r.flush()
        assert r.diverged_step == 3 and not r.active and r.rms_steps == [1]
    print("run internals: ok (context RMS = RMS of the o_proj input; NaN stops the run)")


def test_end_to_end(tmp: str) -> None:
    src = os.path.join(tmp, "src")
    data = os.path.join(tmp, "data")
    logs = os.path.join(tmp, "logs")
    docs = os.path.join(tmp, "docs")
    for d in (src, logs, docs):
        os.makedirs(d)
    make_corpora(src)

    # prepare: checksums are enforced.
    good = open(os.path.join(src, "SHA256SUMS")).read()
    with open(os.path.join(src, "SHA256SUMS"), "w") as f:
        f.write(good.replace(good[:8], "00000000", 1))
    p = cli("prepare", "--src", src, "--out", data, check=False)
    assert p.returncode != 0 and "checksum mismatch" in (p.stdout + p.stderr), p.stderr
    with open(os.path.join(src, "SHA256SUMS"), "w") as f:
        f.write(good)
    cli("prepare", "--src", src, "--out", data)
    meta = json.load(open(os.path.join(data, "meta.json")))
    for key, n_docs in (("lit", 160), ("docs", 70)):
        c = meta["corpora"][key]
        assert c["documents"] == n_docs and c["val_documents"] == max(1, round(n_docs * 0.015))
        assert c["train_documents"] + c["val_documents"] == n_docs
        assert os.path.getsize(os.path.join(data, f"{key}_train.bin")) == 2 * c["train_tokens"]
    test_run_internals(data)

    # train: four runs in lock-step, one pass over the tiny corpus.
    runs = ["diff_v2-lr1x-s0", "standard-lr1x-s0", "standard_2h-lr1x-s0",
            "diff_v2-lr16x-s0-noclip", "standard-lr1x-s1"]
    log_path = os.path.join(logs, "smoke.json.xz")
    p = cli("train", "--data", data, "--out", log_path, "--runs", ",".join(runs),
            "--time-budget", "600", "--save", "diff_v2-lr1x-s0", *TINY)
    assert "time guard:" in p.stdout, p.stdout
    from export import load_model_dir

    saved = load_model_dir(os.path.join(logs, "diff_v2-lr1x-s0"))
    assert saved.cfg.attention == "diff_v2" and saved.cfg.hidden_size == 16
    os.rename(os.path.join(logs, "diff_v2-lr1x-s0"), os.path.join(tmp, "saved"))
    log = st.read_log(log_path)
    assert log["complete"] and log["total_steps"] == log["one_pass_steps"] > 100
    n_tok = meta["corpora"]["lit"]["train_tokens"] + meta["corpora"]["docs"]["train_tokens"]
    assert log["train_tokens"] == n_tok and log["train_windows"] == (n_tok - 1) // 16
    assert log["total_steps"] == log["train_windows"] // 2
    assert set(log["runs"]) == set(runs)
    for name, r in log["runs"].items():
        steps = log["total_steps"]
        assert r["steps_done"] == steps and r["diverged_step"] is None, name
        assert len(r["loss"]) == len(r["grad_norm"]) == steps
        assert r["rms_steps"] == "all" and len(r["ctx_rms"]) == 2
        assert all(len(layer) == steps and min(layer) > 0 for layer in r["ctx_rms"])
        assert all(g > 0 for g in r["grad_norm"])
        assert math.isfinite(r["final_val_lit"]) and math.isfinite(r["final_val_docs"])
        assert r["evals"][0][0] == 10 and r["evals"][-1][0] == steps
        assert r["grad_clip"] == (None if name.endswith("noclip") else 1.0)
        # It learnt something from the made-up corpus of 50 words.
        assert np.mean(r["loss"][-20:]) < np.mean(r["loss"][:5]) - 1.0, name
    assert log["runs"]["standard_2h-lr1x-s0"]["config"]["num_attention_heads"] == 4

    # time guard: a budget the runs cannot meet fails loudly, and the partial log says so.
    bad = os.path.join(tmp, "guard.json.xz")
    p = cli("train", "--data", data, "--out", bad, "--runs", "diff_v2-lr1x-s0",
            "--time-budget", "0.01", *TINY, check=False)
    assert p.returncode == st.TIME_GUARD_EXIT and "TIME GUARD" in p.stderr, (p.returncode,
                                                                            p.stderr)
    g = st.read_log(bad)
    assert g["complete"] is False and "TIME GUARD" in g["stop_reason"]
    assert g["runs"]["diff_v2-lr1x-s0"]["steps_done"] < g["total_steps"]

    # --plot: refuses other data unless told, then writes the PNGs and the tables.
    md = os.path.join(docs, "stability.md")
    with open(md, "w") as f:
        f.write(f"# x\n\n{st.TABLE_BEGIN}\nNot run yet.\n{st.TABLE_END}\n\n## after\n")
    p = cli("--plot", "--logs", logs, "--docs", docs, check=False)
    assert p.returncode != 0 and "other than ../shared/data" in p.stderr, p.stderr
    p = cli("--plot", "--logs", logs, "--docs", docs, "--allow-other-data")
    for png in ("stability_loss_gradnorm.png", "stability_ctx_rms.png",
                "stability_val_vs_lr.png"):
        path = os.path.join(docs, png)
        from PIL import Image

        assert open(path, "rb").read(4) == b"\x89PNG" and 2_000 < os.path.getsize(path) < 400_000
        with Image.open(path) as im:
            assert im.width >= 400 and im.height >= 250, (png, im.size)
            assert len(im.getcolors(256) or []) > 4, "a blank plot"
    text = open(md).read()
    assert text.startswith("# x\n") and text.endswith("## after\n") and "Not run yet" not in text
    for name in runs:
        assert f"| {name} |" in text and name in p.stdout
    row = next(line for line in text.splitlines() if line.startswith("| diff_v2-lr16x-s0-noclip"))
    assert "| no |" in row or "| yes" in row, row       # the 1x reference is there: judged

    # Spikes and divergences planted into the log reach the table (counted against the table
    # of the unmodified log, in case the tiny runs have spikes of their own).
    def every_run_rows():
        part = open(md).read().split("### Per learning rate")[0]
        return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
                for line in part.splitlines() if line.startswith("| ") and "-lr" in line}

    def count(cell):  # "E (S)" -> (E, S)
        e, s = cell.split(" ")
        return int(e), int(s.strip("()"))

    before = every_run_rows()
    raw = st.read_log(log_path)
    r = raw["runs"]["standard-lr1x-s0"]
    r["loss"][150] = 3.0 * max(r["loss"][50:150])      # step 151: a loss spike
    r["grad_norm"][160] = 50.0 * max(r["grad_norm"][60:160])   # step 161: a grad-norm spike
    raw["runs"]["standard_2h-lr1x-s0"]["grad_norm"][105] = "nan"
    st.write_log(log_path, raw)
    cli("--plot", "--logs", logs, "--docs", docs, "--allow-other-data")
    after = every_run_rows()
    summ = st.summarize(st.load_runs(logs, False, True)[0])["standard-lr1x-s0"]
    assert [151, 151] in summ["loss_spike_events"] and [161, 161] in summ["grad_spike_events"]
    b, a = before["standard-lr1x-s0"], after["standard-lr1x-s0"]
    assert a[4] == f"{len(summ['loss_spike_events'])} ({len(summ['loss_spike_steps'])})", a
    assert a[5] == f"{len(summ['grad_spike_events'])} ({len(summ['grad_spike_steps'])})", a
    assert count(a[4])[1] >= count(b[4])[1] + 1 and count(a[5])[1] >= count(b[5])[1] + 1, (b, a)
    assert after["standard_2h-lr1x-s0"][7].startswith("yes (non-finite at step 106)"), after
    assert before["standard_2h-lr1x-s0"][7] == "no"
    assert after["diff_v2-lr1x-s0"] == before["diff_v2-lr1x-s0"]
    # Incomplete logs are refused unless asked for.
    os.replace(bad, os.path.join(logs, "guard.json.xz"))
    p = cli("--plot", "--logs", logs, "--docs", docs, "--allow-other-data", check=False)
    assert p.returncode != 0 and "incomplete" in p.stderr
    print("end to end: ok (prepare, lock-step training log, time guard, --plot tables and PNGs)")


def main() -> None:
    test_definitions()
    if len(sys.argv) == 3 and sys.argv[1] == "--keep":
        # Keep the corpora, logs, plots and markdown for a look: --keep EMPTY_FOLDER.
        os.makedirs(sys.argv[2], exist_ok=False)
        test_end_to_end(sys.argv[2])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            test_end_to_end(tmp)
    print("all stability checks passed")


if __name__ == "__main__":
    main()
