#!/usr/bin/env python3
"""PyTorch reference for kiln's benchmarks: the same model, trained and decoded the same way.

`--model FAMILY` picks the PyTorch twin of one of kiln's bundled model files (models/FAMILY.yaml;
the twins are in benches/torch_twins/), with that file's vars: transformer-modern (what
`recipes/default.yaml` uses; without `--model`, at the size of `benches/train.rs`: d 128,
4 layers, d_ff 344), transformer-postln (the rule-extrapolation
paper's Transformer), transformer-memory, transformer-hard, transformer-adaptive, lstm, mamba,
xlstm, linear, retnet, gfnet-causal, ets, wave. Each twin has exactly the parameters of the kiln model
(`benches/vs_torch.py` checks the counts) and computes what kiln's lowering computes. `--var
NAME=VALUE` overrides one of the model file's vars, like kiln's `--set model.vars.NAME=VALUE`.

Training: AdamW (weight decay 0.01 on every parameter) at a constant learning rate, no
clipping, cross-entropy over every position, the model's own dropout, random tokens of
`--vocab` symbols (throughput does not depend on the data), `--seq` tokens per sequence.
`--compile` trains `torch.compile(model)`: the warm-up steps compile it (at least one warm-up
step is run), and the first step's time is reported as `compile_s`, apart from the timed steps.
Step-by-step loops (Mamba's scan, the sLSTM) stay out of the traced graph and run a compiled
step function once per position (see `Steps` in torch_twins/common.py).
Generation (greedy, `--gen-tokens` per sequence for `--gen-batch` sequences, with a key/value
cache or the recurrent state) runs in eager mode only, for the twins that decode with a state.

    python3 benches/torch_reference.py --device cpu --threads 2            # vs cargo bench --bench train
    python3 benches/torch_reference.py --model mamba --vocab 5 --seq 65 --batch 32 --compile
    python3 benches/torch_reference.py --device cuda --precision bf16      # vs kiln bench --device gpu

Prints one JSON object with the same keys as `kiln bench`. Where torch is not installed the
script says so and exits 0.
"""

import argparse
import json
import math
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch is not installed here; nothing to compare (exit 0)")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_twins import FAMILIES, GENERATES  # noqa: E402
from torch_twins.common import Steps  # noqa: E402

DEFAULT_VARS = {  # what the old flags set (benches/train.rs's d 128 model)
    "d_model": 128, "depth": 4, "heads": 4, "kv_heads": 2, "d_ff": 344,
}


def parse_var(s):
    name, _, value = s.partition("=")
    try:
        return name, int(value)
    except ValueError:
        return name, float(value)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, choices=sorted(FAMILIES),
                   help="the twin of models/MODEL.yaml, with that file's vars (without --model: "
                        "transformer-modern at d 128, 4 layers, d_ff 344, as benches/train.rs)")
    p.add_argument("--var", action="append", default=[], type=parse_var,
                   help="NAME=VALUE: a model var (as kiln's --set model.vars.NAME=VALUE)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--compile", action="store_true", help="train torch.compile(model)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--seq", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=4)
    # The flags of the first version (transformer-modern only): kept for old command lines.
    for flag in ("d-model", "depth", "heads", "kv-heads", "d-ff"):
        p.add_argument(f"--{flag}", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to compare (exit 0)")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model_vars = {}
    if a.model is None:
        a.model = "transformer-modern"
        model_vars.update(DEFAULT_VARS)
    if a.model == "transformer-modern":
        for flag in ("d_model", "depth", "heads", "kv_heads", "d_ff"):
            if getattr(a, flag) is not None:
                model_vars[flag] = getattr(a, flag)
    model_vars.update(dict(a.var))
    model = FAMILIES[a.model](a.vocab, max(a.seq, a.gen_tokens + 1), model_vars).to(dev)
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    amp = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[a.precision]
    scaler = torch.amp.GradScaler(enabled=a.precision == "f16")
    Steps.compiled = a.compile
    train_model = torch.compile(model) if a.compile else model

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=dev)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits, extra = train_model(x[:, :-1]), 0.0
            if isinstance(logits, tuple):  # a regularizer's term (wave: harmonic sparsity)
                logits, extra = logits
            loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), x[:, 1:].reshape(-1))
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()  # waits for the device, as kiln's step does

    model.train()
    warm = []
    for _ in range(max(a.warmup, 1 if a.compile else 0)):
        t0 = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t0)
    times = []
    loss = math.nan
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    out = {
        "reference": f"pytorch {torch.__version__} {'compile' if a.compile else 'eager'}",
        "model": a.model,
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "precision": a.precision,
        "params": params,
        "batch": a.batch,
        "train_steps": a.steps,
        "train_steps_per_s": a.steps / total,
        "train_tokens_per_s": a.steps * a.batch * a.seq / total,
        "train_step_ms_median": sorted(times)[len(times) // 2] * 1e3,
        "train_step_ms_fastest": min(times) * 1e3,
        "warmup_step_ms": [t * 1e3 for t in warm],
        "last_loss": loss,
    }
    if a.compile:
        out["compile_s"] = warm[0]
    if a.gen_tokens > 0 and a.model in GENERATES and not a.compile:
        model.eval()

        @torch.no_grad()
        def gen(n):
            states = model.init_state(a.gen_batch, dev)
            tok = torch.zeros(a.gen_batch, 1, dtype=torch.long, device=dev)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                for _ in range(n):
                    logits = model(tok, states)
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
