"""Twin of kiln's models/wave.yaml: embedding + sinusoidal positions, the wave encoding (a
linear map to 3 features per harmonic: softplus frequency and amplitude, π·tanh phase),
harmonic selection (Gumbel top-k, straight-through with the relaxed top-k of Xie & Ermon in
training, plus the recipe's harmonic-sparsity term), pre-RMSNorm blocks of phase-coherent
attention (cosine mode) and SwiGLU, a band pyramid with cross-band attention, and the head."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Attention, Mlp, PreNorm, RMSNorm, SwiGLU, sinusoidal_table


def topk_mask(scores, k):
    idx = scores.topk(k, -1).indices
    return torch.zeros_like(scores).scatter(-1, idx, 1.0)


class HarmonicSelect(nn.Module):
    def __init__(self, d, harmonics, k, tau=1.0):
        super().__init__()
        self.score = nn.Linear(d, harmonics)
        self.h, self.k, self.tau = harmonics, k, tau

    def forward(self, x):
        b, s, d = x.shape
        scores = self.score(x)
        aux = None
        if self.training:
            clean = topk_mask(scores.detach(), self.k)
            p = (scores / self.tau).softmax(-1)
            aux = (1 - (p * clean).sum(-1)).mean()
            u = torch.rand_like(scores).clamp_min(1e-10)
            noisy = scores - torch.log(-torch.log(u))
            hard = topk_mask(noisy.detach(), self.k)
            alpha, soft = noisy, 0
            for _ in range(self.k):
                a = (alpha / self.tau).softmax(-1)
                alpha = alpha + (1 - a).clamp_min(1e-12).log()
                soft = soft + a
            mask = soft + (hard - soft).detach()
        else:
            mask = topk_mask(scores, self.k)
        g = d // self.h
        return (x.view(b, s, self.h, g) * mask.unsqueeze(-1)).reshape(b, s, d), aux


class PhaseAttention(nn.Module):
    """Softmax over keys of blend₀·q·k/√e + blend₁·mean_m cos(φ_m − φ'_m), causal; phases
    π·tanh(linear(x)) with `phases` per head."""

    def __init__(self, d, heads, phases):
        super().__init__()
        self.h, self.e, self.p = heads, d // heads, phases
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.phase = nn.Linear(d, heads * phases)
        self.blend = nn.Parameter(torch.ones(2))
        self.out = nn.Linear(d, d)

    def forward(self, x, cache=None):
        b, s, d = x.shape
        split = lambda t, w: t.view(b, s, self.h, w).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x), self.e), split(self.k(x), self.e), split(self.v(x), self.e)
        ph = split(torch.tanh(self.phase(x)) * math.pi, self.p)
        pk = ph
        if cache is not None:
            if cache.get("k") is not None:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                pk = torch.cat([cache["ph"], ph], 2)
            cache.update(k=k, v=v, ph=pk)
        cq, sq, ck, sk = ph.cos(), ph.sin(), pk.cos(), pk.sin()
        coherence = (cq @ ck.transpose(2, 3) + sq @ sk.transpose(2, 3)) / self.p
        logits = (q @ k.transpose(2, 3)) / math.sqrt(self.e) * self.blend[0] + coherence * self.blend[1]
        t = k.shape[2]
        mask = torch.ones(s, t, dtype=torch.bool, device=x.device).tril(t - s)
        probs = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        return self.out((probs @ v).transpose(1, 2).reshape(b, s, d))


class BandPyramid(nn.Module):
    """Bands of the harmonic features (boundaries 0.25, 0.5 of 8 harmonics: 6, 6 and 12
    features), each through its own stack, cross-band attention at every position (per band
    q, k, v maps to `cross` features, softmax over the bands, a map back added to the band),
    the bands concatenated and mapped by a final linear layer."""

    def __init__(self, cross=8):
        super().__init__()
        self.widths = [6, 6, 12]
        att = lambda c: PreNorm(RMSNorm(c), Attention(c, 2, bias=True))  # noqa: E731
        self.stacks = nn.ModuleList([
            nn.ModuleList([att(6), att(6)]),
            nn.ModuleList([att(6)]),
            nn.ModuleList([PreNorm(RMSNorm(12), Mlp(12, 24, "gelu"))]),
        ])
        self.q = nn.ModuleList(nn.Linear(c, cross) for c in self.widths)
        self.k = nn.ModuleList(nn.Linear(c, cross) for c in self.widths)
        self.v = nn.ModuleList(nn.Linear(c, cross) for c in self.widths)
        self.back = nn.ModuleList(nn.Linear(cross, c) for c in self.widths)
        self.final = nn.Linear(sum(self.widths), sum(self.widths))
        self.cross = cross

    def forward(self, x, caches=None):
        bands, start = [], 0
        for i, (c, stack) in enumerate(zip(self.widths, self.stacks)):
            y = x[..., start:start + c]
            start += c
            for j, blk in enumerate(stack):
                stateless = caches is None or isinstance(blk.mixer, Mlp)
                y = blk(y) if stateless else blk(y, caches.setdefault((i, j), {}))
            bands.append(y)
        q = torch.stack([m(y) for m, y in zip(self.q, bands)], 2)  # [b, s, n, c]
        k = torch.stack([m(y) for m, y in zip(self.k, bands)], 2)
        v = torch.stack([m(y) for m, y in zip(self.v, bands)], 2)
        w = (q @ k.transpose(2, 3) / math.sqrt(self.cross)).softmax(-1)
        mixed = w @ v
        outs = [y + m(mixed[:, :, i]) for i, (m, y) in enumerate(zip(self.back, bands))]
        return self.final(torch.cat(outs, -1))


class WaveBlock(nn.Module):
    def __init__(self, d, heads, phases, d_ff):
        super().__init__()
        self.attn = PreNorm(RMSNorm(d), PhaseAttention(d, heads, phases))
        self.ff = PreNorm(RMSNorm(d), SwiGLU(d, d_ff))

    def forward(self, x, cache=None):
        return self.ff(self.attn(x, cache))


class WaveLm(nn.Module):
    def __init__(self, vocab, d_embed, harmonics, k, heads, phases, d_ff, depth, max_len,
                 sparsity=0.1):
        super().__init__()
        d = 3 * harmonics
        self.embed = nn.Embedding(vocab, d_embed)
        self.register_buffer("pe", sinusoidal_table(max_len, d_embed, "cpu"), persistent=False)
        self.proj = nn.Linear(d_embed, d)
        self.select = HarmonicSelect(d, harmonics, k)
        self.blocks = nn.ModuleList(WaveBlock(d, heads, phases, d_ff) for _ in range(depth))
        self.pyramid = PreNorm(RMSNorm(d), BandPyramid())
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab)
        self.h, self.sparsity = harmonics, sparsity

    def forward(self, tokens, states=None):
        b, s = tokens.shape
        off = 0 if states is None else states.get("t", 0)
        x = self.proj(self.embed(tokens) + self.pe[off:off + s]).view(b, s, self.h, 3)
        x = torch.cat([F.softplus(x[..., :2]), torch.tanh(x[..., 2:]) * math.pi], -1)
        x, aux = self.select(x.reshape(b, s, 3 * self.h))
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if states is None else states.setdefault(i, {}))
        x = self.pyramid(x, None if states is None else states.setdefault("pyramid", {}))
        if states is not None:
            states["t"] = off + s
        logits = self.head(self.norm(x))
        # The recipe's harmonic-sparsity regularizer (weight 0.1) joins the loss in training.
        return logits if aux is None else (logits, self.sparsity * aux)

    def init_state(self, batch, device):
        return {}


def wave(vocab, seq, v):
    return WaveLm(vocab, v.get("d_embed", 32), v.get("harmonics", 8), v.get("k", 6),
                  v.get("heads", 4), v.get("phases", 4), v.get("d_ff", 64), v.get("depth", 2),
                  seq + 512)
