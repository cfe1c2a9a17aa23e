"""A minimal Llama-style decoder for end-to-end decode timing: random weights, static KV cache, one token per step.

Every linear is a plain nn.Linear, so spmm.sparsify can swap them. `decode_step` is CUDA-graph capturable: all
shapes are static (the cache has a fixed length and attention masks the unwritten part) and the position is a
device tensor, so nothing reads a tensor value on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DecoderConfig:
    hidden: int
    intermediate: int
    heads: int
    layers: int
    vocab: int
    kv_heads: Optional[int] = None  # None: as many as query heads (no grouped-query attention)
    rope_theta: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def n_kv(self) -> int:
        return self.kv_heads or self.heads


PRESETS = {
    "llama2-7b": DecoderConfig(hidden=4096, intermediate=11008, heads=32, layers=32, vocab=32000),
    "tiny": DecoderConfig(hidden=256, intermediate=688, heads=4, layers=2, vocab=1000, kv_heads=2),  # GQA covered
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, **kw):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim, **kw))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # the mean of squares in fp32: fp16 overflows on large activations
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig, **kw):
        super().__init__()
        self.c = c
        # q, k and v as one GEMM, as serving engines run them (and as bench/shapes.json's *.qkv layers are).
        self.qkv = nn.Linear(c.hidden, (c.heads + 2 * c.n_kv) * c.head_dim, bias=False, **kw)
        self.o = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False, **kw)
        self.k_cache = self.v_cache = None  # [B, kv_heads, max_len, head_dim], set by Decoder.setup_cache

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        b, c = x.shape[0], self.c
        q, k, v = self.qkv(x).split([c.heads * c.head_dim, c.n_kv * c.head_dim, c.n_kv * c.head_dim], dim=-1)
        q = q.reshape(b, 1, c.heads, c.head_dim).transpose(1, 2)
        k = k.reshape(b, 1, c.n_kv, c.head_dim).transpose(1, 2)
        v = v.reshape(b, 1, c.n_kv, c.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        self.k_cache.index_copy_(2, pos, k)  # write at the device-side position: no host sync, graph-safe
        self.v_cache.index_copy_(2, pos, v)
        keys, values = self.k_cache, self.v_cache
        if c.n_kv != c.heads:
            keys = keys.repeat_interleave(c.heads // c.n_kv, dim=1)
            values = values.repeat_interleave(c.heads // c.n_kv, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(b, 1, c.heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, c: DecoderConfig, **kw):
        super().__init__()
        self.gate_up = nn.Linear(c.hidden, 2 * c.intermediate, bias=False, **kw)  # one GEMM for gate and up
        self.down = nn.Linear(c.intermediate, c.hidden, bias=False, **kw)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: DecoderConfig, **kw):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(c.hidden, c.eps, **kw), Attention(c, **kw)
        self.mlp_norm, self.mlp = RMSNorm(c.hidden, c.eps, **kw), MLP(c, **kw)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, pos, mask)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, c: DecoderConfig, device=None, dtype=None,
                 transform: Optional[Callable[[nn.Module], nn.Module]] = None):
        """Random weights drawn from the global RNG (seed it first). `transform` is applied to each block as soon
        as it is built (e.g. spmm.sparsify), so a sparse model never holds all its dense weights at once."""
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.hidden, **kw)
        self.layers = nn.ModuleList()
        for _ in range(c.layers):
            block = _init(Block(c, **kw))
            self.layers.append(transform(block) if transform else block)
        self.norm = RMSNorm(c.hidden, c.eps, **kw)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False, **kw)
        _init(self.embed), _init(self.lm_head)
        self.max_len = 0

    def setup_cache(self, batch: int, max_len: int) -> None:
        """Allocate zeroed KV caches and rotary tables for `batch` sequences of up to `max_len` tokens."""
        c, p = self.c, self.lm_head.weight
        for layer in self.layers:
            shape = (batch, c.n_kv, max_len, c.head_dim)
            layer.attn.k_cache = torch.zeros(shape, device=p.device, dtype=p.dtype)
            layer.attn.v_cache = torch.zeros(shape, device=p.device, dtype=p.dtype)
        inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=p.device, dtype=torch.float32) / c.head_dim)
        freqs = torch.outer(torch.arange(max_len, device=p.device, dtype=torch.float32), inv)
        freqs = torch.cat((freqs, freqs), dim=-1)  # [max_len, head_dim], matching _rotate_half's halves
        self.cos, self.sin = freqs.cos().to(p.dtype), freqs.sin().to(p.dtype)
        self.positions = torch.arange(max_len, device=p.device)
        self.max_len = max_len

    def decode_step(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """tokens [B, 1] (int64), pos [1] (int64, on the model's device, < max_len) -> logits [B, 1, vocab]."""
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)  # [1, head_dim]
        mask = (self.positions <= pos).view(1, 1, 1, self.max_len)  # attend to positions 0..pos
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask)
        return self.lm_head(self.norm(x))


@torch.no_grad()
def _init(module: nn.Module) -> nn.Module:
    """Llama-like init (normal, std 0.02; norms 1): faster than nn.Linear's default on 7B parameters and keeps
    fp16 activations in range across 32 random layers."""
    for name, p in module.named_parameters():
        if not name.endswith("norm.weight"):
            p.normal_(0.0, 0.02)
    return module


def linears(model: nn.Module):
    """(name, module) of every module that takes the place of an nn.Linear: nn.Linear or an spmm sparse layer."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "in_features") and hasattr(m, "out_features")]

