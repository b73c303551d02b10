"""Loss curves of every run in a train_log.json on one plot, plus a summary table on stdout.

    python train/plot.py --log <train_log.json> --out docs/loss_curves.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"diff_v2": "tab:red", "standard": "tab:blue"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", default="docs/loss_curves.png")
    args = ap.parse_args()
    with open(args.log) as f:
        log = json.load(f)
    fig, (ax, axz) = plt.subplots(1, 2, figsize=(13, 5))
    for name, r in log["runs"].items():
        att = r["config"]["attention"]
        seed = r["seed"]
        ls = "-" if seed == 0 else "--"
        tr_x = [h[1] / 1e6 for h in r["history"]]
        tr_y = [h[2] for h in r["history"]]
        ev_x = [e[1] / 1e6 for e in r["evals"]]
        ev_y = [e[2] for e in r["evals"]]
        ax.plot(tr_x, tr_y, ls, color=COLORS[att], alpha=0.35, lw=1, label=f"{name} train")
        for a in (ax, axz):
            a.plot(ev_x, ev_y, ls, color=COLORS[att], marker="o", ms=3, lw=1.8,
                   label=f"{name} validation")
        print(f"{name}: val {r['final_val_loss']:.4f} train-eval {r['final_train_eval_loss']:.4f}")
    ax.set_ylim(3.0, 7.0)
    ax.set_title("Loss (nats/token), all of training")
    axz.set_xlim(15, 36.5)
    axz.set_ylim(3.7, 4.15)
    axz.set_title("Validation loss, second half (zoom)")
    for a in (ax, axz):
        a.set_xlabel("training tokens (millions)")
        a.set_ylabel("cross-entropy")
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    axz.legend(fontsize=8)
    fig.suptitle("DIFF V2 vs standard attention, 6 x 384, h=6, h_kv=2, 36M tokens (4 epochs of 8.9M)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
