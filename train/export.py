"""Write a model directory in the format the Rust engine reads.

    config.json                         ModelConfig fields (see docs/training.md)
    model-0000i-of-0000N.safetensors    f16 weights, each shard <= 16 MiB
    model.safetensors.index.json        {"metadata": {"total_size": ...}, "weight_map": {...}}
    tokenizer.json                      the byte-level BPE
    README.md                           training recipe and final losses

Run on the host after training:

    python train/export.py --weights <dir written by train.py> --log <train_log.json> \
        --run diff_v2-s0 --tokenizer .traindata/tokenizer.json --out models/diffv2-small

`save_sharded` is also what train.py uses to hand weights back from the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from model import LanguageModel, ModelConfig

MAX_SHARD_BYTES = 16 * 1024 * 1024


def shard_plan(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Greedy in name order; a shard closes when the next tensor would overflow it.
    The safetensors header (a few KiB) is kept inside the limit by a margin."""
    margin = 64 * 1024
    shards, cur, size = [], [], 0
    for name in tensors:
        n = tensors[name].numel() * tensors[name].element_size()
        if n + margin > max_bytes:
            raise ValueError(f"{name} alone ({n} bytes) exceeds the shard limit")
        if cur and size + n + margin > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        shards.append(cur)
    return shards


def ordered_state(model: LanguageModel, dtype=torch.float16) -> dict[str, torch.Tensor]:
    sd = model.state_dict()

    def key(name: str):
        # Embedding first, then layers in numeric order, then the final norm: a reader that
        # streams the shards sees tensors in the order the forward pass needs them.
        if name.startswith("model.layers."):
            parts = name.split(".")
            return (1, int(parts[2]), name)
        return (0 if "embed_tokens" in name else 2, 0, name)

    return {k: sd[k].detach().to("cpu", dtype).contiguous() for k in sorted(sd, key=key)}


def save_sharded(model: LanguageModel, out_dir: str, max_bytes: int = MAX_SHARD_BYTES,
                 dtype=torch.float16, write_index: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    tensors = ordered_state(model, dtype)
    plan = shard_plan(tensors, max_bytes)
    n = len(plan)
    weight_map, files = {}, []
    for i, names in enumerate(plan, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in names}, os.path.join(out_dir, fname),
                  metadata={"format": "pt"})
        assert os.path.getsize(os.path.join(out_dir, fname)) <= max_bytes
        for k in names:
            weight_map[k] = fname
        files.append(fname)
    if write_index:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write(model.cfg.to_json())
    return files


def load_model_dir(path: str, dtype=torch.float32) -> LanguageModel:
    """Load config + shards (through the index when present); weights are cast to `dtype`."""
    cfg = ModelConfig.load(os.path.join(path, "config.json"))
    idx = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(path) if p.endswith(".safetensors"))
    sd = {}
    for fname in files:
        sd.update(load_file(os.path.join(path, fname)))
    model = LanguageModel(cfg)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match config: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()


def model_readme(cfg: ModelConfig, run: dict, meta: dict, files: list[str], total_bytes: int) -> str:
    r = run
    hp = r["hparams"]
    pc = r["param_counts"]
    lines = [
        f"# {os.path.basename(r.get('export_name', 'diffv2-small'))}",
        "",
        "The default model of diffattn: a small Llama-style decoder with Differential Transformer V2",
        f"attention (`attention: \"{cfg.attention}\"`), trained from scratch by `train/train.py` on",
        "`corpus_lit.txt` (public-domain literature and plain English; see ../../train/README.md).",
        "It writes readable but simple English; it is a test and demo model, not an assistant.",
        "",
        "## Shape",
        "",
        f"- vocab {cfg.vocab_size} (byte-level BPE, `<|endoftext|>` = {cfg.eos_token_id} is the",
        "  document separator and EOS; no BOS), width "
        f"{cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} output heads",
        f"  ({cfg.num_query_heads} query heads), {cfg.num_key_value_heads} KV heads, head dim {cfg.head_dim},",
        f"  SwiGLU {cfg.intermediate_size}, interleaved RoPE theta {cfg.rope_theta:g}, RMSNorm eps "
        f"{cfg.rms_norm_eps:g}, context {cfg.max_position_embeddings}, tied embeddings.",
        f"- {pc['total']:,} parameters ({pc['attention']:,} in attention, {pc['embedding']:,} in the"
        " embedding).",
        f"- f16 weights, {total_bytes:,} bytes in {len(files)} shard(s).",
        "",
        "## Training recipe",
        "",
        f"- data: {meta.get('train_tokens', '?'):,} training tokens ({meta.get('train_documents', '?')} "
        f"documents), {meta.get('val_tokens', '?'):,} validation tokens ({meta.get('val_documents', '?')} "
        "held-out documents)",
        f"- {r['steps']} steps of {hp['batch_size']} x {hp['seq_len']} tokens = {r['tokens']:,} tokens "
        f"({r['tokens'] / max(1, meta.get('train_tokens', 1)):.2f} epochs)",
        f"- AdamW (betas {hp['beta1']}, {hp['beta2']}, weight decay {hp['weight_decay']} on matrices), "
        f"peak lr {hp['lr']:g}, {hp['warmup_steps']} warm-up steps, cosine decay to "
        f"{hp['lr'] * hp['min_lr_ratio']:g}, grad clip {hp['grad_clip']}, bf16 autocast, seed {r['seed']}",
        f"- one NVIDIA H200, {r['gpu_time_s']:.0f} s of GPU time, {r['tokens_per_s']:,.0f} tokens/s",
        "",
        "## Final losses (nats per token)",
        "",
        f"- validation: {r['final_val_loss']:.4f}",
        f"- training (same number of tokens from the training split, evaluated after training): "
        f"{r['final_train_eval_loss']:.4f}",
        "",
        "Rebuild: see train/README.md in the repository.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="folder of shards written by train.py")
    ap.add_argument("--log", required=True, help="train_log.json written by train.py")
    ap.add_argument("--run", default="diff_v2-s0")
    ap.add_argument("--tokenizer", default=".traindata/tokenizer.json")
    ap.add_argument("--meta", default=".traindata/meta.json")
    ap.add_argument("--out", default="models/diffv2-small")
    args = ap.parse_args()
    with open(args.log) as f:
        log = json.load(f)
    run = log["runs"][args.run]
    cfg = ModelConfig.from_dict(run["config"])
    model = LanguageModel(cfg)
    sd = {}
    for p in sorted(os.listdir(args.weights)):
        if p.endswith(".safetensors"):
            sd.update(load_file(os.path.join(args.weights, p)))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    if os.path.isdir(args.out):
        for p in os.listdir(args.out):
            if p.endswith(".safetensors"):
                os.remove(os.path.join(args.out, p))
    files = save_sharded(model, args.out)
    shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    meta = {}
    if os.path.exists(args.meta):
        with open(args.meta) as f:
            meta = json.load(f)
    total = sum(os.path.getsize(os.path.join(args.out, p)) for p in files)
    run["export_name"] = args.out
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(model_readme(cfg, run, meta, files, total))
    size = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"wrote {args.out}: {files}, {size} bytes in all")


if __name__ == "__main__":
    main()
