"""Train the byte-level BPE tokenizer (8192 entries) on the training corpus.

Byte-level pre-tokenizer and decoder, so every byte string round-trips and the Rust
`tokenizers` crate decodes exactly what Python does. `<|endoftext|>` is the only special token;
it gets id 0 and serves as document separator and EOS.

    python train/tokenizer.py --corpus .traindata/corpus_lit.txt --out .traindata/tokenizer.json
"""

from __future__ import annotations

import argparse
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
SEP = "\n" + EOT + "\n"


def read_documents(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # The separator is a line of its own; splitting on it with its newlines keeps each
    # document's own text byte for byte.
    docs = text.split(SEP)
    return [d for d in docs if d.strip()]


def build(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        # All 256 byte symbols up front: no input can ever map to an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".traindata/corpus_lit.txt")
    ap.add_argument("--out", default=".traindata/tokenizer.json")
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    t0 = time.time()
    docs = read_documents(args.corpus)
    tok = build(docs, args.vocab_size)
    tok.save(args.out)
    eot = tok.token_to_id(EOT)
    sample = "It is a truth universally acknowledged, that a single man\n"
    enc = tok.encode(sample)
    assert tok.decode(enc.ids) == sample, "byte-level round trip failed"
    print(f"{len(docs)} documents, vocab {tok.get_vocab_size()}, {EOT} = {eot}, "
          f"{time.time() - t0:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
