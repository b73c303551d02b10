"""Training-stability sweep of issue 12 (docs/stability.md): DIFF V2 against standard attention
at large peak learning rates, in lock-step on identical batches, one pass over both corpora.

Four commands:

    # tokenise both checksummed corpora once (on the machine that trains)
    python train/stability.py prepare --src .traindata/src --out .traindata/stab
    # train one slice of the sweep (or an explicit list of runs), write one .json.xz log
    python train/stability.py train --data .traindata/stab --slice 1 --out $OUT/slice1.json.xz
    # the slices, their runs and a time estimate
    python train/stability.py plan --data .traindata/stab
    # plots and tables from the committed logs (train/results/stability/*.json.xz)
    python train/stability.py --plot

Everything in the definitions of docs/stability.md is implemented here: the spike rules
(`spike_steps`, `spike_events`), the divergence rules (`divergence`), the context RMS (a forward
pre-hook on each o_proj, `Run._rms_hook`) and the time guard (`TimeGuardError`, exit status 3).
Only torch, numpy and tokenizers are needed to prepare and train; matplotlib only for --plot.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import math
import os
import random
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# The document separator of tokenizer.py (tokenizer.EOT; cmd_prepare checks they agree). Not
# imported from there at module level: tokenizer.py needs the tokenizers package, which only
# `prepare` uses, and --plot must run where only numpy and matplotlib are installed.
EOT = "<|endoftext|>"

LOG_FORMAT = "diffattn-stability-1"
BASE_LR = 1.5e-3                 # today's peak learning rate (docs/training.md)
LR_MULTS = (1, 2, 4, 8, 16)
NOCLIP_MULTS = (4, 16)
VARIANTS = ("diff_v2", "standard", "standard_2h")
CORPORA = ("corpus_lit.txt.xz", "corpus_docs.txt.xz")
# The checksums of ../shared/data/SHA256SUMS. `prepare` checks the files against the SHA256SUMS
# beside them; --plot refuses logs whose data does not carry these sums (unless told otherwise),
# so that no result from other data can reach docs/stability.md.
SHARED_SUMS = {
    "corpus_lit.txt.xz": "f48f7af6b82e6c448838db12304e7f6c6600e03fd8fb7060f2cdf268483a15f1",
    "corpus_docs.txt.xz": "e139e228e8395cdb1a828c8fd7367849810a9e289c2561c005a6aae7788f2e26",
}
SPIKE_WINDOW = 100
LOSS_SPIKE_FACTOR = 1.5
GRAD_SPIKE_FACTOR = 5.0
DIVERGENCE_MARGIN = 1.0
TIME_GUARD_EXIT = 3
DEFAULT_LOGS = os.path.join(HERE, "results", "stability")
DEFAULT_DOCS = os.path.join(ROOT, "docs")


# ----------------------------------------------------------------------------------------------
# The sweep and its slices
# ----------------------------------------------------------------------------------------------

def run_name(variant: str, mult: float, seed: int, clip: bool) -> str:
    m = f"{mult:g}"
    return f"{variant}-lr{m}x-s{seed}" + ("" if clip else "-noclip")


def parse_run(name: str) -> dict:
    """Inverse of run_name: 'standard_2h-lr16x-s0-noclip' -> its parts."""
    parts = name.split("-")
    if len(parts) not in (3, 4) or not parts[1].startswith("lr") or not parts[1].endswith("x") \
            or not parts[2].startswith("s") or parts[0] not in VARIANTS \
            or (len(parts) == 4 and parts[3] != "noclip"):
        raise ValueError(f"not a run name: {name!r} (want VARIANT-lrMx-sSEED[-noclip])")
    return {"variant": parts[0], "lr_mult": float(parts[1][2:-1]), "seed": int(parts[2][1:]),
            "clip": len(parts) == 3}


def _group(mults, seed, clip):
    return [run_name(v, m, seed, clip) for m in mults for v in VARIANTS]


# Each slice is 2 (rate, seed, clipping) groups x 3 variants = 6 runs in lock-step, about 280 s
# of training on one H200 (`plan`; docs/stability.md "Slices of the sweep"), so that one slice
# with its tokenisation fits a device call of 540 s with room for a slower step than estimated.
# Slice 1 alone already compares the three variants at 1x and 16x.
SLICES = {
    "1": _group((1, 16), 0, True),
    "2": _group((4,), 0, True) + _group((16,), 0, False),
    "3": _group((2, 8), 0, True),
    "4": _group((1, 16), 1, True),
    "5": _group((4,), 1, True) + _group((4,), 0, False),
    "6": _group((2, 8), 1, True),
}


# Half slices (3 runs: one group of a slice) for a call that a whole slice would not fit: "1a"
# is the first group of slice 1, "1b" the second. A half and its whole slice must not both be
# in the logs (--plot refuses a run found twice).
for _k in list(SLICES):
    SLICES[_k + "a"], SLICES[_k + "b"] = SLICES[_k][:3], SLICES[_k][3:]


def slice_runs(spec: str) -> list[str]:
    """The runs of a slice, or of slices joined by '+' ("2b+3": one lock-step of 9 runs, so that
    a call's tokenisation and start-up serve more training)."""
    names = []
    for part in spec.split("+"):
        if part not in SLICES:
            raise ValueError(f"unknown slice {part!r} (1-6, or a half: 1a..6b)")
        names += SLICES[part]
    if len(set(names)) != len(names):
        raise ValueError(f"slices {spec!r} overlap (a half and its whole slice?)")
    return names


def full_sweep() -> list[str]:
    names = []
    for k, s in SLICES.items():
        if k.isdigit():
            names += s
    return names


# ----------------------------------------------------------------------------------------------
# Definitions (docs/stability.md): spikes and divergence. Pure functions over the logged series.
# ----------------------------------------------------------------------------------------------

def spike_steps(values, factor: float, window: int = SPIKE_WINDOW) -> list[int]:
    """1-based steps t > window with values[t] > factor * median(values[t-window .. t-1]).
    Non-finite values are never spikes (they are divergences); a window holding one is skipped."""
    v = np.asarray(values, dtype=np.float64)
    out = []
    for i in range(window, len(v)):
        prev = v[i - window:i]
        if not np.isfinite(v[i]) or not np.all(np.isfinite(prev)):
            continue
        if v[i] > factor * float(np.median(prev)):
            out.append(i + 1)
    return out


def spike_events(steps: list[int]) -> list[list[int]]:
    """Consecutive spike steps grouped into events: [[first, last], ...]."""
    events = []
    for s in steps:
        if events and s == events[-1][1] + 1:
            events[-1][1] = s
        else:
            events.append([s, s])
    return events


def first_nonfinite(*series) -> int | None:
    """1-based first step at which any of the series is NaN or infinite, else None."""
    best = None
    for s in series:
        a = np.asarray(s, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            t = int(bad[0]) + 1
            best = t if best is None else min(best, t)
    return best


def divergence(run: dict, reference_val: float | None) -> dict:
    """Rule (a): non-finite loss or gradient norm (the trainer records the step); rule (b): final
    validation loss above the 1x clipped run of the same variant and seed plus 1.0. Returns
    {"diverged": True/False/None, "why": str}; None when only rule (b) could decide and the
    reference run is missing."""
    step = run.get("diverged_step") or first_nonfinite(run["loss"], run["grad_norm"])
    if step is not None:
        return {"diverged": True, "why": f"non-finite at step {step}"}
    val = run.get("final_val_lit")
    if val is None or not math.isfinite(val):
        return {"diverged": True, "why": "non-finite validation loss"}
    if reference_val is None:
        return {"diverged": None, "why": "no 1x reference"}
    if val > reference_val + DIVERGENCE_MARGIN:
        return {"diverged": True, "why": f"val {val:.3f} > 1x {reference_val:.3f} + 1.0"}
    return {"diverged": False, "why": ""}


# ----------------------------------------------------------------------------------------------
# prepare: checksummed corpora -> token files, split by document as train/pretokenize.py does
# ----------------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path: str) -> dict[str, str]:
    sums = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
    return sums


def split_documents(docs: list[str], seed: int, val_fraction: float) -> set[int]:
    """The held-out document indices, drawn exactly as train/pretokenize.py draws them."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(docs) * val_fraction))
    return set(order[:n_val])


def cmd_prepare(args) -> None:
    from tokenizers import Tokenizer

    from tokenizer import EOT as TOKENIZER_EOT, read_documents  # train/tokenizer.py

    assert TOKENIZER_EOT == EOT, (TOKENIZER_EOT, EOT)

    t0 = time.time()
    sums_path = os.path.join(args.src, "SHA256SUMS")
    if not os.path.exists(sums_path):
        sys.exit(f"prepare: {sums_path} is missing: copy ../shared/data/SHA256SUMS beside the .xz")
    sums = read_sums(sums_path)
    tok = Tokenizer.from_file(args.tokenizer)
    eos = tok.token_to_id(EOT)
    if eos is None or tok.get_vocab_size() > 65536:
        sys.exit(f"prepare: {args.tokenizer} has no {EOT} or too many entries for uint16")
    os.makedirs(args.out, exist_ok=True)
    import tokenizers

    meta = {"tokenizers_version": tokenizers.__version__,
            "tokenizer": os.path.relpath(args.tokenizer, ROOT), "tokenizer_sha256":
            sha256_file(args.tokenizer), "eos_token_id": eos, "vocab_size": tok.get_vocab_size(),
            "split_seed": args.seed, "val_fraction": args.val_fraction, "corpora": {}}
    for name in CORPORA:
        src = os.path.join(args.src, name)
        if name not in sums:
            sys.exit(f"prepare: {name} is not listed in {sums_path}")
        got = sha256_file(src)
        if got != sums[name]:
            sys.exit(f"prepare: checksum mismatch for {src}: {got} != {sums[name]}")
        text_path = os.path.join(args.out, name[:-3] + ".tmp")
        with lzma.open(src, "rb") as fin, open(text_path, "wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)
        docs = read_documents(text_path)
        os.remove(text_path)
        if args.max_docs:
            docs = docs[:args.max_docs]
        val_idx = split_documents(docs, args.seed, args.val_fraction)
        encs = tok.encode_batch(docs, add_special_tokens=False)
        parts = {"train": [], "val": []}
        for i, e in enumerate(encs):
            parts["val" if i in val_idx else "train"].append(
                np.asarray(e.ids + [eos], dtype=np.uint16))
        key = name.split(".")[0].replace("corpus_", "")  # lit, docs
        info = {"file": name, "sha256": got, "documents": len(docs)}
        for split, arrs in parts.items():
            a = np.concatenate(arrs)
            a.tofile(os.path.join(args.out, f"{key}_{split}.bin"))
            info[f"{split}_documents"] = len(arrs)
            info[f"{split}_tokens"] = int(a.size)
        meta["corpora"][key] = info
        print(f"prepare: {name} sha256 ok, {len(docs)} documents, "
              f"{info['train_tokens']:,} train / {info['val_tokens']:,} val tokens "
              f"({time.time() - t0:.1f}s)", flush=True)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"prepare: done in {time.time() - t0:.1f}s -> {args.out}", flush=True)


# ----------------------------------------------------------------------------------------------
# train: lock-step runs on identical batches
# ----------------------------------------------------------------------------------------------

class TimeGuardError(RuntimeError):
    """The runs would not (or did not) finish their token budget inside --time-budget."""


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from peak to min_ratio * peak at the last
    step: the schedule of train/train.py."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    lo = peak * min_ratio
    return lo + 0.5 * (peak - lo) * (1.0 + math.cos(math.pi * t))


def _sig(x: float, digits: int):
    """Round to `digits` significant digits for a compact log; non-finite values become strings
    ("nan", "inf", "-inf") because JSON has no literal for them."""
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.{digits}g}")


def _unsig(v):
    return float(v) if isinstance(v, str) else v


def model_config(variant: str, args, meta: dict):
    from model import ModelConfig

    heads = args.heads * (2 if variant == "standard_2h" else 1)
    return ModelConfig(vocab_size=meta["vocab_size"], hidden_size=args.hidden_size,
                       num_hidden_layers=args.layers, num_attention_heads=heads,
                       num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                       intermediate_size=args.intermediate_size,
                       max_position_embeddings=args.seq_len,
                       attention="diff_v2" if variant == "diff_v2" else "standard",
                       eos_token_id=meta["eos_token_id"])


class Run:
    """One model, its optimizer and its per-step records. Per-step values stay on the device
    until `flush`, so that logging adds no synchronisation to the step."""

    def __init__(self, name: str, args, meta: dict, device):
        import torch

        from model import LanguageModel

        self.name = name
        self.spec = parse_run(name)
        self.cfg = model_config(self.spec["variant"], args, meta)
        self.peak_lr = BASE_LR * self.spec["lr_mult"] if args.base_lr is None \
            else args.base_lr * self.spec["lr_mult"]
        self.clip = args.grad_clip if self.spec["clip"] else float("inf")
        seed = self.spec["seed"]
        torch.manual_seed(seed)
        self.model = LanguageModel(self.cfg)
        self.model.reset_parameters(seed=seed)
        self.model.to(device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        kw = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.peak_lr, betas=(args.beta1, args.beta2), eps=1e-8, **kw)
        self.device = device
        self.use_amp = device.type == "cuda"
        self.active = True
        self.diverged_step = None
        self.capture = False
        self._rms_now = []
        for layer in self.model.model.layers:
            layer.self_attn.o_proj.register_forward_pre_hook(self._rms_hook)
        self.pending = []          # per step: stacked [loss, grad norm] (device tensors)
        self.pending_rms = []      # per logged step: (step, stacked per-layer RMS)
        self.loss, self.grad_norm, self.rms_steps = [], [], []
        self.ctx_rms = [[] for _ in range(self.cfg.num_hidden_layers)]
        self.evals = []
        self.events = []           # CUDA event pairs not read back yet
        self.gpu_ms = 0.0

    def _rms_hook(self, module, inputs):
        if self.capture:
            import torch

            with torch.no_grad():
                c = inputs[0].detach()
                n = torch.linalg.vector_norm(c, dtype=torch.float32)
                self._rms_now.append(n / math.sqrt(c.numel()))

    def autocast(self):
        import torch

        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    def step(self, x, y, lr: float, step: int, log_rms: bool) -> None:
        import torch
        import torch.nn.functional as F

        if self.device.type == "cuda":
            ev0 = torch.cuda.Event(enable_timing=True)
            ev1 = torch.cuda.Event(enable_timing=True)
            ev0.record()
        else:
            t0 = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.capture = log_rms
        self._rms_now = []
        with self.autocast():
            logits = self.model(x)
        self.capture = False
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        # The norm before clipping; with clip = inf the gradient is left as it is.
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.pending.append(torch.stack([loss.detach().float(), gn.detach().float()]))
        if log_rms:
            self.pending_rms.append((step, torch.stack(self._rms_now)))
        if self.device.type == "cuda":
            ev1.record()
            self.events.append((ev0, ev1))
        else:
            self.gpu_ms += (time.perf_counter() - t0) * 1000.0

    def flush(self) -> None:
        """Move the pending per-step values to the host; a non-finite loss or gradient norm marks
        the run as diverged at that step (rule (a)) and stops it."""
        import torch

        if self.events:
            torch.cuda.synchronize()
            self.gpu_ms += sum(a.elapsed_time(b) for a, b in self.events)
            self.events = []
        if self.pending:
            v = torch.stack(self.pending).cpu().double().numpy()
            first = len(self.loss) + 1
            self.loss += [float(a) for a in v[:, 0]]
            self.grad_norm += [float(a) for a in v[:, 1]]
            self.pending = []
            bad = first_nonfinite(v[:, 0], v[:, 1])
            if bad is not None and self.diverged_step is None:
                self.diverged_step = first + bad - 1
                self.active = False
                print(f"[{self.name}] diverged: non-finite loss or gradient norm at step "
                      f"{self.diverged_step}; the run stops there", flush=True)
        if self.pending_rms:
            steps = [s for s, _ in self.pending_rms]
            r = torch.stack([t for _, t in self.pending_rms]).cpu().double().numpy()
            self.pending_rms = []
            self.rms_steps += steps
            for layer in range(r.shape[1]):
                self.ctx_rms[layer] += [float(a) for a in r[:, layer]]

    def evaluate(self, tokens, starts, seq_len: int, batch: int) -> float:
        import torch
        import torch.nn.functional as F

        self.model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, starts.numel(), batch):
                x, y = gather(tokens, starts[i:i + batch], seq_len)
                with self.autocast():
                    logits = self.model(x)
                tot += float(F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1),
                                             reduction="sum"))
                n += y.numel()
        self.model.train()
        return tot / n

    def record(self) -> dict:
        self.flush()
        d = {**self.spec, "peak_lr": self.peak_lr,
             "grad_clip": None if math.isinf(self.clip) else self.clip,
             "config": json.loads(self.cfg.to_json()), "param_counts": self.model.param_counts(),
             "steps_done": len(self.loss), "diverged_step": self.diverged_step,
             "gpu_time_s": round(self.gpu_ms / 1000.0, 3),
             "loss": [_sig(a, 5) for a in self.loss],
             "grad_norm": [_sig(a, 4) for a in self.grad_norm],
             "rms_steps": self.rms_steps if self.rms_steps != list(range(1, len(self.loss) + 1))
             else "all",
             "ctx_rms": [[_sig(a, 4) for a in layer] for layer in self.ctx_rms],
             "evals": self.evals}
        d.update(getattr(self, "final", {}))
        return d


def gather(tokens, starts, seq_len: int):
    import torch

    idx = starts[:, None] + torch.arange(seq_len + 1, device=tokens.device)[None, :]
    w = tokens[idx]
    return w[:, :-1], w[:, 1:]


def window_order(n_windows: int, seed: int) -> np.ndarray:
    """The order in which a seed visits the training windows: a permutation, so that every window
    is used exactly once (one pass). numpy's generator, so every machine gets the same order."""
    return np.random.default_rng(20_000 + seed).permutation(n_windows)


def load_split(data: str, split: str) -> np.ndarray:
    parts = []
    for key in ("lit", "docs"):
        path = os.path.join(data, f"{key}_{split}.bin")
        parts.append(np.fromfile(path, dtype=np.uint16))
    return parts


def write_log(path: str, log: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    raw = json.dumps(log, separators=(",", ":")).encode()
    with lzma.open(path + ".tmp", "wb", preset=9) as f:
        f.write(raw)
    os.replace(path + ".tmp", path)


def read_log(path: str) -> dict:
    with lzma.open(path, "rb") as f:
        return json.loads(f.read())


def cmd_train(args) -> None:
    import torch

    t_start = time.time()
    if (args.slice is None) == (args.runs is None):
        sys.exit("train: give exactly one of --slice and --runs")
    try:
        names = slice_runs(args.slice) if args.slice else [s for s in args.runs.split(",") if s]
    except ValueError as e:
        sys.exit(f"train: {e}")
    for n in names:
        parse_run(n)
    if len(set(names)) != len(names):
        sys.exit("train: a run is listed twice")
    for n in [n for n in (args.save or "").split(",") if n]:
        if n not in names:
            sys.exit(f"train: --save {n} is not one of the runs")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    lit_tr, docs_tr = load_split(args.data, "train")
    lit_va, docs_va = load_split(args.data, "val")
    train_np = np.concatenate([lit_tr, docs_tr]).astype(np.int64)
    train_tok = torch.from_numpy(train_np).to(device)
    val_lit = torch.from_numpy(lit_va.astype(np.int64)).to(device)
    val_docs = torch.from_numpy(docs_va.astype(np.int64)).to(device)
    S, B = args.seq_len, args.batch_size
    n_windows = (train_tok.numel() - 1) // S
    total_steps = n_windows // B
    if args.max_steps is not None:
        if args.max_steps > total_steps:
            sys.exit(f"train: --max-steps {args.max_steps} is more than one pass ({total_steps})")
        total_steps = args.max_steps
    if total_steps <= args.warmup_steps:
        sys.exit(f"train: {total_steps} steps do not get past the {args.warmup_steps} warm-up steps")
    if args.measure_steps >= min(args.warmup_steps, total_steps):
        sys.exit("train: --measure-steps must be below the warm-up and the step count")
    val_lit_starts = torch.arange((val_lit.numel() - 1) // S, device=device) * S
    val_docs_starts = torch.arange((val_docs.numel() - 1) // S, device=device) * S
    seeds = sorted({parse_run(n)["seed"] for n in names})
    orders = {s: torch.from_numpy(window_order(n_windows, s)[:total_steps * B] * S).to(device)
              for s in seeds}
    runs = [Run(n, args, meta, device) for n in names]
    for r in runs:
        print(f"[{r.name}] peak lr {r.peak_lr:.3g} clip {r.clip} params {r.model.param_counts()}",
              flush=True)
    tokens_per_step = S * B
    log = {"format": LOG_FORMAT, "slice": args.slice, "runs_requested": names,
           "args": vars(args), "data": meta, "torch": torch.__version__,
           "device": str(device),
           "gpu_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "tokens_per_step": tokens_per_step, "train_tokens": int(train_tok.numel()),
           "train_windows": n_windows, "one_pass_steps": n_windows // B,
           "total_steps": total_steps, "unused_windows": n_windows - total_steps * B,
           "val_windows": {"lit": int(val_lit_starts.numel()), "docs": int(val_docs_starts.numel())},
           "rms_every": args.rms_every, "complete": False}
    print(f"data: {log['train_tokens']:,} training tokens, {n_windows:,} windows of {S}, "
          f"{total_steps} steps of {tokens_per_step:,} tokens"
          f"{' (reduced by --max-steps)' if args.max_steps else ' (one pass)'}; "
          f"validation {log['val_windows']}", flush=True)

    def save(reason: str, complete: bool, step: int) -> None:
        log.update({"complete": complete, "stop_reason": reason, "steps_done": step,
                    "wall_s": round(time.time() - t_start, 1),
                    "runs": {r.name: r.record() for r in runs}})
        write_log(args.out, log)

    def fail_time(msg: str, step: int):
        save(msg, False, step)
        raise TimeGuardError(msg)

    def do_eval(step: int) -> None:
        vals = []
        for r in runs:
            if r.active:
                v = r.evaluate(val_lit, val_lit_starts, S, B)
                r.evals.append([step, _sig(v, 6)])
                vals.append(f"{r.name}={v:.4f}")
        print(f"step {step:5d} val(lit) " + " ".join(vals), flush=True)

    t_loop = time.time()
    t_measure = None
    step = 0
    eval_s = 0.0
    while step < total_steps:
        idx = slice(step * B, (step + 1) * B)
        batches = {s: gather(train_tok, orders[s][idx], S) for s in seeds}
        log_rms = step % args.rms_every == 0
        for r in runs:
            if r.active:
                lr = lr_at(step, total_steps, r.peak_lr, args.warmup_steps, args.min_lr_ratio)
                r.step(*batches[r.spec["seed"]], lr, step + 1, log_rms)
        step += 1
        if step == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_measure = time.time()
        if step == args.measure_steps and t_measure is not None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_measure) / (args.measure_steps - 5)
            n_evals = total_steps // args.eval_every + 1
            # A first evaluation gives its cost; the final one also runs the docs split.
            te = time.time()
            do_eval(step)
            eval_s = time.time() - te
            need = (time.time() - t_start) + per_step * (total_steps - step) \
                + eval_s * (n_evals + 6)   # the final docs evaluation is ~4 lit ones
            print(f"time guard: {per_step * 1000:.1f} ms per lock-step of {len(runs)} runs, "
                  f"eval {eval_s:.1f}s; {total_steps} steps need ~{need:.0f}s of "
                  f"{args.time_budget:.0f}s", flush=True)
            if need * args.guard_margin > args.time_budget:
                fail_time(f"TIME GUARD: {total_steps} steps of {len(runs)} runs need about "
                          f"{need:.0f}s (x{args.guard_margin} margin) but --time-budget is "
                          f"{args.time_budget:.0f}s; nothing is cut short: run fewer runs per "
                          f"call (--runs) or give more time", step)
        if step % args.log_every == 0 or step == total_steps:
            for r in runs:
                r.flush()
            el = time.time() - t_loop
            print(f"step {step:5d}/{total_steps} {el:6.1f}s "
                  + " ".join(f"{r.name}={r.loss[-1]:.3f}/{r.grad_norm[-1]:.2f}"
                             for r in runs if r.loss), flush=True)
            if time.time() - t_start > args.time_budget:
                el = time.time() - t_start
                fail_time(f"TIME GUARD: {el:.0f}s spent at step {step} of {total_steps}, over "
                          f"--time-budget {args.time_budget:.0f}s; the runs are incomplete and "
                          f"the log says so", step)
            if not any(r.active for r in runs):
                print("all runs diverged", flush=True)
                break
        if step % args.eval_every == 0 and step != total_steps and step != args.measure_steps:
            do_eval(step)
    for r in runs:
        r.flush()
        if r.active:
            v_lit = r.evaluate(val_lit, val_lit_starts, S, B)
            v_docs = r.evaluate(val_docs, val_docs_starts, S, B)
            r.evals.append([step, _sig(v_lit, 6)])
        else:
            v_lit = v_docs = float("nan")
        r.final = {"final_val_lit": _sig(v_lit, 6), "final_val_docs": _sig(v_docs, 6)}
        print(f"[{r.name}] final val lit {v_lit:.4f} docs {v_docs:.4f} "
              f"max grad norm {max(r.grad_norm) if r.grad_norm else float('nan'):.3f} "
              f"gpu {r.gpu_ms / 1000:.1f}s", flush=True)
    el = time.time() - t_start
    if el > args.time_budget:
        # Every run did its whole budget, so nothing is truncated; the estimate was off.
        print(f"warning: the process took {el:.0f}s, over --time-budget "
              f"{args.time_budget:.0f}s (all steps were done)", flush=True)
    save("done", True, step)
    for name in [n for n in (args.save or "").split(",") if n]:
        # f16 shards with config and index (train/export.py), beside the log: a model directory
        # candidate for issue 12 point 5 (export.py adds the tokenizer and README).
        from export import save_sharded

        r = next(r for r in runs if r.name == name)
        d = os.path.join(os.path.dirname(os.path.abspath(args.out)), name)
        print(f"[{name}] saved {save_sharded(r.model, d, write_index=True)} to {d}", flush=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes); "
          f"done in {time.time() - t_start:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------------
# plan: slices and time estimates
# ----------------------------------------------------------------------------------------------

# Per-step GPU time of each variant alone, in ms (batch 32 x 512, H200, bf16, eager): diff_v2 and
# standard from docs/training.md (69.5 s and 59.3 s for 2,197 steps), standard_2h assumed equal
# to diff_v2 (same 12 query heads, no lambda); +5% for the context-RMS reductions.
MS_PER_STEP = {"diff_v2": 31.6 * 1.05, "standard": 27.0 * 1.05, "standard_2h": 31.6 * 1.05}


def estimate_s(names: list[str], steps: int) -> float:
    return steps * sum(MS_PER_STEP[parse_run(n)["variant"]] for n in names) / 1000.0


def cmd_plan(args) -> None:
    steps = args.steps
    if steps is None and args.data and os.path.exists(os.path.join(args.data, "meta.json")):
        with open(os.path.join(args.data, "meta.json")) as f:
            meta = json.load(f)
        n = sum(meta["corpora"][k]["train_tokens"] for k in ("lit", "docs"))
        steps = ((n - 1) // 512) // 32
    if steps is None:
        sys.exit("plan: give --steps or --data with a prepared meta.json")
    print(f"{steps} steps per run (one pass)")
    for k, names in SLICES.items():
        if not k.isdigit():
            continue
        print(f"slice {k}: {len(names)} runs, ~{estimate_s(names, steps):.0f}s of training: "
              + ", ".join(names))
    print("half slices 1a..6b: the first / second 3 runs of a slice, about half the time each")
    print(f"whole sweep: {len(full_sweep())} runs, "
          f"~{estimate_s(full_sweep(), steps):.0f}s of training")


# ----------------------------------------------------------------------------------------------
# --plot: tables and plots from the committed logs
# ----------------------------------------------------------------------------------------------

TABLE_BEGIN = "<!-- BEGIN generated by python train/stability.py --plot; do not edit -->"
TABLE_END = "<!-- END generated -->"
COLORS = {"diff_v2": "tab:red", "standard": "tab:blue", "standard_2h": "tab:green"}


def load_runs(logs_dir: str, allow_incomplete: bool, allow_other_data: bool):
    """All runs of all logs in logs_dir, by name. A run present in two logs is an error."""
    runs, sources, notes = {}, {}, []
    paths = sorted(glob.glob(os.path.join(logs_dir, "*.json.xz")))
    data_keys = {}
    for path in paths:
        log = read_log(path)
        # Runs of different calls share batches only if their token files were the same.
        data_keys.setdefault((log.get("train_tokens"), log.get("total_steps"),
                              log["data"].get("tokenizer_sha256")), []).append(
            os.path.basename(path))
        if log.get("format") != LOG_FORMAT:
            raise SystemExit(f"{path}: not a {LOG_FORMAT} log")
        if not log.get("complete"):
            if not allow_incomplete:
                raise SystemExit(f"{path}: incomplete log ({log.get('stop_reason')}); "
                                 "rerun the slice or pass --allow-incomplete")
            notes.append(f"{os.path.basename(path)} is incomplete: {log.get('stop_reason')}")
        sums = {c["file"]: c["sha256"] for c in log["data"]["corpora"].values()}
        if sums != SHARED_SUMS:
            if not allow_other_data:
                raise SystemExit(f"{path}: trained on data other than ../shared/data ({sums})")
            notes.append(f"{os.path.basename(path)} was trained on other data")
        if log["total_steps"] != log["one_pass_steps"]:
            notes.append(f"{os.path.basename(path)}: {log['total_steps']} steps instead of the "
                         f"one pass of {log['one_pass_steps']} (--max-steps)")
        for name, r in log["runs"].items():
            if name in runs:
                raise SystemExit(f"run {name} is in both {sources[name]} and {path}")
            r["loss"] = [_unsig(a) for a in r["loss"]]
            r["grad_norm"] = [_unsig(a) for a in r["grad_norm"]]
            r["ctx_rms"] = [[_unsig(a) for a in layer] for layer in r["ctx_rms"]]
            r["final_val_lit"] = _unsig(r.get("final_val_lit", float("nan")))
            r["final_val_docs"] = _unsig(r.get("final_val_docs", float("nan")))
            r["log"] = os.path.basename(path)
            runs[name] = r
            sources[name] = path
    if len(data_keys) > 1:
        notes.append("the logs disagree on the token files (training tokens, steps, tokenizer): "
                     + "; ".join(f"{k}: {', '.join(v)}" for k, v in data_keys.items())
                     + " -- runs of different groups did not see the same batches")
    return runs, notes


def summarize(runs: dict) -> dict:
    """Per run: spikes, max gradient norm, divergence (docs/stability.md definitions)."""
    out = {}
    for name, r in runs.items():
        ref_name = run_name(r["variant"], 1, r["seed"], True)
        ref = runs.get(ref_name)
        ref_val = None
        if ref is not None and name != ref_name:
            ref_val = ref["final_val_lit"] if math.isfinite(ref["final_val_lit"]) else None
        elif name == ref_name:
            ref_val = r["final_val_lit"]  # the reference itself: rule (b) cannot fire
        ls = spike_steps(r["loss"], LOSS_SPIKE_FACTOR)
        gs = spike_steps(r["grad_norm"], GRAD_SPIKE_FACTOR)
        g = np.asarray(r["grad_norm"], dtype=np.float64)
        g_fin = g[np.isfinite(g)]
        g_late = g[SPIKE_WINDOW:]
        g_late = g_late[np.isfinite(g_late)]
        out[name] = {
            "loss_spike_steps": ls, "loss_spike_events": spike_events(ls),
            "grad_spike_steps": gs, "grad_spike_events": spike_events(gs),
            "max_grad_norm": float(g_fin.max()) if g_fin.size else float("nan"),
            "max_grad_norm_after_100": float(g_late.max()) if g_late.size else float("nan"),
            **divergence(r, ref_val),
        }
    return out


def _fmt(x, nd=4):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _fmt_sig(x, digits=4):
    """A value the log stores to `digits` significant digits (the gradient norms), printed with
    that many and no more: 645.7 and 64460, not 645.700 and 64460.000."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def _div(s):
    return {True: "yes", False: "no", None: "n/a"}[s["diverged"]] + \
        (f" ({s['why']})" if s["why"] else "")


def _order(name: str):
    p = parse_run(name)
    return (not p["clip"], p["lr_mult"], VARIANTS.index(p["variant"]), p["seed"])


def tables(runs: dict, summ: dict) -> str:
    lines = ["### Every run", "",
             "| run | steps | val (lit) | val (docs) | loss spikes: events (steps) | "
             "grad-norm spikes: events (steps) | max grad norm (after step 100) | diverged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in sorted(runs, key=_order):
        r, s = runs[name], summ[name]
        lines.append(
            f"| {name} | {r['steps_done']} | {_fmt(r['final_val_lit'])} | "
            f"{_fmt(r['final_val_docs'])} | {len(s['loss_spike_events'])} "
            f"({len(s['loss_spike_steps'])}) | {len(s['grad_spike_events'])} "
            f"({len(s['grad_spike_steps'])}) | {_fmt_sig(s['max_grad_norm'])} "
            f"({_fmt_sig(s['max_grad_norm_after_100'])}) | {_div(s)} |")
    # Per rate and variant over the seeds (clipped runs; the no-clip runs have their own rows).
    lines += ["", "### Per learning rate and variant (mean over the seeds present)", "",
              "| peak lr | clip | variant | seeds | mean val (lit) | loss spike events | "
              "grad-norm spike events | max grad norm (after step 100) | divergences |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = {}
    for name in runs:
        p = parse_run(name)
        groups.setdefault((p["lr_mult"], p["clip"], p["variant"]), []).append(name)
    for key in sorted(groups, key=lambda k: (not k[1], k[0], VARIANTS.index(k[2]))):
        mult, clip, variant = key
        ns = sorted(groups[key], key=_order)
        vals = [runs[n]["final_val_lit"] for n in ns]
        fin = [v for v in vals if math.isfinite(v)]
        divs = [summ[n]["diverged"] for n in ns]
        div_txt = f"{sum(d is True for d in divs)}/{len(ns)}" + \
            (f" ({sum(d is None for d in divs)} n/a)" if any(d is None for d in divs) else "")
        lines.append(
            f"| {mult:g}x ({BASE_LR * mult:.2g}) | {'1.0' if clip else 'none'} | {variant} | "
            f"{','.join(str(runs[n]['seed']) for n in ns)} | "
            f"{_fmt(sum(fin) / len(fin)) if fin else '-'}"
            f"{f' (of {len(fin)}/{len(vals)} seeds)' if fin and len(fin) < len(vals) else ''} | "
            f"{sum(len(summ[n]['loss_spike_events']) for n in ns)} | "
            f"{sum(len(summ[n]['grad_spike_events']) for n in ns)} | "
            f"{_fmt_sig(max(summ[n]['max_grad_norm'] for n in ns))} "
            f"({_fmt_sig(max(summ[n]['max_grad_norm_after_100'] for n in ns))}) | {div_txt} |")
    # Each variant at its best clipped rate, parameters beside (issue 12, point 4).
    lines += ["", "### Each variant at its best rate (clipped runs, by mean val over seeds)", "",
              "| variant | parameters (total) | attention parameters | best peak lr | "
              "mean val (lit) | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for variant in VARIANTS:
        best = None
        for (mult, clip, v), ns in groups.items():
            if v != variant or not clip:
                continue
            vals = [runs[n]["final_val_lit"] for n in ns]
            if not all(math.isfinite(x) for x in vals):
                continue
            m = sum(vals) / len(vals)
            if best is None or m < best[0]:
                best = (m, mult, ns)
        if best is None:
            continue
        pc = runs[best[2][0]]["param_counts"]
        lines.append(f"| {variant} | {pc['total']:,} | {pc['attention']:,} | {best[1]:g}x "
                     f"({BASE_LR * best[1]:.2g}) | {best[0]:.4f} | "
                     f"{','.join(str(runs[n]['seed']) for n in sorted(best[2], key=_order))} |")
    return "\n".join(lines) + "\n"


PLOT_BIN = 10


def _binned(values, fn):
    """(bin centres, fn of each bin of PLOT_BIN steps), non-finite values left out."""
    v = np.asarray(values, dtype=np.float64)
    xs, ys = [], []
    for i in range(0, len(v), PLOT_BIN):
        b = v[i:i + PLOT_BIN]
        b = b[np.isfinite(b)]
        if b.size:
            xs.append(i + 1 + (min(PLOT_BIN, len(v) - i) - 1) / 2)
            ys.append(float(fn(b)))
    return np.asarray(xs), np.asarray(ys)


def _save_png(fig, path: str, dpi: int) -> None:
    """A 64-colour palette PNG: a fraction of the size of matplotlib's RGBA one, so the plots can
    be committed (PIL comes with matplotlib)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=64).save(path, optimize=True)


def plots(runs: dict, summ: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mults = sorted({parse_run(n)["lr_mult"] for n in runs})
    written = []
    # 1. loss and gradient norm against step, one row per peak rate.
    fig, axes = plt.subplots(len(mults), 2, figsize=(12, 2.6 * len(mults)), squeeze=False)
    for row, mult in enumerate(mults):
        ax_l, ax_g = axes[row]
        for name in sorted(runs, key=_order):
            p = parse_run(name)
            if p["lr_mult"] != mult:
                continue
            r = runs[name]
            ls = ":" if not p["clip"] else ("-" if p["seed"] == 0 else "--")
            col = COLORS[p["variant"]]
            # Bins of PLOT_BIN steps keep the PNGs small: the loss as the bin mean, the gradient
            # norm as the bin maximum; every spike step of the definitions is marked on top.
            x, lm = _binned(r["loss"], np.mean)
            _, gm = _binned(r["grad_norm"], np.max)
            ax_l.plot(x, lm, ls, color=col, lw=0.8, alpha=0.85, label=name)
            ax_g.plot(x, gm, ls, color=col, lw=0.8, alpha=0.85)
            s = summ[name]
            for ax, key, series in ((ax_l, "loss_spike_steps", r["loss"]),
                                    (ax_g, "grad_spike_steps", r["grad_norm"])):
                if s[key]:
                    ax.plot(s[key], [series[t - 1] for t in s[key]], "v", color=col, ms=4)
            if r.get("diverged_step"):
                ax_l.axvline(r["diverged_step"], color=COLORS[p["variant"]], lw=0.8)
        ax_l.set_ylim(2.0, 9.5)
        ax_g.set_yscale("log")
        ax_l.set_ylabel(f"{mult:g}x ({BASE_LR * mult:.2g})\ntraining loss")
        ax_g.set_ylabel("grad norm (before clip)")
        ax_l.legend(fontsize=5, ncol=2, loc="upper right")
        ax_l.grid(alpha=0.3)
        ax_g.grid(alpha=0.3)
    axes[-1][0].set_xlabel("step")
    axes[-1][1].set_xlabel("step")
    fig.suptitle(f"training loss (mean of {PLOT_BIN} steps) and gradient norm before clipping "
                 f"(max of {PLOT_BIN} steps); triangles: spike steps; solid: seed 0, dashed: "
                 "seed 1, dotted: no clipping", fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "stability_loss_gradnorm.png")
    _save_png(fig, path, 72)
    plt.close(fig)
    written.append(path)
    # 2. context RMS per layer: one row per rate, one column per variant (seed 0, clipped; the
    # no-clip run of the same rate dotted).
    variants = [v for v in VARIANTS if any(parse_run(n)["variant"] == v for n in runs)]
    fig, axes = plt.subplots(len(mults), len(variants), figsize=(4 * len(variants),
                             2.4 * len(mults)), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for row, mult in enumerate(mults):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            for clip, ls in ((True, "-"), (False, ":")):
                name = run_name(variant, mult, 0, clip)
                if name not in runs:
                    continue
                r = runs[name]
                n_layers = len(r["ctx_rms"])
                x = (np.arange(1, len(r["ctx_rms"][0]) + 1) if r["rms_steps"] == "all"
                     else np.asarray(r["rms_steps"]))
                for layer, ys in enumerate(r["ctx_rms"]):
                    # Every 5th logged value: the RMS moves slowly, the PNG stays small.
                    ax.plot(x[::5], np.asarray(ys, dtype=np.float64)[::5], ls,
                            color=cmap(layer / max(1, n_layers - 1)), lw=0.7,
                            label=f"layer {layer}" if clip else None)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(variant, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{mult:g}x\ncontext RMS")
            if row == 0 and col == 0:
                ax.legend(fontsize=5)
    fig.suptitle("context RMS (attention output before o_proj) per layer, seed 0, every 5th "
                 "step (dotted: no clipping)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "stability_ctx_rms.png")
    _save_png(fig, path, 72)
    plt.close(fig)
    written.append(path)
    # 3. final validation loss against the peak rate, per variant (diverged runs left out).
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in variants:
        for clip, marker in ((True, "o"), (False, "x")):
            pts = sorted((parse_run(n)["lr_mult"], r["final_val_lit"], parse_run(n)["seed"])
                         for n, r in runs.items() if parse_run(n)["variant"] == variant
                         and parse_run(n)["clip"] == clip and math.isfinite(r["final_val_lit"]))
            for seed, ls in ((0, "-"), (1, "--")):
                xs = [m for m, _, s in pts if s == seed]
                ys = [v for _, v, s in pts if s == seed]
                if xs:
                    ax.plot(xs, ys, ls, marker=marker, color=COLORS[variant], lw=1, ms=4,
                            label=f"{variant} s{seed}" + ("" if clip else " no clip"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(LR_MULTS), [f"{m}x" for m in LR_MULTS])
    ax.set_xlabel(f"peak learning rate (1x = {BASE_LR:g})")
    ax.set_ylabel("final validation loss (literature split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(out_dir, "stability_val_vs_lr.png")
    _save_png(fig, path, 80)
    plt.close(fig)
    written.append(path)
    return written


def replace_block(md_path: str, body: str) -> None:
    with open(md_path, encoding="utf-8") as f:
        text = f.read()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{md_path}: the generated-block markers are missing")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(head + TABLE_BEGIN + "\n" + body + TABLE_END + tail)


def cmd_plot(args) -> None:
    runs, notes = load_runs(args.logs, args.allow_incomplete, args.allow_other_data)
    md = os.path.join(args.docs, "stability.md") if args.md is None else args.md
    if not runs:
        body = "Not run yet (no logs in `train/results/stability/`).\n"
        print(body.strip())
    else:
        summ = summarize(runs)
        pngs = plots(runs, summ, args.docs)
        missing = [n for n in full_sweep() if n not in runs]
        body = (f"Generated from {len({r['log'] for r in runs.values()})} log(s), "
                f"{len(runs)} of the {len(full_sweep())} runs of the sweep"
                + (f" (missing: {', '.join(missing)})" if missing else "") + ".\n\n")
        body += "".join(f"- note: {n}\n" for n in notes) + ("\n" if notes else "")
        body += tables(runs, summ)
        body += "\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n"
                               for p in pngs)
        print(body)
        for p in pngs:
            print(f"wrote {p} ({os.path.getsize(p):,} bytes)")
    if os.path.exists(md):
        replace_block(md, body)
        print(f"updated the generated block of {md}")


# ----------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--plot":
        argv[0] = "plot"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="checksummed corpora -> token files")
    p.add_argument("--src", default=".traindata/src",
                   help="folder with corpus_lit.txt.xz, corpus_docs.txt.xz and SHA256SUMS")
    p.add_argument("--out", default=".traindata/stab")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "diffv2-small",
                                                       "tokenizer.json"))
    p.add_argument("--seed", type=int, default=1234, help="document split (pretokenize.py's)")
    p.add_argument("--val-fraction", type=float, default=0.015)
    p.add_argument("--max-docs", type=int, default=None, help="first N documents (tests only)")

    t = sub.add_parser("train", help="train a slice of the sweep in lock-step")
    t.add_argument("--data", default=".traindata/stab")
    t.add_argument("--out", required=True, help="the log, a .json.xz file")
    t.add_argument("--slice", default=None,
                   help="a slice (1-6), a half (1a..6b), or several joined by '+' (e.g. 2b+3)")
    t.add_argument("--runs", default=None, help="explicit runs, e.g. diff_v2-lr4x-s0,standard-lr4x-s0")
    t.add_argument("--hidden-size", type=int, default=384)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--heads", type=int, default=6, help="output heads h (standard_2h gets 2h)")
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--head-dim", type=int, default=64)
    t.add_argument("--intermediate-size", type=int, default=1024)
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-steps", type=int, default=None,
                   help="fewer steps than one pass (smoke tests; the log and tables say so)")
    t.add_argument("--base-lr", type=float, default=None, help=f"1x peak rate (default {BASE_LR})")
    t.add_argument("--min-lr-ratio", type=float, default=0.1)
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--grad-clip", type=float, default=1.0, help="for the runs without -noclip")
    t.add_argument("--rms-every", type=int, default=1, help="context RMS every k steps")
    t.add_argument("--log-every", type=int, default=50, help="host read-back interval")
    t.add_argument("--eval-every", type=int, default=250, help="literature validation interval")
    t.add_argument("--time-budget", type=float, default=480.0,
                   help="seconds for this whole process (start-up, steps, evaluations); a "
                   "projection over it, or passing it, fails with status 3")
    t.add_argument("--guard-margin", type=float, default=1.05,
                   help="the projected time times this must fit the budget")
    t.add_argument("--measure-steps", type=int, default=40)
    t.add_argument("--device", default=None)
    t.add_argument("--save", default=None,
                   help="runs whose f16 weights are written beside the log (needs safetensors)")

    q = sub.add_parser("plan", help="slices and time estimates")
    q.add_argument("--data", default=".traindata/stab")
    q.add_argument("--steps", type=int, default=None)

    g = sub.add_parser("plot", help="tables and plots from the logs (also: --plot)")
    g.add_argument("--logs", default=DEFAULT_LOGS)
    g.add_argument("--docs", default=DEFAULT_DOCS, help="where the PNGs go")
    g.add_argument("--md", default=None, help="markdown file with the generated block "
                   "(default DOCS/stability.md)")
    g.add_argument("--allow-incomplete", action="store_true")
    g.add_argument("--allow-other-data", action="store_true", help="tests only")

    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        cmd_prepare(args)
    elif args.cmd == "train":
        if args.device is None:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            cmd_train(args)
        except TimeGuardError as e:
            print(f"\n*** {e} ***\n", file=sys.stderr, flush=True)
            sys.exit(TIME_GUARD_EXIT)
    elif args.cmd == "plan":
        cmd_plan(args)
    else:
        cmd_plot(args)


if __name__ == "__main__":
    main()
