"""Twins of kiln's recurrent models: lstm (the paper's LSTM), mamba and xlstm. Each decodes
from its recurrent state, one token at a time."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Lm, PreNorm, RMSNorm, Steps, SwiGLU


class LstmLm(nn.Module):
    """models/lstm.yaml: embedding, nn.LSTM (`layers` stacked, no dropout between them),
    dropout on its output, linear head."""

    def __init__(self, vocab, embed, hidden, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, states=None):
        if states is None:
            y, _ = self.lstm(self.embed(tokens))
        else:
            y, hc = self.lstm(self.embed(tokens), states.get("hc"))
            states["hc"] = hc
        return self.head(self.drop(y))

    def init_state(self, batch, device):
        return {}


def lstm(vocab, seq, v):
    return LstmLm(vocab, v.get("embed", 10), v.get("hidden", 64), v.get("depth", 5), 0.4)


class Mamba(nn.Module):
    """The Mamba block as kiln's `mamba` op (mamba.py's structure): in_proj to x and z, causal
    depthwise convolution and SiLU on x, x_proj to (Δ, B, C), Δ = softplus(dt_proj(Δ)), the
    selective scan h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t x_t, y_t = C_t h_t + D x_t, then
    out_proj(y · silu(z)). The scan runs step by step (as kiln's does)."""

    def __init__(self, d, d_state, d_conv, expand=2):
        super().__init__()
        e = expand * d
        self.e, self.n, self.k = e, d_state, d_conv
        self.r = math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.conv = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        self.x_proj = nn.Linear(e, self.r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.r, e)
        with torch.no_grad():
            self.dt_proj.bias.fill_(math.log(math.expm1(0.01)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)

    def forward(self, x, state=None):
        b, s, _ = x.shape
        xi, z = self.in_proj(x).chunk(2, -1)
        if state is None:
            u = self.conv(xi.transpose(1, 2))[..., :s].transpose(1, 2)
            h = x.new_zeros(b, self.e, self.n)
        else:
            prev = state.get("conv", x.new_zeros(b, self.k - 1, self.e))
            xp = torch.cat([prev, xi], 1)
            state["conv"] = xp[:, -(self.k - 1):]
            u = F.conv1d(xp.transpose(1, 2), self.conv.weight, self.conv.bias, groups=self.e)
            u = u.transpose(1, 2)
            h = state.get("ssm", x.new_zeros(b, self.e, self.n))
        u = F.silu(u)
        delta, bm, cm = self.x_proj(u).split([self.r, self.n, self.n], -1)
        dt = F.softplus(self.dt_proj(delta))  # [b, s, e]
        a = -self.A_log.exp()  # [e, n]
        da = torch.exp(dt.unsqueeze(-1) * a)  # [b, s, e, n]
        dbx = (dt * u).unsqueeze(-1) * bm.unsqueeze(2)  # [b, s, e, n]
        ys, h = mamba_scan(da, dbx, cm, h)
        if state is not None:
            state["ssm"] = h
        y = ys + u * self.D
        return self.out_proj(y * F.silu(z))


def mamba_step(da, dbx, c, h):
    h = da * h + dbx
    return (h @ c.unsqueeze(-1)).squeeze(-1), h


@torch.compiler.disable
def mamba_scan(da, dbx, cm, h):
    """h_t = da_t h_{t−1} + dbx_t, y_t = h_t C_t, position by position (see `Steps`)."""
    # unbind, not da[:, t]: the backward pass of unbind stacks the gradients once, where
    # indexing would allocate and fill a zero gradient of the whole tensor per position.
    step, ys = Steps.fn(mamba_step), []
    for da_t, dbx_t, c_t in zip(da.unbind(1), dbx.unbind(1), cm.unbind(1)):
        y, h = step(da_t, dbx_t, c_t, h)
        ys.append(y)
    return torch.stack(ys, 1), h


def mamba(vocab, seq, v):
    d = v.get("d_model", 32)
    blocks = [
        PreNorm(RMSNorm(d, 1e-5), Mamba(d, v.get("d_state", 16), v.get("d_conv", 8)))
        for _ in range(v.get("depth", 4))
    ]
    return Lm(vocab, d, blocks, norm=RMSNorm(d, 1e-5), head_bias=False)


class Mlstm(nn.Module):
    """kiln's `mlstm`: q, k (÷√dh), v and the output gate from one map with bias, exponential
    input gate and sigmoid forget gate per head, the stabilized parallel form of Beck et al.
    (2024) in training, the recurrence in decoding; σ(o) · h, then the output map."""

    def __init__(self, d, heads):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkvo = nn.Linear(d, 4 * d)
        self.igate = nn.Linear(d, heads)
        self.fgate = nn.Linear(d, heads)
        with torch.no_grad():
            self.igate.bias.zero_()
            self.fgate.bias.fill_(3.0)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, state=None):
        b, s, d = x.shape
        q, k, v, o = self.qkvo(x).chunk(4, -1)
        q, k, v = (t.view(b, s, self.h, self.dh).transpose(1, 2) for t in (q, k, v))
        k = k / math.sqrt(self.dh)
        ig = self.igate(x).transpose(1, 2)  # [b, H, s]
        logf = F.logsigmoid(self.fgate(x)).transpose(1, 2)
        if state is None:
            cum = logf.cumsum(-1)
            dmat = cum.unsqueeze(-1) - cum.unsqueeze(-2) + ig.unsqueeze(-2)  # [b, H, t, s]
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            dmat = dmat.masked_fill(~causal, float("-inf"))
            m = dmat.amax(-1, keepdim=True).detach()
            c = (q @ k.transpose(2, 3)) * torch.exp(dmat - m)
            norm = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m))
            hs = (c / norm) @ v
        else:  # one position at a time, stabilized
            cm = state.get("c", x.new_zeros(b, self.h, self.dh, self.dh))
            nm = state.get("n", x.new_zeros(b, self.h, 1, self.dh))
            mm = state.get("m", x.new_zeros(b, self.h, 1, 1))
            outs = []
            for t in range(s):
                lf, it = logf[..., t, None, None], ig[..., t, None, None]
                mn = torch.maximum(lf + mm, it)
                fa, ia = torch.exp(lf + mm - mn), torch.exp(it - mn)
                kt, vt, qt = k[:, :, t, None], v[:, :, t, None], q[:, :, t, None]
                cm = fa * cm + ia * vt.transpose(2, 3) @ kt
                nm = fa * nm + ia * kt
                den = torch.maximum((nm * qt).sum(-1, keepdim=True).abs(), torch.exp(-mn))
                outs.append((qt @ cm.transpose(2, 3)) / den)
                mm = mn
            state.update(c=cm, n=nm, m=mm)
            hs = torch.cat(outs, 2)
        hs = hs.transpose(1, 2).reshape(b, s, d)
        return self.out(torch.sigmoid(o) * hs)


class Slstm(nn.Module):
    """kiln's `slstm`: input pre-activations W x + b for the gates (z, i, f, o; gate-major,
    then head), a block-diagonal recurrence R [H, dh, 4·dh] per head, step by step with the
    stabilizer m_t = max(ln σ(f̃_t) + m_{t−1}, ĩ_t)."""

    def __init__(self, d, heads):
        super().__init__()
        self.h, self.dh, self.d = heads, d // heads, d
        self.weight = nn.Linear(d, 4 * d)
        with torch.no_grad():
            self.weight.bias.zero_()
        bound = 1.0 / math.sqrt(self.dh)
        self.recurrent = nn.Parameter(torch.empty(heads, self.dh, 4 * self.dh).uniform_(-bound, bound))

    def forward(self, x, state=None):
        b, s, d = x.shape
        h_, dh = self.h, self.dh
        # [b, s, 4, H, dh] -> [b, s, H, 4·dh] to match R's per-head column order.
        xw = self.weight(x).view(b, s, 4, h_, dh).transpose(2, 3).reshape(b, s, h_, 4 * dh)
        st = state if state is not None else {}
        zero = x.new_zeros(b, h_, dh)
        c, n, m, h = (st.get(k, zero) for k in ("c", "n", "m", "h"))
        ys, (c, n, m, h) = slstm_scan(xw, self.recurrent, (c, n, m, h))
        if state is not None:
            state.update(c=c, n=n, m=m, h=h)
        return ys.reshape(b, s, d)


def slstm_step(xw, r, c, n, m, h):
    pre = xw + torch.einsum("bhi,hij->bhj", h, r)
    z, i, f, o = pre.chunk(4, -1)
    logf = F.logsigmoid(f)
    mn = torch.maximum(logf + m, i)
    ia, fa = torch.exp(i - mn), torch.exp(logf + m - mn)
    c = fa * c + ia * torch.tanh(z)
    n = fa * n + ia
    return c, n, mn, torch.sigmoid(o) * c / n


@torch.compiler.disable
def slstm_scan(xw, r, st):
    """The sLSTM position by position (see `Steps`); xw [b, s, H, 4·dh]."""
    step, ys = Steps.fn(slstm_step), []
    for xw_t in xw.unbind(1):  # unbind: see mamba_scan
        st = step(xw_t, r, *st)
        ys.append(st[3])
    return torch.stack(ys, 1), st


class XlstmBlock(nn.Module):
    def __init__(self, d, heads, d_ff, slstm):
        super().__init__()
        self.mix = PreNorm(nn.LayerNorm(d), Slstm(d, heads) if slstm else Mlstm(d, heads))
        self.ff = PreNorm(nn.LayerNorm(d), SwiGLU(d, d_ff))

    def forward(self, x, state=None):
        return self.ff(self.mix(x, state))


def xlstm(vocab, seq, v):
    d, heads, ff = v.get("d_model", 32), v.get("heads", 4), v.get("d_ff", 86)
    blocks = [XlstmBlock(d, heads, ff, i % 2 == 1) for i in range(v.get("depth", 4))]
    return Lm(vocab, d, blocks, norm=nn.LayerNorm(d))
