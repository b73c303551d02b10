"""PyTorch reference of the diffattn language model (DESIGN.md sections 1-2).

One module serves both attention modes:

* ``diff_v2``: 2h query heads, h_kv KV heads, a per-token sigmoid lambda per output head,
  output head i = o[2i] - lam_i * o[2i+1] (pairs taken 0::2 / 1::2, never halves).
* ``standard``: h query heads, no lambda; the Transformer baseline with the same h_kv.

Parameter names follow the Hugging Face Llama convention so that ``state_dict()`` keys are the
tensor names of the shipped safetensors files. The LM head is tied to the embedding and is not a
separate parameter, so no ``lm_head.weight`` appears in the state dict.

Two attention paths exist: ``F.scaled_dot_product_attention`` for training speed and an explicit
softmax written out step by step (``reference=True``). The explicit path is what golden data is
produced with, because it is the one a reader can check line by line against the Rust engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    attention: str = "diff_v2"
    bos_token_id: int | None = None
    eos_token_id: int | None = 0
    # RoPE rotates adjacent pairs (2i, 2i + 1) of each head; see docs/model-format.md.
    rope_pairs: str = "adjacent"

    def __post_init__(self) -> None:
        if self.rope_pairs != "adjacent":
            raise ValueError(f"this trainer rotates adjacent RoPE pairs, got rope_pairs={self.rope_pairs!r}")
        if self.attention not in ("diff_v2", "standard"):
            raise ValueError(f"attention must be 'diff_v2' or 'standard', got {self.attention!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for RoPE pairs")
        if not self.tie_word_embeddings:
            # The shipped format allows an untied head, but this reference only trains tied models.
            raise ValueError("only tie_word_embeddings=True is implemented")

    @property
    def num_query_heads(self) -> int:
        return 2 * self.num_attention_heads if self.attention == "diff_v2" else self.num_attention_heads

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, path: str) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half-precision inputs are widened, float64 (used by tests) is kept."""
    return x if x.dtype == torch.float64 else x.float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Float32 statistics: in bf16 the mean of squares loses enough bits to shift the loss.
        xf = _wide(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * _wide(self.weight)).to(x.dtype)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device, offset: int = 0):
    """cos/sin tables of shape (T, d/2): pair i rotates by pos * theta^(-2i/d)."""
    i = torch.arange(0, head_dim // 2, device=device, dtype=torch.float32)
    inv_freq = theta ** (-2.0 * i / head_dim)
    pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
    ang = pos[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, d). Dims (2i, 2i+1) rotate together (GPT-J style), not the half split of
    the Llama convention: the official DIFF V2 layer and the Rust engine both use this layout."""
    xf = _wide(x)
    x0 = xf[..., 0::2]
    x1 = xf[..., 1::2]
    c = cos[None, :, None, :].to(xf.dtype)
    s = sin[None, :, None, :].to(xf.dtype)
    r0 = x0 * c - x1 * s
    r1 = x0 * s + x1 * c
    return torch.stack((r0, r1), dim=-1).flatten(-2).to(x.dtype)


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, Hq, T, d), k/v: (B, Hq, T, d) already expanded to the query heads.
    Written out so that each step can be matched to a kernel of the Rust engine."""
    d = q.shape[-1]
    t = q.shape[-2]
    scores = (_wide(q) @ _wide(k).transpose(-1, -2)) / math.sqrt(d)
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p @ _wide(v)).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, D = cfg.head_dim, cfg.hidden_size
        self.hq = cfg.num_query_heads
        self.hkv = cfg.num_key_value_heads
        self.q_proj = nn.Linear(D, self.hq * d, bias=False)
        self.k_proj = nn.Linear(D, self.hkv * d, bias=False)
        self.v_proj = nn.Linear(D, self.hkv * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * d, D, bias=False)
        if cfg.attention == "diff_v2":
            self.lambda_proj = nn.Linear(D, cfg.num_attention_heads, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, reference: bool = False):
        cfg = self.cfg
        B, T, _ = x.shape
        d, h = cfg.head_dim, cfg.num_attention_heads
        # Query head j owns q_proj output rows j*d..(j+1)*d.
        q = self.q_proj(x).view(B, T, self.hq, d)
        k = self.k_proj(x).view(B, T, self.hkv, d)
        v = self.v_proj(x).view(B, T, self.hkv, d)
        q = apply_rope_interleaved(q, cos, sin)
        k = apply_rope_interleaved(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        # GQA: query head j reads KV head j // (Hq / h_kv), i.e. repeat_interleave, so both
        # heads of a DIFF pair (2i, 2i+1) read the same KV head.
        rep = self.hq // self.hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if reference:
            o = explicit_causal_attention(q, k, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(d))
        o = o.transpose(1, 2)  # (B, T, Hq, d)
        if cfg.attention == "diff_v2":
            lam = torch.sigmoid(_wide(self.lambda_proj(x)))  # (B, T, h)
            o1 = _wide(o[:, :, 0::2])
            o2 = _wide(o[:, :, 1::2])
            c = (o1 - lam[..., None] * o2).to(o.dtype)
        else:
            c = o
        return self.o_proj(c.reshape(B, T, h * d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, reference=False):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, reference)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        # Residual-branch outputs shrink with depth so the residual stream's variance stays
        # near its initial value however many blocks are stacked.
        out_std = std / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            elif name.endswith("lambda_proj.weight"):
                # Zero weights start every lambda at sigmoid(0) = 0.5, a mild, equal subtraction
                # for all heads; training moves each head from there.
                nn.init.zeros_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * out_std)
            else:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, ids: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """ids: (B, T) -> logits (B, T, vocab) in float32."""
        T = ids.shape[1]
        cos, sin = rope_cos_sin(T, self.cfg.head_dim, self.cfg.rope_theta, ids.device)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, reference)
        x = self.model.norm(x)
        # Tied head: logits use the embedding matrix directly.
        return _wide(F.linear(x, self.model.embed_tokens.weight))

    def param_counts(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        attn = sum(p.numel() for n, p in self.named_parameters() if ".self_attn." in n)
        emb = self.model.embed_tokens.weight.numel()
        return {"total": total, "attention": attn, "embedding": emb, "non_embedding": total - emb}


@torch.no_grad()
def greedy(model: LanguageModel, ids: list[int], n: int, reference: bool = True) -> list[int]:
    """Greedy continuation by full recomputation: slow but free of any cache logic, so it is
    the plainest check of the engine's decode path. No early stop at EOS."""
    seq = list(ids)
    out = []
    dev = next(model.parameters()).device
    for _ in range(n):
        window = seq[-model.cfg.max_position_embeddings:]
        logits = model(torch.tensor([window], device=dev), reference=reference)[0, -1]
        nxt = int(torch.argmax(logits).item())
        out.append(nxt)
        seq.append(nxt)
    return out
