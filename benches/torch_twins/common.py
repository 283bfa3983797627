"""Building blocks shared by the PyTorch twins of kiln's bundled models.

Each block computes what the kiln layer of the same name computes (see src/lower/layers/ and
src/ops/) with exactly its parameters, so that `benches/vs_torch.py` can check the counts.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """kiln `rmsnorm`: x / sqrt(mean(x²) + eps) · weight (no bias)."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def layernorm(d, eps=1e-5):
    """kiln `layernorm`: weight and bias."""
    return nn.LayerNorm(d, eps=eps)


def sinusoidal_table(seq, d, device):
    """kiln `sinusoidal_positions`: sin(p / 10000^(2i/d)) at feature 2i, cos at 2i + 1."""
    pos = torch.arange(seq, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(d, device=device)
    angle = pos / 10000.0 ** ((i - i % 2).double() / d)
    return torch.where(i % 2 == 0, angle.sin(), angle.cos()).float()


def rope_tables(seq, hd, base, device, yarn=None):
    """Rotate-half RoPE cos/sin tables [seq, hd/2] (kiln `rope_table`). `yarn` = (factor,
    original_max_len): YaRN's frequency interpolation and attention scale (only the tables
    change; the cost is the same)."""
    inv = base ** (-torch.arange(0, hd // 2, device=device, dtype=torch.float64) * 2 / hd)
    scale = 1.0
    if yarn is not None:
        factor, orig = yarn
        wavelen = 2 * math.pi / inv
        ramp = ((orig / wavelen) - 1.0).clamp(0, 31) / 31.0
        inv = inv / factor * (1 - ramp) + inv * ramp
        scale = 0.1 * math.log(factor) + 1.0
    ang = torch.arange(seq, device=device, dtype=torch.float64)[:, None] * inv[None, :]
    return (ang.cos() * scale).float(), (ang.sin() * scale).float()


def rope(x, cos, sin):
    """x [b, h, s, d] rotated (pairs i, i + d/2) by tables already sliced to its positions."""
    s, half = x.shape[2], x.shape[3] // 2
    c, n = cos[:s], sin[:s]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * n, x1 * n + x2 * c], dim=-1)


def cache_offset(cache):
    """Positions already in a key/value cache (0 without one)."""
    return 0 if cache is None or cache.get("k") is None else cache["k"].shape[2]


def cache_append(cache, k, v):
    """Keys and values `[b, h, s, d]` after the cached ones, kept in `cache` (a dict, or None
    when not decoding)."""
    if cache is None:
        return k, v
    if cache.get("k") is not None:
        k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
    cache["k"], cache["v"] = k, v
    return k, v


class Attention(nn.Module):
    """kiln `attention`: q/k/v/out linear maps (bias optional), grouped-query heads, optional
    rotary positions, causal scaled-dot-product attention with dropout on the probabilities.
    `cache` (a dict) holds the keys and values of the positions decoded so far."""

    def __init__(self, d, heads, kv_heads=None, bias=True, rope_base=None, dropout=0.0,
                 yarn=None, max_len=4096, causal=True):
        super().__init__()
        kv_heads = kv_heads or heads
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.q = nn.Linear(d, d, bias=bias)
        self.k = nn.Linear(d, kv_heads * self.hd, bias=bias)
        self.v = nn.Linear(d, kv_heads * self.hd, bias=bias)
        self.out = nn.Linear(d, d, bias=bias)
        self.dropout = dropout
        self.causal = causal
        self.rope = rope_base is not None
        if self.rope:
            cos, sin = rope_tables(max_len, self.hd, rope_base, "cpu", yarn)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, cache=None):
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        off = cache_offset(cache)
        if self.rope:
            q = rope(q, self.cos[off:], self.sin[off:])
            k = rope(k, self.cos[off:], self.sin[off:])
        k, v = cache_append(cache, k, v)
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal and s > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=(self.h != self.kv),
        )
        return self.out(o.transpose(1, 2).reshape(b, s, d))


class SwiGLU(nn.Module):
    """kiln `swiglu`: down(silu(gate(x)) · up(x)), no biases."""

    def __init__(self, d, hidden):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Mlp(nn.Module):
    """kiln `mlp`: down(dropout(act(up(x)))), with biases; GELU is the exact (erf) one."""

    def __init__(self, d, hidden, activation="gelu", dropout=0.0):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.act = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}[activation]
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.down(self.drop(self.act(self.up(x))))


class PreNorm(nn.Module):
    """kiln `residual` around [norm, mixer]: x + mixer(norm(x)); `state` goes to the mixer."""

    def __init__(self, norm, mixer):
        super().__init__()
        self.norm = norm
        self.mixer = mixer

    def forward(self, x, state=None):
        if state is None:
            return x + self.mixer(self.norm(x))
        return x + self.mixer(self.norm(x), state)


def causal_conv(x, kernel, n=None):
    """Causal depthwise convolution y_t = Σ_{j≤t} kernel[j] ⊙ x_{t−j} of x [b, s, d] with a
    kernel [taps, d], by FFT zero-padded to n (default: a power of two ≥ 2s)."""
    s = x.shape[1]
    n = n or 1 << (2 * s - 1).bit_length()
    xf = torch.fft.rfft(x, n=n, dim=1)
    kf = torch.fft.rfft(kernel, n=n, dim=0)
    return torch.fft.irfft(xf * kf, n=n, dim=1)[:, :s]


def dense_causal_conv(x, kernel):
    """The same convolution as a dense per-channel Toeplitz product (kiln's choice for
    sequences of at most 64 positions)."""
    s = x.shape[1]
    t = torch.arange(s, device=x.device)
    lag = t[:, None] - t[None, :]  # [t, j]
    m = kernel[lag.clamp(min=0)] * (lag >= 0)[..., None]  # [t, j, d]
    return torch.einsum("tjd,bjd->btd", m, x)


class Lm(nn.Module):
    """Embedding (optionally × sqrt(d)), then `blocks`, then an optional final norm and a
    linear head. Blocks take (x, state) where state is one entry of `init_state()`."""

    def __init__(self, vocab, d, blocks, norm=None, head_bias=True, scale_embed=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.head = nn.Linear(d, vocab, bias=head_bias)
        self.scale = math.sqrt(d) if scale_embed else 1.0

    def body(self, x, states=None):
        for i, blk in enumerate(self.blocks):
            x = blk(x) if states is None else blk(x, states[i])
        return x

    def forward(self, tokens, states=None):
        x = self.embed(tokens) * self.scale
        x = self.body(x, states)
        if self.norm is not None:
            x = self.norm(x)
        return self.head(x)

    def init_state(self, batch, device):
        return [{} for _ in self.blocks]


class Steps:
    """How the step-by-step loops (Mamba's scan, the sLSTM) run under `--compile`.
    `torch.compile` of a whole model unrolls such a loop over every position (minutes of
    compilation: 115 s for the bundled 4-block Mamba, over 5 minutes for the bundled xLSTM), so
    the loop itself stays out of the traced graph (`torch.compiler.disable`) and its step is a
    compiled function of its own, compiled once and called once per position."""

    compiled = False
    _cache = {}

    @classmethod
    def fn(cls, f):
        if not cls.compiled:
            return f
        if f not in cls._cache:
            cls._cache[f] = torch.compile(f, dynamic=False)
        return cls._cache[f]
