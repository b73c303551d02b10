"""Writes tests/data/hf-llama-tiny/: a tiny random Hugging Face LlamaForCausalLM saved with
save_pretrained (config.json, model.safetensors), and logits.json: transformers' logits (float64
forward) for fixed token ids, the golden data for loading a Hugging Face Llama directory.

Usage (where transformers and torch are installed): python3 tools/make_hf_llama.py OUT_DIR
"""
import json, sys, pathlib
import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = pathlib.Path(sys.argv[1])
torch.manual_seed(7)
cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).eval()
# Larger than the default init, so that attention is not uniform and RoPE's pairing matters.
with torch.no_grad():
    for n, p in model.named_parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.2)
model.save_pretrained(out, safe_serialization=True)
ids = [5, 17, 42, 3, 88, 60, 11, 29, 71, 0, 33, 50]
m64 = model.double()
with torch.no_grad():
    logits = m64(torch.tensor([ids])).logits[0]
json.dump({"generator": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
           "ids": ids, "logits": [[round(float(x), 10) for x in row] for row in logits]},
          open(out / "logits.json", "w"))
print("wrote", out, sorted(p.name for p in out.iterdir()))
