"""Twins of kiln's attention models: transformer-modern, transformer-postln (the
rule-extrapolation paper's Transformer), transformer-memory, transformer-hard and
transformer-adaptive. All decode with a key/value cache."""

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    Attention, Lm, PreNorm, RMSNorm, SwiGLU, Mlp, cache_append, cache_offset, rope,
    sinusoidal_table,
)


class ModernBlock(nn.Module):
    """Pre-RMSNorm residual attention (GQA, RoPE, no biases), pre-RMSNorm residual SwiGLU."""

    def __init__(self, d, heads, kv_heads, d_ff, max_len, yarn=None, attn=None):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = attn or Attention(d, heads, kv_heads, bias=False, rope_base=10000.0,
                                      yarn=yarn, max_len=max_len)
        self.ff = PreNorm(RMSNorm(d), SwiGLU(d, d_ff))

    def forward(self, x, cache=None):
        x = x + self.attn(self.attn_norm(x), cache)
        return self.ff(x)


def modern(vocab, seq, v, yarn=None):
    d = v.get("d_model", 32)
    blocks = [
        ModernBlock(d, v.get("heads", 4), v.get("kv_heads", 2), v.get("d_ff", 86), seq + 512,
                    yarn)
        for _ in range(v.get("depth", 2))
    ]
    return Lm(vocab, d, blocks, norm=RMSNorm(d))


def adaptive(vocab, seq, v):
    """Training is ordinary softmax attention (the adaptive temperature acts at inference);
    RoPE with YaRN scaling (factor 2 over 32 positions) only changes the tables."""
    return modern(vocab, seq, v, yarn=(2.0, 32))


class PostLnBlock(nn.Module):
    """PyTorch's nn.TransformerEncoderLayer (post-LN, ReLU): LN(x + drop(attn(x))), then
    LN(x + drop(down(drop(relu(up(x)))))), with dropout on the attention probabilities."""

    def __init__(self, d, heads, d_ff, dropout, eps):
        super().__init__()
        self.attn = Attention(d, heads, bias=True, dropout=dropout)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.ff = Mlp(d, d_ff, "relu", dropout)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x, cache=None):
        x = self.norm1(x + self.drop1(self.attn(x, cache)))
        return self.norm2(x + self.drop2(self.ff(x)))


class PostLn(Lm):
    """Embedding × sqrt(d), sinusoidal positions, dropout, post-LN blocks, linear head."""

    def __init__(self, vocab, d, blocks, dropout, max_len):
        super().__init__(vocab, d, blocks, norm=None, scale_embed=True)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(max_len, d, "cpu"), persistent=False)

    def forward(self, tokens, states=None):
        off = 0 if states is None or states[0].get("k") is None else states[0]["k"].shape[2]
        x = self.embed(tokens) * self.scale + self.pe[off:off + tokens.shape[1]]
        return self.head(self.body(self.drop(x), states))


def postln(vocab, seq, v):
    d, p = v.get("d_model", 10), v.get("dropout", 0.1)
    blocks = [
        PostLnBlock(d, v.get("heads", 5), v.get("d_ff", 1024), p, v.get("eps", 6e-3))
        for _ in range(v.get("depth", 7))
    ]
    return PostLn(vocab, d, blocks, p, seq + 512)


class Memory(Lm):
    """transformer-memory: `memory` learned vectors prepended to every sequence, seen by every
    block as a prefix, their outputs dropped before the head."""

    def __init__(self, vocab, d, blocks, count):
        super().__init__(vocab, d, blocks, norm=RMSNorm(d))
        self.memory = nn.Parameter(torch.randn(count, d) * 0.02)

    def forward(self, tokens, states=None):
        x = self.embed(tokens)
        m = self.memory.shape[0]
        fresh = states is None or states[0].get("k") is None
        if fresh:
            x = torch.cat([self.memory.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.body(x, states))
        return self.head(x[:, m:] if fresh else x)


def memory(vocab, seq, v):
    d = v.get("d_model", 32)
    blocks = [
        ModernBlock(d, v.get("heads", 4), v.get("kv_heads", 2), v.get("d_ff", 86), seq + 512)
        for _ in range(v.get("depth", 2))
    ]
    return Memory(vocab, d, blocks, v.get("memory", 4))


class HardAttention(Attention):
    """Argmax attention, straight-through in training (the value of the one-hot weights, the
    gradient of the softmax ones); RoPE, no biases."""

    def forward(self, x, cache=None):
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        off = cache_offset(cache)
        q, k = rope(q, self.cos[off:], self.sin[off:]), rope(k, self.cos[off:], self.sin[off:])
        k, v = cache_append(cache, k, v)
        scores = q @ k.transpose(2, 3) * self.hd ** -0.5
        t = k.shape[2]
        mask = torch.ones(s, t, dtype=torch.bool, device=x.device).tril(t - s)
        scores = scores.masked_fill(~mask, float("-inf"))
        hit = (scores == scores.amax(-1, keepdim=True)).float()
        hard = hit / hit.sum(-1, keepdim=True)
        if self.training:
            soft = scores.softmax(-1)
            hard = soft + (hard - soft).detach()
        return self.out((hard @ v).transpose(1, 2).reshape(b, s, d))


class QkNormAttention(Attention):
    """Grouped-query attention with QK-norm (L2 over the head's features) and a learned logit
    scale (initially 10), RoPE, no biases."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.qk_scale = nn.Parameter(torch.full((1,), 10.0))

    def forward(self, x, cache=None):
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        off = cache_offset(cache)
        q, k = rope(q, self.cos[off:], self.sin[off:]), rope(k, self.cos[off:], self.sin[off:])
        k, v = cache_append(cache, k, v)
        o = F.scaled_dot_product_attention(q * self.qk_scale, k, v, is_causal=s > 1, scale=1.0,
                                           enable_gqa=self.h != self.kv)
        return self.out(o.transpose(1, 2).reshape(b, s, d))


def hard(vocab, seq, v):
    d, h, kv, ff = v.get("d_model", 32), v.get("heads", 4), v.get("kv_heads", 2), v.get("d_ff", 86)
    blocks = []
    for i in range(v.get("depth", 4)):
        if i % 2 == 0:
            attn = HardAttention(d, h, h, bias=False, rope_base=10000.0, max_len=seq + 512)
        else:
            attn = QkNormAttention(d, h, kv, bias=False, rope_base=10000.0, max_len=seq + 512)
        blocks.append(ModernBlock(d, h, kv, ff, seq + 512, attn=attn))
    return Lm(vocab, d, blocks, norm=RMSNorm(d))
