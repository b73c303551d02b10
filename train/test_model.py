"""Checks of the PyTorch reference against a loop-by-loop float64 transcription of DESIGN.md.

    python -m pytest train/test_model.py     (or: python train/test_model.py)
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import LanguageModel, ModelConfig  # noqa: E402


def tiny(attention: str) -> ModelConfig:
    return ModelConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=12, intermediate_size=64,
                       max_position_embeddings=32, attention=attention, eos_token_id=0)


def naive_forward(model: LanguageModel, ids: list[int]) -> torch.Tensor:
    """Token by token, head by head, in float64, with no batching tricks."""
    cfg = model.cfg
    W = {k: v.double() for k, v in model.state_dict().items()}
    T, d, h, hkv = len(ids), cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    hq = 2 * h if cfg.attention == "diff_v2" else h

    def rms(x, w):
        return x / torch.sqrt((x * x).mean() + cfg.rms_norm_eps) * w

    def rope(vec, pos):
        out = vec.clone()
        for i in range(d // 2):
            a = pos * cfg.rope_theta ** (-2.0 * i / d)
            c, s = math.cos(a), math.sin(a)
            out[2 * i] = vec[2 * i] * c - vec[2 * i + 1] * s
            out[2 * i + 1] = vec[2 * i] * s + vec[2 * i + 1] * c
        return out

    xs = [W["model.embed_tokens.weight"][t].clone() for t in ids]
    for L in range(cfg.num_hidden_layers):
        p = f"model.layers.{L}."
        normed = [rms(x, W[p + "input_layernorm.weight"]) for x in xs]
        q = [(W[p + "self_attn.q_proj.weight"] @ n).view(hq, d) for n in normed]
        k = [(W[p + "self_attn.k_proj.weight"] @ n).view(hkv, d) for n in normed]
        v = [(W[p + "self_attn.v_proj.weight"] @ n).view(hkv, d) for n in normed]
        q = [torch.stack([rope(q[t][j], t) for j in range(hq)]) for t in range(T)]
        k = [torch.stack([rope(k[t][j], t) for j in range(hkv)]) for t in range(T)]
        new = []
        for t in range(T):
            o = torch.zeros(hq, d, dtype=torch.float64)
            for j in range(hq):
                g = j // (hq // hkv)
                s = torch.tensor([q[t][j] @ k[u][g] / math.sqrt(d) for u in range(t + 1)])
                pr = torch.softmax(s, 0)
                o[j] = sum(pr[u] * v[u][g] for u in range(t + 1))
            if cfg.attention == "diff_v2":
                lam = torch.sigmoid(W[p + "self_attn.lambda_proj.weight"] @ normed[t])
                c = torch.stack([o[2 * i] - lam[i] * o[2 * i + 1] for i in range(h)])
            else:
                c = o
            x = xs[t] + W[p + "self_attn.o_proj.weight"] @ c.reshape(-1)
            n2 = rms(x, W[p + "post_attention_layernorm.weight"])
            gt = W[p + "mlp.gate_proj.weight"] @ n2
            up = W[p + "mlp.up_proj.weight"] @ n2
            x = x + W[p + "mlp.down_proj.weight"] @ (torch.nn.functional.silu(gt) * up)
            new.append(x)
        xs = new
    out = [W["model.embed_tokens.weight"] @ rms(x, W["model.norm.weight"]) for x in xs]
    return torch.stack(out)


def _randomised(attention: str) -> LanguageModel:
    torch.manual_seed(7)
    m = LanguageModel(tiny(attention))
    with torch.no_grad():
        # Non-trivial norms and lambdas, so that every weight matters to the comparison.
        for n, p in m.named_parameters():
            if "norm" in n or "lambda" in n:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in n else 0.0))
    return m.double().eval()


def test_matches_naive():
    ids = [3, 17, 5, 96, 42, 0, 8, 11, 64]
    for att in ("diff_v2", "standard"):
        m = _randomised(att)
        ref = naive_forward(m, ids)
        with torch.no_grad():
            for reference in (True, False):
                got = m(torch.tensor([ids]), reference=reference)[0].double()
                err = (got - ref).norm() / ref.norm()
                assert err < 1e-6, (att, reference, float(err))


def test_param_shapes_and_names():
    m = LanguageModel(ModelConfig())
    sd = m.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (768, 384)
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (128, 384)
    assert sd["model.layers.0.self_attn.lambda_proj.weight"].shape == (6, 384)
    assert sd["model.layers.0.self_attn.o_proj.weight"].shape == (384, 384)
    assert "lm_head.weight" not in sd
    std = LanguageModel(ModelConfig(attention="standard")).state_dict()
    assert std["model.layers.0.self_attn.q_proj.weight"].shape == (384, 384)
    assert not any("lambda" in k for k in std)


def test_causal():
    m = _randomised("diff_v2")
    with torch.no_grad():
        a = m(torch.tensor([[1, 2, 3, 4, 5]]))[0, :3]
        b = m(torch.tensor([[1, 2, 3, 9, 9]]))[0, :3]
    assert torch.allclose(a, b, atol=1e-10)


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print(name, "ok")
