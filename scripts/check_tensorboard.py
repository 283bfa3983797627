#!/usr/bin/env python3
"""Check kiln's TensorBoard event files with TensorBoard's own reader.

Usage:
  scripts/check_tensorboard.py DIR...       check every run in or below DIR (a run, a
                                            sweep, an ensemble and its members)
  scripts/check_tensorboard.py              train a tiny run, kill it after its first
                                            checkpoint, resume it, and check it

Each run directory is loaded with
tensorboard.backend.event_processing.event_accumulator.EventAccumulator and compared with what
kiln recorded in the directory: every number of metrics.jsonl as a scalar at its step, each
step once (a resumed run's older file is cut back to its checkpoint), and the texts `recipe`
and `graph` (TensorBoard's text plugin) holding recipe.resolved.yaml and graph.txt.

The tiny run uses the kiln binary at $KILN, else $CARGO_TARGET_DIR/debug/kiln, else
target/debug/kiln (build it with `cargo build`). Needs the PyPI package `tensorboard`; exits 0
with a message where it is not installed. Exits 1 when a check fails.
"""

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
except ImportError:
    print("check_tensorboard: the `tensorboard` package is not installed; nothing checked "
          "(pip install tensorboard)")
    sys.exit(0)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def numbers(prefix, v, out):
    """Every numeric leaf of a metrics.jsonl value, tagged as kiln tags it."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, (int, float)):
        out[prefix] = float(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            numbers(f"{prefix}/{k}", x, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            k = x.get("k") if isinstance(x, dict) else None
            numbers(f"{prefix}-{k}" if isinstance(k, int) else f"{prefix}/{i}", x, out)


def expected(run):
    """{tag: {step: value}} from metrics.jsonl."""
    want = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        step = rec["step"]
        vals = {}
        if "val_loss" in rec:
            vals["val/loss"] = rec["val_loss"]
            numbers("metrics", rec.get("task_metrics"), vals)
        else:
            for k, x in rec.items():
                if k != "step":
                    numbers(f"train/{k}", x, vals)
        for tag, x in vals.items():
            want.setdefault(tag, {})[step] = x
    return want


def same(a, b):
    b = float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def check_run(run):
    acc = ea.EventAccumulator(str(run), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    # An ensemble's own directory holds only its validation loss and metrics (its members'
    # directories hold their curves).
    trained = (run / "metrics.jsonl").exists()
    required = ["train/loss", "train/lr", "train/grad_norm", "val/loss"] if trained else ["val/loss"]
    for tag in required:
        check(tag in scalars, f"{run}: no scalar `{tag}` (has {sorted(scalars)})")
    checked = 0
    if trained:
        for tag, by_step in expected(run).items():
            check(tag in scalars, f"{run}: metrics.jsonl has `{tag}`, the events do not")
            events = acc.Scalars(tag)
            steps = [e.step for e in events]
            check(steps == sorted(set(steps)), f"{run}: `{tag}` steps repeat or go back: {steps}")
            got = {e.step: e.value for e in events}
            for step, x in by_step.items():
                check(step in got, f"{run}: `{tag}` lacks step {step}")
                check(same(got[step], x), f"{run}: `{tag}` at step {step}: {got[step]} vs {x}")
                checked += 1
    try:
        texts = acc.PluginTagToContent("text")
    except KeyError:  # no text at all (an ensemble member)
        texts = {}
    for tag, file in [("recipe", "recipe.resolved.yaml"), ("graph", "graph.txt")]:
        path = run / file
        if not path.exists():
            # An ensemble member: the ensemble's directory holds the run's texts.
            continue
        check(tag in texts, f"{run}: no text `{tag}` for the text plugin (has {sorted(texts)})")
        events = acc.Tensors(tag)
        check(len(events) == 1 and events[0].step == 0, f"{run}: `{tag}` once, at step 0")
        text = tensor_util.make_ndarray(events[0].tensor_proto).item().decode()
        check(path.read_text().rstrip() in text, f"{run}: text `{tag}` is not {file}")
    n_files = len([p for p in run.iterdir() if "tfevents" in p.name])
    print(f"ok: {run}: {n_files} event file(s); {len(scalars)} scalar tags, "
          f"{checked} values equal to metrics.jsonl; texts {sorted(texts)}")
    for tag in [t for t in ["train/loss", "val/loss"] if t in scalars]:
        e = acc.Scalars(tag)
        print(f"    {tag}: {len(e)} steps, {e[0].step}..{e[-1].step}, "
              f"first {e[0].value:.4f}, last {e[-1].value:.4f}")


def runs_in(path):
    """`path` and every directory below it that holds event files (as TensorBoard finds runs)."""
    if not path.is_dir():
        raise Failed(f"{path}: not a directory")
    found = False
    for d in [path] + sorted(p for p in path.rglob("*") if p.is_dir()):
        if any("tfevents" in p.name for p in d.iterdir() if p.is_file()):
            found = True
            yield d
    if not found:
        raise Failed(f"{path}: no event files here or below")


def kiln_binary():
    if os.environ.get("KILN"):
        return Path(os.environ["KILN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "kiln"


def tiny_run(out):
    """Train a tiny run, SIGKILL it after its first checkpoint, resume it."""
    kiln = kiln_binary()
    if not kiln.exists():
        raise Failed(f"no kiln binary at {kiln}: build it (cargo build) or set KILN")
    sets = ["task.max_length=16", "model.vars.depth=1", "train.steps=200",
            "train.checkpoint_every=10", "train.eval_every=20",
            "train.schedule.warmup_steps=20"]
    cmd = [str(kiln), "train", "recipes/default.yaml", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    start = time.time()
    while not (out / "checkpoint.safetensors").exists() and child.poll() is None:
        if time.time() - start > 300:
            break
        time.sleep(0.005)
    killed = child.poll() is None
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    if killed and not (out / "checkpoint.safetensors").exists():
        raise Failed(f"kiln train wrote no checkpoint within 300 s; killed:\n{err}")
    if not killed and child.returncode != 0:
        raise Failed(f"kiln train failed:\n{err}")
    print(f"tiny run: {'killed after its first checkpoint' if killed else 'finished before the kill'}"
          f", resumed")
    r = subprocess.run([str(kiln), "train", "--resume", str(out)], cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise Failed(f"kiln train --resume failed:\n{r.stderr}")


def main():
    args = [Path(a) for a in sys.argv[1:]]
    try:
        if not args:
            with tempfile.TemporaryDirectory(prefix="kiln-tb-") as tmp:
                run = Path(tmp) / "run"
                tiny_run(run)
                check_run(run)
        for a in args:
            for run in runs_in(a):
                check_run(run)
    except Failed as e:
        print(f"check_tensorboard: FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
