"""Twins of kiln's other sequence mixers: linear (the paper's position-wise linear model),
retnet (multi-scale retention), gfnet-causal (causal spectral filter, attention every second
block) and ets (exponential smoothing attention)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import (Attention, Lm, Mlp, PreNorm, SwiGLU, causal_conv, dense_causal_conv,
                     rope, rope_tables)


class PositionLinear(nn.Module):
    """models/linear.yaml: embedding, then y[t] = Σ_{s≤t} x[s] · W[s, :, t, :] + bias[t] with
    W [L, i, L, o]: one masked matrix product [b, s·i] × [s·i, s·o]. Decoding with a cache is
    not a recurrence here (every output reads every earlier input): no generation."""

    def __init__(self, vocab, dim, max_len):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        bound = 1.0 / math.sqrt(dim * max_len)
        self.weight = nn.Parameter(torch.empty(max_len, dim, max_len, vocab).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(max_len, vocab).uniform_(-bound, bound))
        self.register_buffer("mask", torch.ones(max_len, max_len).triu(), persistent=False)

    def forward(self, tokens, states=None):
        x = self.embed(tokens)
        b, s, i = x.shape
        o = self.weight.shape[3]
        w = self.weight[:s, :, :s] * self.mask[:s, :s][:, None, :, None]
        return (x.reshape(b, s * i) @ w.reshape(s * i, s * o)).view(b, s, o) + self.bias[:s]


def linear(vocab, seq, v):
    return PositionLinear(vocab, v.get("dim", 10), v.get("max_len", 65))


class Retention(nn.Module):
    """kiln's `retention` layer: q, k, v maps (no bias), RoPE on q and k, per-head decay
    γ_i = 1 − 2^(−5−i), parallel form (Q Kᵀ/√dk ⊙ D) V in training and the recurrence
    S = γ S + kᵀv in decoding; the heads' GroupNorm (weight, bias), swish gate, output map."""

    def __init__(self, d, heads, max_len):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.norm = nn.GroupNorm(heads, d, eps=1e-5)
        self.g = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        gamma = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))
        self.register_buffer("gamma", gamma.float(), persistent=False)
        t = torch.arange(max_len, dtype=torch.float64)
        lag = t[:, None] - t[None, :]
        dmat = gamma[:, None, None] ** lag.clamp(min=0) * (lag >= 0)
        self.register_buffer("dmat", dmat.float(), persistent=False)
        cos, sin = rope_tables(max_len, self.hd, 10000.0, "cpu")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, state=None):
        b, s, d = x.shape
        q, k, v = (m(x).view(b, s, self.h, self.hd).transpose(1, 2) for m in (self.q, self.k, self.v))
        off = 0 if state is None else state.get("t", 0)
        q, k = rope(q, self.cos[off:], self.sin[off:]), rope(k, self.cos[off:], self.sin[off:])
        k = k / math.sqrt(self.hd)
        if state is None:
            o = ((q @ k.transpose(2, 3)) * self.dmat[:, :s, :s]) @ v
        else:  # one position at a time
            sm = state.get("s", x.new_zeros(b, self.h, self.hd, self.hd))
            g = self.gamma[None, :, None, None]
            outs = []
            for t in range(s):
                sm = g * sm + k[:, :, t, :, None] @ v[:, :, t, None, :]
                outs.append(q[:, :, t, None] @ sm)
            state.update(s=sm, t=off + s)
            o = torch.cat(outs, 2)
        o = o.transpose(1, 2).reshape(b * s, d)
        o = self.norm(o).view(b, s, d)
        return self.out(F.silu(self.g(x)) * o)


def retnet(vocab, seq, v):
    d, heads, ff = v.get("d_model", 32), v.get("heads", 4), v.get("d_ff", 86)
    blocks = []
    for _ in range(v.get("depth", 4)):
        blocks.append(nn.Sequential(PreNorm(nn.LayerNorm(d), Retention(d, heads, seq + 512)),
                                    PreNorm(nn.LayerNorm(d), SwiGLU(d, ff))))
    return RecurrentLm(vocab, d, blocks, norm=nn.LayerNorm(d))


class RecurrentLm(Lm):
    """An Lm whose blocks are Sequential(mixer block, feed-forward block): the state goes to
    the mixer block."""

    def body(self, x, states=None):
        for i, blk in enumerate(self.blocks):
            if states is None:
                x = blk(x)
            else:
                x = blk[1](blk[0](x, states[i]))
        return x


class SpectralGate(nn.Module):
    """kiln's causal `spectral_gate`: a learned kernel [max_len, d] applied as a causal
    convolution by FFT (zero-padded to n = 2·max_len), y = irfft(rfft(x) · rfft(kernel))[:s]."""

    def __init__(self, d, max_len):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.n = 2 * max_len

    def forward(self, x):
        return causal_conv(x, self.kernel, self.n)


def gfnet(vocab, seq, v):
    d, max_len = v.get("d_model", 32), v.get("max_len", 128)
    blocks = []
    for i in range(v.get("depth", 4)):
        layers = [PreNorm(nn.LayerNorm(d), SpectralGate(d, max_len))]
        if i % 2 == 1:
            layers.append(PreNorm(nn.LayerNorm(d), Attention(d, 4, bias=True)))
        layers.append(PreNorm(nn.LayerNorm(d), Mlp(d, 128, "gelu")))
        blocks.append(nn.Sequential(*layers))
    return LearnedPosLm(vocab, d, blocks, max_len)


class LearnedPosLm(Lm):
    def __init__(self, vocab, d, blocks, max_len):
        super().__init__(vocab, d, blocks, norm=nn.LayerNorm(d))
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)

    def forward(self, tokens, states=None):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.body(x)))


class Ets(nn.Module):
    """ETSformer's exponential smoothing attention as kiln's `ets_attention`: values v = W x + b,
    per head α = σ(a), ES_t = (1 − α) ES_{t−1} + α v_t from a learned v₀, as one causal
    convolution (dense for ≤ 64 positions, FFT beyond, as kiln); then the output map. Decoding
    carries ES."""

    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.v = nn.Linear(d, d)
        self.alpha = nn.Parameter(torch.zeros(heads))
        self.v0 = nn.Parameter(torch.randn(d) * 0.02)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, state=None):
        b, s, d = x.shape
        v = self.v(x)
        a = self.alpha.repeat_interleave(d // self.h)  # [d]
        ln_a, ln_1a = F.logsigmoid(a), F.logsigmoid(-a)
        j = torch.arange(s, device=x.device, dtype=x.dtype)[:, None]
        kernel = torch.exp(j * ln_1a + ln_a)  # [s, d]
        prev = self.v0.expand(b, d) if state is None or "es" not in state else state["es"]
        decay = torch.exp((j + 1) * ln_1a)
        conv = dense_causal_conv(v, kernel) if s <= 64 else causal_conv(v, kernel)
        es = conv + decay * prev[:, None]
        if state is not None:
            state["es"] = es[:, -1]
        return self.out(es)


def ets(vocab, seq, v):
    d, heads = v.get("d_model", 32), v.get("heads", 4)
    blocks = [
        nn.Sequential(PreNorm(nn.LayerNorm(d), Ets(d, heads)),
                      PreNorm(nn.LayerNorm(d), Mlp(d, 128, "gelu")))
        for _ in range(v.get("depth", 4))
    ]
    return RecurrentLm(vocab, d, blocks, norm=nn.LayerNorm(d))
