"""Train DIFF V2 and standard-attention models side by side, in lock-step, on one GPU.

All runs advance one optimizer step at a time in turn inside one process. Runs with the same
seed draw identical batches (same windows, same order) from their own generator, so the
comparison is between attention modes alone: same width, depth, token budget, schedule and data.
Lock-step also means a time limit cuts every run at the same step, keeping the budgets equal.

The step count is fixed by the token budget, but after `--measure-steps` steps the measured
speed may lower it so that everything ends inside `--time-budget` seconds; this happens during
warm-up, so the cosine schedule is always laid out for the steps that are actually run.

    python train/train.py --data .traindata --out $OUT --attention diff_v2,standard --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from export import save_sharded
from model import LanguageModel, ModelConfig


def load_tokens(path: str, device) -> torch.Tensor:
    a = np.fromfile(path, dtype=np.uint16).astype(np.int64)
    return torch.from_numpy(a).to(device)


def fixed_windows(tokens: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping (input+1) windows covering the split from its start: a deterministic
    evaluation set, the same for every run."""
    n = (tokens.numel() - 1) // seq_len
    if limit is not None:
        n = min(n, limit)
    starts = torch.arange(n, device=tokens.device) * seq_len
    return starts


def gather(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int):
    idx = starts[:, None] + torch.arange(seq_len + 1, device=tokens.device)[None, :]
    w = tokens[idx]
    return w[:, :-1], w[:, 1:]


def lr_at(step: int, total: int, hp: dict) -> float:
    if step < hp["warmup_steps"]:
        return hp["lr"] * (step + 1) / hp["warmup_steps"]
    t = min(1.0, (step - hp["warmup_steps"]) / max(1, total - hp["warmup_steps"]))
    lo = hp["lr"] * hp["min_lr_ratio"]
    return lo + 0.5 * (hp["lr"] - lo) * (1.0 + math.cos(math.pi * t))


class Run:
    def __init__(self, name: str, cfg: ModelConfig, seed: int, hp: dict, device, use_amp: bool):
        self.name, self.cfg, self.seed = name, cfg, seed
        torch.manual_seed(seed)
        self.model = LanguageModel(cfg)
        self.model.reset_parameters(seed=seed)
        self.model.to(device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        kw = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp["weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=1e-8, **kw)
        self.gen = torch.Generator(device=device).manual_seed(10_000 + seed)
        self.device = device
        self.use_amp = use_amp
        self.loss_acc = []
        self.history = []  # (step, tokens, mean train loss since last entry, lr, grad norm)
        self.evals = []    # (step, tokens, val loss)
        self.gpu_ms = 0.0
        self.pending = []  # CUDA event pairs not yet read back
        self.max_grad_norm = 0.0

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    def step(self, tokens, seq_len, batch, lr, clip):
        starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch,), device=self.device,
                               generator=self.gen)
        x, y = gather(tokens, starts, seq_len)
        if self.device.type == "cuda":
            ev0 = torch.cuda.Event(enable_timing=True)
            ev1 = torch.cuda.Event(enable_timing=True)
            ev0.record()
        else:
            t0 = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self.autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            ev1.record()
            self.pending.append((ev0, ev1))
        else:
            self.gpu_ms += (time.perf_counter() - t0) * 1000.0
        self.loss_acc.append(torch.stack([loss.detach(), gn.detach()]))

    def flush(self, step, tokens_seen, lr):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gpu_ms += sum(a.elapsed_time(b) for a, b in self.pending)
            self.pending = []
        if self.loss_acc:
            v = torch.stack(self.loss_acc).float().cpu()
            self.loss_acc = []
            gmax = float(v[:, 1].max())
            self.max_grad_norm = max(self.max_grad_norm, gmax)
            self.history.append([step, tokens_seen, float(v[:, 0].mean()), lr, gmax])
            return float(v[:, 0].mean())
        return float("nan")

    @torch.no_grad()
    def evaluate(self, tokens, starts, seq_len, batch):
        self.model.eval()
        tot, n = 0.0, 0
        for i in range(0, starts.numel(), batch):
            x, y = gather(tokens, starts[i:i + batch], seq_len)
            with self.autocast():
                logits = self.model(x)
            tot += float(F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1),
                                         reduction="sum"))
            n += y.numel()
        self.model.train()
        return tot / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".traindata")
    ap.add_argument("--out", default="runs/latest")
    ap.add_argument("--attention", default="diff_v2,standard")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--save", default="diff_v2-s0", help="runs whose weights are written (comma list)")
    ap.add_argument("--save-index", default="diff_v2-s0",
                    help="runs saved with config.json and index (others: shards only)")
    # Model shape (defaults: the shipped model).
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate-size", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    # Optimisation.
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--token-budget", type=float, default=36e6)
    ap.add_argument("--time-budget", type=float, default=400.0,
                    help="seconds for the whole lock-step loop, all runs together")
    ap.add_argument("--measure-steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--eval-windows", type=int, default=None, help="cap on validation windows")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    t_start = time.time()
    device = torch.device(args.device)
    use_amp = device.type == "cuda"
    if use_amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    train_tok = load_tokens(os.path.join(args.data, "train.bin"), device)
    val_tok = load_tokens(os.path.join(args.data, "val.bin"), device)
    val_starts = fixed_windows(val_tok, args.seq_len, args.eval_windows)
    # A training-split evaluation set of the same size as the validation one: the gap between
    # the two is the overfitting the report talks about.
    train_eval_starts = fixed_windows(train_tok, args.seq_len, val_starts.numel())

    hp = {k: getattr(args, k) for k in ("lr", "min_lr_ratio", "warmup_steps", "weight_decay",
                                        "beta1", "beta2", "grad_clip", "batch_size", "seq_len")}
    hp["token_budget"] = args.token_budget
    tokens_per_step = args.batch_size * args.seq_len
    planned_steps = max(1, int(args.token_budget // tokens_per_step))
    assert args.measure_steps < args.warmup_steps, "step count must be fixed before decay starts"

    runs: list[Run] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for att in args.attention.split(","):
            cfg = ModelConfig(vocab_size=meta["vocab_size"], hidden_size=args.hidden_size,
                              num_hidden_layers=args.layers, num_attention_heads=args.heads,
                              num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                              intermediate_size=args.intermediate_size,
                              max_position_embeddings=args.seq_len, attention=att,
                              eos_token_id=meta["eos_token_id"])
            runs.append(Run(f"{att}-s{seed}", cfg, seed, hp, device, use_amp))
    for r in runs:
        print(f"[{r.name}] params {r.model.param_counts()}", flush=True)

    log_path = os.path.join(args.out, "train_log.json")
    os.makedirs(args.out, exist_ok=True)

    def write_log(total_steps, step, done):
        out = {"args": vars(args), "meta": meta, "planned_steps": planned_steps,
               "total_steps": total_steps, "steps_done": step, "done": done,
               "wall_s": time.time() - t_start, "device": str(device),
               "gpu_name": torch.cuda.get_device_name(0) if use_amp else "cpu",
               "torch": torch.__version__, "runs": {}}
        for r in runs:
            out["runs"][r.name] = {
                "config": json.loads(r.cfg.to_json()), "seed": r.seed, "hparams": hp,
                "param_counts": r.model.param_counts(), "history": r.history, "evals": r.evals,
                "steps": step, "tokens": step * tokens_per_step,
                "gpu_time_s": r.gpu_ms / 1000.0,
                "tokens_per_s": step * tokens_per_step / max(1e-9, r.gpu_ms / 1000.0),
                "max_grad_norm": r.max_grad_norm,
                **getattr(r, "final", {}),
            }
        with open(log_path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(log_path + ".tmp", log_path)

    def do_eval(step):
        for r in runs:
            v = r.evaluate(val_tok, val_starts, args.seq_len, args.batch_size)
            r.evals.append([step, step * tokens_per_step, v])
        print(f"step {step:5d} val " + " ".join(f"{r.name}={r.evals[-1][2]:.4f}" for r in runs),
              flush=True)

    total_steps = planned_steps
    t_eval0 = time.time()
    do_eval(0)
    eval_s = time.time() - t_eval0
    t_loop = time.time()
    t_measure = None
    step = 0
    lr = lr_at(0, total_steps, hp)
    while step < total_steps:
        lr = lr_at(step, total_steps, hp)
        for r in runs:
            r.step(train_tok, args.seq_len, args.batch_size, lr, args.grad_clip)
        step += 1
        if step == 5:
            if use_amp:
                torch.cuda.synchronize()
            t_measure = time.time()
        if step == args.measure_steps and t_measure is not None:
            if use_amp:
                torch.cuda.synchronize()
            per_step = (time.time() - t_measure) / (args.measure_steps - 5)
            left = args.time_budget - (time.time() - t_loop)
            # Evaluations and the final train-split evaluation cost time too; 10% slack on top.
            n_evals = total_steps // args.eval_every + 2
            fit = int((left - n_evals * eval_s) * 0.9 / per_step) + step
            if fit < total_steps:
                print(f"time budget: cutting {total_steps} planned steps to {fit} "
                      f"({per_step * 1000:.1f} ms per lock-step)", flush=True)
                total_steps = max(fit, args.warmup_steps + 1)
            else:
                print(f"time budget ok: {per_step * 1000:.1f} ms per lock-step, "
                      f"{total_steps} steps need ~{per_step * total_steps:.0f}s", flush=True)
        if step % args.log_every == 0 or step == total_steps:
            losses = [r.flush(step, step * tokens_per_step, lr) for r in runs]
            el = time.time() - t_loop
            print(f"step {step:5d}/{total_steps} lr {lr:.2e} {el:6.1f}s "
                  + " ".join(f"{r.name}={l:.4f}" for r, l in zip(runs, losses)), flush=True)
        if step % args.eval_every == 0 or step == total_steps:
            do_eval(step)
            write_log(total_steps, step, False)

    for r in runs:
        r.final = {
            "final_val_loss": r.evals[-1][2],
            "final_train_eval_loss": r.evaluate(train_tok, train_eval_starts, args.seq_len,
                                                args.batch_size),
            "final_train_loss_last_steps": r.history[-1][2] if r.history else None,
        }
        print(f"[{r.name}] final val {r.final['final_val_loss']:.4f} "
              f"train-eval {r.final['final_train_eval_loss']:.4f} "
              f"gpu {r.gpu_ms / 1000:.1f}s "
              f"{step * tokens_per_step / max(1e-9, r.gpu_ms / 1000):,.0f} tok/s", flush=True)
    write_log(total_steps, step, True)

    save_names = [s for s in args.save.split(",") if s]
    index_names = set(s for s in args.save_index.split(",") if s)
    for r in runs:
        if r.name in save_names:
            d = os.path.join(args.out, r.name)
            files = save_sharded(r.model, d, write_index=r.name in index_names)
            print(f"[{r.name}] saved {files} to {d}", flush=True)
    print(f"done in {time.time() - t_start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
