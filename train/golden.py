"""Golden data for the Rust engine, computed from the shipped weights.

The f16 weights are upcast to float32 and run on the CPU through the explicit (non-SDPA)
attention path, so the numbers do not depend on a GPU or on a fused kernel's rounding.

    python train/golden.py --model models/diffv2-small --out tests/data
writes golden-1.json .. golden-N.json, one per prompt.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tokenizers import Tokenizer

from export import load_model_dir
from model import greedy

PROMPTS = [
    "It is a truth universally acknowledged, that a single man",
    "The old ship sailed out of the harbour, and",
    "And God said to Moses,",
]


def golden_for(model, tok, prompt: str, model_name: str, n_greedy: int, top_k: int) -> dict:
    ids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]), reference=True)[0, -1].float()
    vals, idx = torch.topk(logits, top_k)
    cont = greedy(model, ids, n_greedy, reference=True)
    return {
        "model": model_name,
        "prompt": prompt,
        "prompt_ids": ids,
        "top20": [{"id": int(i), "logit": float(v)} for i, v in zip(idx, vals)],
        "logits_l2": float(logits.norm()),
        "greedy_ids": cont,
        "greedy_text": tok.decode(cont, skip_special_tokens=False),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/diffv2-small")
    ap.add_argument("--out", default="tests/data")
    ap.add_argument("--greedy", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model_dir(args.model, torch.float32)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    os.makedirs(args.out, exist_ok=True)
    for i, prompt in enumerate(PROMPTS, 1):
        g = golden_for(model, tok, prompt, args.model.rstrip("/"), args.greedy, 20)
        path = os.path.join(args.out, f"golden-{i}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(g, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{path}: {prompt!r} -> {g['greedy_text']!r}")


if __name__ == "__main__":
    main()
