#!/usr/bin/env python3
"""kiln against PyTorch (eager and torch.compile) on every bundled model family, in alternating
rounds on the same machine.

Each row trains one model for a few steps three ways: `kiln bench RECIPE` (the release binary),
its PyTorch twin in eager mode and the same twin under `torch.compile`
(`benches/torch_reference.py --model FAMILY [--compile]`; the twins are in
benches/torch_twins/). The three run one after the other, in the opposite order every second
round, so that drift of the machine's speed hits all alike; the table shows each side's median
training speed over the rounds and the ratios kiln ÷ eager and kiln ÷ compile (above 1: kiln is
faster), plus cached greedy generation (kiln ÷ eager) where both sides decode from a cache or a
recurrent state. The script stops if kiln and the twin differ in parameter count, batch or
sequence length.

Rows: every bundled family at its bundled recipe's size (the recipe's model, task.max_length and
batch size; vocabulary 5 of aⁿbⁿ), and the rule-extrapolation paper's sizes for its five families
(task.max_length 256, batch 128: the post-LN Transformer of recipes/anbn-transformer-paper.yaml,
the LSTM, Mamba with 10 blocks, xLSTM at width 64 with 6 blocks, the position-wise linear model
over 257 positions). Both sides: AdamW (lr 3e-3, weight decay 0.01 on every parameter) at a
constant learning rate, no gradient clipping, cross-entropy over all positions, the model's own
dropout, random tokens. PyTorch runs on `--threads` threads; kiln on the rayon pool, which
`RAYON_NUM_THREADS` sets to the same number. torch.compile's compilation happens in the
warm-up; its time (`compile_s`, the first step's) is shown apart, the first round's being a cold
compile unless the inductor cache (/tmp/torchinductor_$USER) already holds the graphs.
Generation is measured in eager mode only.

    cargo build --release
    python3 benches/vs_torch.py --python /tmp/torchenv/bin/python            # the whole matrix, 2 rounds
    python3 benches/vs_torch.py --python /tmp/torchenv/bin/python --markdown # ... as a markdown table
    python3 benches/vs_torch.py --only paper --rounds 3 --no-compile         # rows whose name has "paper"
    python3 benches/vs_torch.py --check                                      # 1 step each: rows work, counts match
    python3 benches/vs_torch.py --list                                       # the rows
    python3 benches/vs_torch.py --long --markdown                            # long sequences

On a 2-core CPU the whole matrix with 2 rounds takes about 25 minutes (the paper Transformer
alone about 6). Where torch is not installed for `--python` the script says so and exits 0.
See docs/reference/benchmarks.md.
"""

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = [
    "train.schedule={type: constant}",
    "train.clip_grad_norm=null",
    "train.optimizer={type: adamw, lr: 3.0e-3, weight_decay: 0.01, decay_all: true}",
]
PAPER = ["task.max_length=256", "train.batch_size=128"]


@dataclass
class Row:
    name: str
    recipe: str
    twin: str
    seq: int  # tokens per training sequence: task.max_length + 1
    batch: int
    warmup: int
    steps: int
    sets: list = field(default_factory=list)  # kiln --set; model.vars.X=Y also go to the twin
    gen: bool = True  # both sides decode from a cache / recurrent state
    vocab: int = 5  # the task's vocabulary (aⁿbⁿ's unless the row trains on a uint16 stream)


ROWS = [
    # The bundled recipes at their own sizes (max_length 64, batch 32).
    Row("transformer-modern (default)", "recipes/default.yaml", "transformer-modern", 65, 32, 10, 100),
    Row("transformer-modern d128 (4 layers, seq 128)", "recipes/default.yaml", "transformer-modern",
        128, 32, 3, 16, ["task.max_length=127", "model.vars.d_model=128", "model.vars.depth=4",
                         "model.vars.d_ff=344"]),
    Row("transformer-memory", "recipes/anbn-memory.yaml", "transformer-memory", 65, 32, 10, 100),
    Row("transformer-hard", "recipes/anbn-hard-attention.yaml", "transformer-hard", 65, 32, 5, 40),
    Row("transformer-adaptive", "recipes/default.yaml", "transformer-adaptive", 65, 32, 10, 100,
        ["model=../models/transformer-adaptive.yaml"]),
    Row("lstm", "recipes/anbn-lstm.yaml", "lstm", 65, 32, 5, 60),
    Row("mamba (4 blocks)", "recipes/anbn-mamba.yaml", "mamba", 65, 32, 2, 8),
    Row("xlstm", "recipes/anbn-xlstm.yaml", "xlstm", 65, 32, 3, 15),
    Row("linear", "recipes/anbn-linear.yaml", "linear", 65, 32, 10, 200, gen=False),
    Row("retnet", "recipes/anbn-retnet.yaml", "retnet", 65, 32, 3, 30),
    Row("gfnet-causal", "recipes/anbn-gfnet-frequency.yaml", "gfnet-causal", 65, 32, 3, 20,
        ["train.frequency_curriculum=null"], gen=False),
    Row("ets", "recipes/anbn-ets.yaml", "ets", 65, 32, 3, 30),
    Row("wave", "recipes/anbn-wave.yaml", "wave", 65, 32, 3, 20),
    # The rule-extrapolation paper's sizes (max_length 256, batch 128).
    Row("paper transformer-postln", "recipes/anbn-transformer-paper.yaml", "transformer-postln",
        257, 128, 1, 3),
    Row("paper lstm", "recipes/anbn-lstm.yaml", "lstm", 257, 128, 1, 6, PAPER),
    Row("paper mamba (10 blocks)", "recipes/anbn-mamba.yaml", "mamba", 257, 128, 1, 1,
        PAPER + ["model.vars.depth=10"]),
    Row("paper xlstm (d 64, 6 blocks)", "recipes/anbn-xlstm.yaml", "xlstm", 257, 128, 1, 2,
        PAPER + ["model.vars.d_model=64", "model.vars.depth=6"]),
    Row("paper linear", "recipes/anbn-linear.yaml", "linear", 257, 128, 2, 20,
        PAPER + ["model.vars.max_len=257"], gen=False),
]

# Long sequences (`--long`): one block of the modern Transformer at width 64 (4 heads of 16
# features, as benches/scaling.rs) on the uint16 stream's vocabulary of 64; its attention through the
# fused kernel in kiln, `F.scaled_dot_product_attention`'s memory-efficient CPU kernel in the
# twin), batch 1, no generation; kiln trains on a PRNG stream, the twin on random tokens.
LONG_ROWS = [
    Row(f"long: transformer-modern, 1 block, {n} positions", "recipes/uint16-prng.yaml",
        "transformer-modern", n, 1, w, k, [f"task.context={n}", "train.batch_size=1",
                                           "model.vars.depth=1", "model.vars.d_model=64"],
        gen=False, vocab=64)
    for n, w, k in [(4096, 1, 3), (16384, 1, 1), (65536, 0, 1)]
]


def default_kiln():
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return str(Path(target) / "release" / "kiln")


def run_json(cmd, env):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def commands(row, a, warmup, steps, gen_tokens):
    gen_tokens = gen_tokens if row.gen else 0
    kcmd = [a.kiln, "bench", row.recipe, "--warmup", str(warmup), "--steps", str(steps)]
    kcmd += ["--gen-tokens", str(gen_tokens), "--gen-batch", "4"]
    for s in COMMON + row.sets:
        kcmd += ["--set", s]
    tcmd = [a.python, "benches/torch_reference.py", "--model", row.twin, "--device", "cpu"]
    tcmd += ["--threads", str(a.threads), "--vocab", str(row.vocab), "--batch", str(row.batch)]
    tcmd += ["--seq", str(row.seq), "--warmup", str(warmup), "--steps", str(steps)]
    tcmd += ["--gen-tokens", str(gen_tokens), "--gen-batch", "4"]
    for s in row.sets:
        if s.startswith("model.vars."):
            tcmd += ["--var", s[len("model.vars."):]]
    return kcmd, tcmd


def check_twin(row, k, t):
    """The twin must train the same model on the same shapes."""
    seq = round(k["train_tokens_per_s"] / k["train_steps_per_s"] / k["batch"])
    problems = []
    if k["params"] != t["params"]:
        problems.append(f"kiln has {k['params']} parameters, the twin {t['params']}")
    if k["batch"] != row.batch:
        problems.append(f"kiln's batch is {k['batch']}, the row says {row.batch}")
    if seq != row.seq:
        problems.append(f"kiln trains on {seq} tokens per sequence, the row says {row.seq}")
    if problems:
        sys.exit(f"{row.name}: " + "; ".join(problems))


def fmt_ms(steps_per_s):
    ms = 1e3 / steps_per_s
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="run the rows whose name contains this")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--check", action="store_true",
                   help="one round of 1 warm-up + 1 timed step and 4 generated tokens per row: "
                        "every row runs and the parameter counts match (timings meaningless)")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--long", action="store_true",
                   help="the long-sequence rows (batch 1, 4 096 to 65 536 positions) instead")
    p.add_argument("--python", default=sys.executable, help="the Python that has torch")
    p.add_argument("--kiln", default=default_kiln(), help="the release binary")
    a = p.parse_args()
    rows = [r for r in (LONG_ROWS if a.long else ROWS) if a.only in r.name]
    if a.list:
        for r in rows:
            sets = " ".join(f"--set {s}" for s in r.sets)
            print(f"{r.name:<30} {r.recipe} {sets}  (seq {r.seq}, batch {r.batch}, "
                  f"{r.warmup}+{r.steps} steps, twin {r.twin})")
        return
    if not rows:
        sys.exit(f"no row's name contains {a.only!r} (see --list)")
    probe = subprocess.run([a.python, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        print(f"torch is not installed for {a.python}; nothing to compare (exit 0)")
        return
    if not Path(a.kiln).exists():
        sys.exit(f"{a.kiln} does not exist: run `cargo build --release` first")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if a.long:
        # A stream long enough for one window of 65 536 values in its validation part (10 %).
        stream = Path(tempfile.gettempdir()) / f"kiln-vs-torch-{os.getpid()}.u16"
        atexit.register(lambda: stream.unlink(missing_ok=True))
        subprocess.run([a.kiln, "data", "generate", "prng", "--values", "700000", "--out",
                        str(stream)], check=True, capture_output=True)
        for r in rows:
            r.sets = r.sets + [f"task.path={stream}"]
    rounds = 1 if a.check else a.rounds
    results = []
    torch_version = "pytorch"
    for row in rows:
        warmup, steps, gen = (1, 1, 4) if a.check else (row.warmup, row.steps, 256)
        kcmd, tcmd = commands(row, a, warmup, steps, gen)
        sides = [("kiln", kcmd), ("eager", tcmd)]
        if not a.no_compile:
            # The compiled twin: no generation (measured in eager mode), at least one warm-up.
            ccmd = tcmd + ["--compile"]
            ccmd[ccmd.index("--gen-tokens") + 1] = "0"
            sides.append(("compile", ccmd))
        got = {side: [] for side, _ in sides}
        for r in range(rounds):
            for side, cmd in sides if r % 2 == 0 else sides[::-1]:
                j = run_json(cmd, env)
                got[side].append(j)
                extra = f", compile {j['compile_s']:.1f} s" if "compile_s" in j else ""
                gen_s = f", {j['gen_tokens_per_s']:.0f} gen tok/s" if "gen_tokens_per_s" in j else ""
                print(f"  {row.name} round {r + 1} {side}: {fmt_ms(j['train_steps_per_s'])} ms/step"
                      f"{gen_s}{extra}", file=sys.stderr)
        check_twin(row, got["kiln"][0], got["eager"][0])
        torch_version = got["eager"][0]["reference"].rsplit(" ", 1)[0]
        med = lambda side, k: statistics.median(j[k] for j in got[side]) if side in got else None  # noqa: E731
        results.append({
            "row": row,
            "params": got["kiln"][0]["params"],
            "kiln": med("kiln", "train_steps_per_s"),
            "eager": med("eager", "train_steps_per_s"),
            "compile": med("compile", "train_steps_per_s"),
            "compile_s": max(j["compile_s"] for j in got["compile"]) if "compile" in got else None,
            "kiln_gen": med("kiln", "gen_tokens_per_s") if row.gen else None,
            "eager_gen": med("eager", "gen_tokens_per_s") if row.gen else None,
        })
    title = (f"kiln vs {torch_version}, CPU, {a.threads} threads, training ms/step (medians of "
             f"{rounds} rounds{', CHECK RUN: 1 step, timings meaningless' if a.check else ''})")
    head = ["model", "params", "kiln", "eager", "compile", "kiln/eager", "kiln/compile",
            "compile s", "gen kiln tok/s", "gen eager tok/s", "gen kiln/eager"]
    table = []
    for x in results:
        c = x["compile"]
        g = x["kiln_gen"] is not None and x["eager_gen"] is not None
        table.append([
            x["row"].name, f"{x['params']:,}", fmt_ms(x["kiln"]), fmt_ms(x["eager"]),
            fmt_ms(c) if c else "-",
            f"{x['kiln'] / x['eager']:.2f}",
            f"{x['kiln'] / c:.2f}" if c else "-",
            f"{x['compile_s']:.0f}" if c else "-",
            f"{x['kiln_gen']:.0f}" if g else "-",
            f"{x['eager_gen']:.0f}" if g else "-",
            f"{x['kiln_gen'] / x['eager_gen']:.2f}" if g else "-",
        ])
    print(title)
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        for t in table:
            print("| " + " | ".join(t) + " |")
    else:
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
        for t in table:
            print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
    print("ratios: kiln's speed ÷ PyTorch's (above 1: kiln is faster); compile s: the slowest "
          "first (compiling) step over the rounds")


if __name__ == "__main__":
    main()
