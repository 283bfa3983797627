#!/usr/bin/env python3
"""PyTorch reference for kiln's benchmarks: the same model, trained and decoded the same way.

The model is kiln's `models/transformer-modern.yaml` (what `recipes/default.yaml` and
`benches/train.rs` use): token embedding; depth x [pre-RMSNorm residual grouped-query attention
with rotate-half RoPE (base 10000), no biases; pre-RMSNorm residual SwiGLU]; final RMSNorm;
linear head with bias. AdamW at a constant learning rate, no clipping, cross-entropy over every
position, random tokens (throughput does not depend on the data).

Compare with kiln on the same machine:

    python3 benches/torch_reference.py --device cpu --threads 2            # vs cargo bench --bench train
    python3 benches/torch_reference.py --device cuda --precision bf16      # vs kiln bench --device gpu

Prints one JSON object with the same keys as `kiln bench`. Where torch is not installed the
script says so and exits 0.
"""

import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    print("torch is not installed here; nothing to compare (exit 0)")
    sys.exit(0)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, hd, base, device):
    inv = base ** (-torch.arange(0, hd // 2, device=device, dtype=torch.float64) * 2 / hd)
    ang = torch.arange(seq, device=device, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):
    # x [b, h, s, d]; tables [T, d/2] sliced to the positions of x.
    s, half = x.shape[2], x.shape[3] // 2
    c, n = cos[:s], sin[:s]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * n, x1 * n + x2 * c], dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, d_ff):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.attn_norm = RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d)
        self.gate = nn.Linear(d, d_ff, bias=False)
        self.up = nn.Linear(d, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, s, d = x.shape
        a = self.attn_norm(x)
        q = self.q(a).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k(a).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(a).view(b, s, self.kv, self.hd).transpose(1, 2)
        off = 0 if cache is None or cache.get("k") is None else cache["k"].shape[2]
        q = rope(q, cos[off:], sin[off:])
        k = rope(k, cos[off:], sin[off:])
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=(s > 1), enable_gqa=(self.h != self.kv)
        )
        x = x + self.out(o.transpose(1, 2).reshape(b, s, d))
        f = self.ff_norm(x)
        return x + self.down(F.silu(self.gate(f)) * self.up(f))


class Lm(nn.Module):
    def __init__(self, vocab, d, depth, heads, kv_heads, d_ff, max_len):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, d_ff) for _ in range(depth))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab)
        self.max_len = max_len
        self.hd = d // heads

    def forward(self, tokens, caches=None):
        cos, sin = rope_tables(self.max_len, self.hd, 10000.0, tokens.device)
        x = self.embed(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=344)
    p.add_argument("--seq", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=4)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to compare (exit 0)")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    max_len = max(a.seq, a.gen_tokens + 1)
    model = Lm(a.vocab, a.d_model, a.depth, a.heads, a.kv_heads, a.d_ff, max_len).to(dev)
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    amp = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[a.precision]
    scaler = torch.amp.GradScaler(enabled=a.precision == "f16")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=dev)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()  # waits for the device, as kiln's step does

    for _ in range(a.warmup):
        step()
    times = []
    loss = math.nan
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    out = {
        "reference": f"pytorch {torch.__version__} eager",
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "precision": a.precision,
        "params": params,
        "batch": a.batch,
        "train_steps": a.steps,
        "train_steps_per_s": a.steps / total,
        "train_tokens_per_s": a.steps * a.batch * a.seq / total,
        "train_step_ms_median": sorted(times)[len(times) // 2] * 1e3,
        "last_loss": loss,
    }
    if a.gen_tokens > 0:
        model.eval()

        @torch.no_grad()
        def gen(n):
            caches = [{} for _ in model.blocks]
            tok = torch.zeros(a.gen_batch, 1, dtype=torch.long, device=dev)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                for _ in range(n):
                    logits = model(tok, caches)
                    tok = logits[:, -1].argmax(-1, keepdim=True)
            sync()

        gen(3)
        t0 = time.perf_counter()
        gen(a.gen_tokens)
        secs = time.perf_counter() - t0
        out.update(
            gen_batch=a.gen_batch,
            gen_tokens=a.gen_batch * a.gen_tokens,
            gen_cached=True,
            gen_tokens_per_s=a.gen_batch * a.gen_tokens / secs,
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
