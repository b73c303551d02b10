"""Greedy continuations of fixed prompts from a model directory, as Markdown (docs/training.md).

    python train/samples.py --model models/diffv2-small --tokens 48
"""

from __future__ import annotations

import argparse
import os

import torch
from tokenizers import Tokenizer

from export import load_model_dir
from model import greedy

PROMPTS = [
    "Once upon a time",
    "The king said to his daughter,",
    "Elizabeth looked at Mr. Darcy and",
    "The sea was calm that morning, and",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/diffv2-small")
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    model = load_model_dir(args.model, torch.float32)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    for p in PROMPTS:
        ids = tok.encode(p, add_special_tokens=False).ids
        # The SDPA path is used for speed; golden.py checks the explicit one.
        out = greedy(model, ids, args.tokens, reference=False)
        text = tok.decode(out, skip_special_tokens=False)
        # Quoted Markdown: the prompt in bold, the model's continuation after it.
        print("> **" + p + "**" + text.replace("\n", "\n> ") + "\n")


if __name__ == "__main__":
    main()
