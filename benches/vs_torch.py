#!/usr/bin/env python3
"""kiln against PyTorch eager on the same machine, in alternating rounds.

Runs `kiln bench` (the release binary) and `benches/torch_reference.py` on the same model, the
same batch and the same optimizer, alternating (kiln, torch, torch, kiln, ...) so that drift of
the machine's speed hits both alike, and prints each side's median over the rounds and the ratio
kiln / PyTorch (above 1: kiln is faster).

    cargo build --release
    python3 benches/vs_torch.py                     # CPU, 2 threads, 4 rounds
    python3 benches/vs_torch.py --rounds 6 --threads 2

Models: the bundled default (d 32, 2 layers) and the d 128, 4-layer one of `cargo bench --bench
train`. Both sides: constant learning rate 3e-3, AdamW (weight decay 0.01 on every parameter), no
gradient clipping, batch 32, vocabulary 5, cached greedy generation of 256 tokens for 4 sequences.
PyTorch runs on `--threads` threads; kiln on the rayon pool, which `RAYON_NUM_THREADS` sets to the
same number. Where torch is not installed the script says so and exits 0.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = [
    "train.schedule={type: constant}",
    "train.clip_grad_norm=null",
    "train.optimizer={type: adamw, lr: 3.0e-3, weight_decay: 0.01, decay_all: true}",
    "train.batch_size=32",
]
# (name, kiln --set overrides, torch_reference.py arguments, warm-up steps, timed steps)
MODELS = [
    (
        "default (d32, 2 layers, seq 65)",
        [],
        ["--d-model", "32", "--depth", "2", "--d-ff", "86", "--seq", "65"],
        10,
        100,
    ),
    (
        "d128, 4 layers, 4/2 heads, ff 344, seq 128",
        [
            "model.vars.d_model=128",
            "model.vars.depth=4",
            "model.vars.d_ff=344",
            "task.max_length=127",
        ],
        ["--d-model", "128", "--depth", "4", "--d-ff", "344", "--seq", "128"],
        3,
        16,
    ),
]


def run_json(cmd, env):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--python", default=sys.executable, help="the Python that has torch")
    p.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    a = p.parse_args()
    probe = subprocess.run([a.python, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        print(f"torch is not installed for {a.python}; nothing to compare (exit 0)")
        return
    if not Path(a.kiln).exists():
        sys.exit(f"{a.kiln} does not exist: run `cargo build --release` first")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    rows = []
    for name, sets, targs, warmup, steps in MODELS:
        kcmd = [a.kiln, "bench", "recipes/default.yaml", "--warmup", str(warmup)]
        kcmd += ["--steps", str(steps), "--gen-tokens", "256", "--gen-batch", "4"]
        for s in COMMON + sets:
            kcmd += ["--set", s]
        tcmd = [a.python, "benches/torch_reference.py", "--device", "cpu"]
        tcmd += ["--threads", str(a.threads), "--vocab", "5", "--batch", "32"]
        tcmd += ["--warmup", str(warmup), "--steps", str(steps), "--gen-tokens", "256"]
        tcmd += ["--gen-batch", "4"] + targs
        ks, ts = [], []
        for r in range(a.rounds):
            order = [("kiln", kcmd, ks), ("torch", tcmd, ts)]
            for side, cmd, acc in order if r % 2 == 0 else order[::-1]:
                j = run_json(cmd, env)
                acc.append(j)
                print(
                    f"  {name} round {r + 1} {side}: {j['train_steps_per_s']:.2f} steps/s, "
                    f"{j['gen_tokens_per_s']:.0f} gen tok/s",
                    file=sys.stderr,
                )
        if ks[0]["params"] != ts[0]["params"]:
            sys.exit(f"{name}: kiln has {ks[0]['params']} parameters, torch {ts[0]['params']}")
        med = lambda js, k: statistics.median(j[k] for j in js)
        rows.append(
            (
                name,
                ks[0]["params"],
                med(ks, "train_steps_per_s"),
                med(ts, "train_steps_per_s"),
                med(ks, "gen_tokens_per_s"),
                med(ts, "gen_tokens_per_s"),
            )
        )
    torch_version = ts[0]["reference"]
    print(f"kiln vs {torch_version}, CPU, {a.threads} threads, medians of {a.rounds} rounds")
    print(
        f"{'model':<44} {'params':>7} {'kiln st/s':>9} {'torch st/s':>10} {'ratio':>6} "
        f"{'kiln gen tok/s':>14} {'torch gen tok/s':>15} {'ratio':>6}"
    )
    for name, n, kt, tt, kg, tg in rows:
        print(
            f"{name:<44} {n:>7} {kt:>9.2f} {tt:>10.2f} {kt / tt:>6.2f} "
            f"{kg:>14.0f} {tg:>15.0f} {kg / tg:>6.2f}"
        )
    print("ratio: kiln ÷ PyTorch (above 1: kiln is faster)")


if __name__ == "__main__":
    main()
