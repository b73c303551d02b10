"""Tokenize the corpus once, on the CPU, into flat uint16 token files for train.py.

Documents are shuffled with a fixed seed and split by document (not by token) into train and
validation, so no validation text is ever seen in training, even in part. Each document is
followed by the EOS id, which is also the separator the model learns to emit.

    python train/pretokenize.py --corpus .traindata/corpus_lit.txt \
        --tokenizer .traindata/tokenizer.json --out .traindata
writes train.bin, val.bin (raw little-endian uint16) and meta.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
from tokenizers import Tokenizer

from tokenizer import EOT, read_documents


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".traindata/corpus_lit.txt")
    ap.add_argument("--tokenizer", default=".traindata/tokenizer.json")
    ap.add_argument("--out", default=".traindata")
    ap.add_argument("--val-fraction", type=float, default=0.015)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    t0 = time.time()
    tok = Tokenizer.from_file(args.tokenizer)
    eos = tok.token_to_id(EOT)
    assert tok.get_vocab_size() <= 65536, "uint16 token files need vocab <= 65536"
    docs = read_documents(args.corpus)
    order = list(range(len(docs)))
    random.Random(args.seed).shuffle(order)
    n_val = max(1, round(len(docs) * args.val_fraction))
    val_idx = set(order[:n_val])
    encs = tok.encode_batch(docs, add_special_tokens=False)
    splits = {"train": [], "val": []}
    for i, e in enumerate(encs):
        split = "val" if i in val_idx else "train"
        splits[split].append(np.asarray(e.ids + [eos], dtype=np.uint16))
    os.makedirs(args.out, exist_ok=True)
    meta = {"eos_token_id": eos, "vocab_size": tok.get_vocab_size(), "seed": args.seed,
            "val_fraction": args.val_fraction, "documents": len(docs),
            "corpus_bytes": os.path.getsize(args.corpus)}
    for name, arrs in splits.items():
        a = np.concatenate(arrs)
        a.tofile(os.path.join(args.out, f"{name}.bin"))
        meta[f"{name}_documents"] = len(arrs)
        meta[f"{name}_tokens"] = int(a.size)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta), f"{time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
