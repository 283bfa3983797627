#!/usr/bin/env python3
"""kiln's decoding against Hugging Face transformers 4.46 `generate` on the same scripted logits.

A tiny `PreTrainedModel` + `GenerationMixin` returns, after each sequence, a fixed row of a logit
table chosen by a hash of every token so far (so the logits depend on the step and on the
tokens); kiln's side is `examples/decode_script.rs`, which runs `kiln::decode` on the same table
with the same hash. Each case runs both and compares:

- greedy, beam search, diverse (group) beam search: the returned sequences token for token
  (and the beam scores, to 1e-5);
- sampling and beam sampling, whose random draws cannot be shared across the two libraries: the
  processed scores (after every processor and warper, as `output_scores` returns them) at every
  step of transformers' run, recomputed by kiln for the same sequences: the same tokens removed
  (−∞) and the others equal to 1e-5. kiln's own sampled sequences are run too.

    cargo build --example decode_script
    python3 benches/vs_transformers.py            # every case, a table, exit 1 on a mismatch
    python3 benches/vs_transformers.py -k beam -v # cases whose name contains "beam", verbose
    python3 benches/vs_transformers.py --random 2000  # and every warper on 8000 random rows

Needs `torch` and `transformers==4.46.*` (for instance in a virtual environment:
`python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch numpy 'transformers==4.46.3'`,
then run it with /tmp/hfenv/bin/python). Where they are not installed it says so and exits 0.
Neither is a dependency of kiln or of its tests.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
V = 8  # vocabulary of the scripted model
EOS = 0
PAD = V - 1  # an ordinary token too: transformers feeds PAD back to the model
TOL = 1e-5


def row_of(seq, n, key):
    """The table row after `seq` (the same function as examples/decode_script.rs)."""
    if key == "last":
        return seq[-1] % n
    h = 0
    for t in seq:
        h = (h * 31 + t + 1) % n
    return h


def make_table(seed, rows, scale=2.0, eos_bias=0.0):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = (rng.standard_normal((rows, V)) * scale).astype(np.float32)
    t[:, EOS] += np.float32(eos_bias)
    return [[float(x) for x in r] for r in t]


# The table of the tied-hypotheses case (row = last token): vocab {EOS, a, b, c, ...}; a and b
# tie, a → EOS and b → c → EOS are certain; with length_penalty 0 both hypotheses score ln ½.
NEG = -1e4
TIE_TABLE = [[NEG] * V for _ in range(V)]
for _r in range(V):
    TIE_TABLE[_r][EOS] = 0.0
TIE_TABLE[5] = [NEG, 0.0, 0.0] + [NEG] * (V - 3)  # after the prompt [5]
TIE_TABLE[2] = [NEG, NEG, NEG, 0.0] + [NEG] * (V - 4)  # after b: c

# The −∞ case (row = last token, no EOS): after the prompt [0] tokens 2 then 1 are best; after 1
# every token is a bad word, after 2 and after 3 every token but 3. The second beam has no finite
# candidate at step 2 and goes on at −∞.
INF_TABLE = [[0.0] * V for _ in range(V)]
INF_TABLE[0] = [-10.0, 1.0, 1.5] + [-10.0] * (V - 3)
INF_BAD = [[1, t] for t in range(V)] + [[a, t] for a in (2, 3) for t in range(V) if t != 3]


def case(name, strategy, decode, prompts, table, key="hash", eos=EOS, note="", inf_tokens=True):
    """`inf_tokens=False`: the tokens of sequences that score −∞ are not compared (only their
    score): they are whichever of equal (−∞) candidates torch.topk lists first, an order its CPU
    selection algorithm leaves unspecified (kiln takes them in flat index order)."""
    return dict(
        name=name, strategy=strategy, decode=decode, prompts=prompts, table=table, key=key,
        eos=eos, note=note, inf_tokens=inf_tokens,
    )


def cases():
    t1 = make_table(1, 97, eos_bias=-1.0)
    t2 = make_table(2, 89, scale=1.0, eos_bias=0.5)
    t3 = make_table(3, 101, scale=3.0, eos_bias=-2.0)
    P2 = [[3, 4, 1], [2, 5, 6]]
    # Peaked rows, but flat after the prompts (so beam sampling has 2·num_beams tokens to draw
    # at its first step, where transformers' multinomial needs them).
    t4 = make_table(4, 97, scale=4.0)
    for prompt in P2:
        t4[row_of(prompt, 97, "hash")] = [0.0] * V
    P1 = [[1, 2]]
    mn = {"max_new_tokens": 8}
    out = [
        case("greedy", "greedy", {**mn}, P2, t1),
        case("greedy, no EOS", "greedy", {**mn}, P2, t1, eos=None),
        case("greedy, repetition_penalty 1.3", "greedy", {**mn, "repetition_penalty": 1.3}, P2, t1),
        case("greedy, repetition_penalty 0.7", "greedy", {**mn, "repetition_penalty": 0.7}, P2, t2),
        case("greedy, no_repeat_ngram_size 2", "greedy", {**mn, "no_repeat_ngram_size": 2}, P2, t1),
        case("greedy, no_repeat_ngram_size 1", "greedy", {**mn, "no_repeat_ngram_size": 1}, P2, t3),
        case("greedy, bad_words_ids", "greedy",
             {**mn, "bad_words_ids": [[1], [3, 4, 2], [0], [6, 5]]}, P2, t1),
        case("greedy, bad word [eos]", "greedy", {**mn, "bad_words_ids": [[0]]}, P2, t1,
             note="issue 19 (b): ignored"),
        case("greedy, bad word longer than the sequence", "greedy",
             {**mn, "bad_words_ids": [[3, 4, 1, 4]]}, P2, t1, note="issue 19 (b): skipped"),
        case("greedy, min_length 9", "greedy", {**mn, "min_length": 9}, P2, t2),
        case("greedy, min_new_tokens 5", "greedy", {**mn, "min_new_tokens": 5}, P2, t2),
        case("greedy, max_length 7", "greedy", {"max_length": 7}, P2, t1),
        case("beam 4, 4 returned", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 4}, P2, t2),
        case("beam 3, no EOS", "beam",
             {**mn, "num_beams": 3, "num_return_sequences": 3}, P2, t1, eos=None),
        case("beam 4, length_penalty 0", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.0}, P2, t2),
        case("beam 4, length_penalty -1", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 2, "length_penalty": -1.0}, P2, t2),
        case("beam 4, length_penalty 2", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 2, "length_penalty": 2.0}, P2, t2),
        case("beam 4, early_stopping true", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 3, "early_stopping": True}, P2, t2),
        case("beam 4, early_stopping never", "beam",
             {**mn, "num_beams": 4, "num_return_sequences": 3, "early_stopping": "never"}, P2, t2),
        case("beam 4, never, length_penalty 0", "beam",
             {**mn, "num_beams": 4, "early_stopping": "never", "length_penalty": 0.0}, P2, t2),
        case("beam 3, penalties, n-grams, bad words, min_new_tokens", "beam",
             {**mn, "num_beams": 3, "num_return_sequences": 3, "repetition_penalty": 1.5,
              "no_repeat_ngram_size": 2, "bad_words_ids": [[4], [1, 2]], "min_new_tokens": 3},
             P2, t2),
        case("beam 2, min_length", "beam",
             {**mn, "num_beams": 2, "num_return_sequences": 2, "min_length": 7}, P2, t3),
        case("beam 2, tied hypotheses", "beam",
             {"max_new_tokens": 5, "num_beams": 2, "num_return_sequences": 2,
              "length_penalty": 0.0}, [[5]], TIE_TABLE, key="last",
             note="issue 19 (d): the later of two equal hypotheses first"),
        case("beam 2, a beam at −∞, best returned", "beam",
             {"max_new_tokens": 3, "num_beams": 2, "bad_words_ids": INF_BAD}, [[0]], INF_TABLE,
             key="last", eos=None, note="issue 19 (e)"),
        case("beam 2, a beam at −∞, both returned", "beam",
             {"max_new_tokens": 3, "num_beams": 2, "num_return_sequences": 2,
              "bad_words_ids": INF_BAD}, [[0]], INF_TABLE, key="last", eos=None,
             note="issue 19 (e); the −∞ beam's tokens are not compared", inf_tokens=False),
        case("group beam 4/2, diversity 0.5", "group_beam",
             {**mn, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5,
              "num_return_sequences": 4}, P2, t2),
        case("group beam 6/3, diversity 1.5", "group_beam",
             {**mn, "num_beams": 6, "num_beam_groups": 3, "diversity_penalty": 1.5,
              "num_return_sequences": 3}, P2, t1),
        case("group beam 4/4, diversity 3, no EOS", "group_beam",
             {**mn, "num_beams": 4, "num_beam_groups": 4, "diversity_penalty": 3.0,
              "num_return_sequences": 2}, P1, t3, eos=None),
        case("group beam 4/2, early_stopping true, rep. penalty", "group_beam",
             {**mn, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0,
              "early_stopping": True, "repetition_penalty": 1.2}, P2, t2),
    ]
    sm = {**mn, "top_k": 0}
    out += [
        case("sample, temperature 0.7", "sample", {**sm, "temperature": 0.7}, P2, t1),
        case("sample, top_k 3", "sample", {**sm, "top_k": 3}, P2, t1),
        case("sample, top_p 0.8", "sample", {**sm, "top_p": 0.8}, P2, t2),
        case("sample, top_p 0.6, uniform", "sample", {**sm, "top_p": 0.6}, P2,
             [[0.0] * V], note="issue 19 (c): cumulative 0.4 against 1 − 0.6"),
        case("sample, min_p 0.2", "sample", {**sm, "min_p": 0.2}, P2, t1),
        case("sample, typical_p 0.7", "sample", {**sm, "typical_p": 0.7}, P2, t3),
        case("sample, everything", "sample",
             {**sm, "temperature": 1.3, "top_k": 6, "top_p": 0.9, "min_p": 0.05,
              "typical_p": 0.95, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3,
              "bad_words_ids": [[2, 3]], "min_new_tokens": 2}, P2, t2),
        case("sample, 3 returned", "sample",
             {**sm, "top_p": 0.9, "num_return_sequences": 3}, P2, t1),
        case("beam sample 2, no EOS, top_k 2", "beam_sample",
             {**sm, "num_beams": 2, "top_k": 2, "num_return_sequences": 2}, P2, t1, eos=None,
             note="issue 19 (a): min_tokens_to_keep 2, 2·num_beams draws"),
        case("beam sample 2, min_p 0.9, flat first step", "beam_sample",
             {**sm, "num_beams": 2, "min_p": 0.9, "num_return_sequences": 2}, P2, t4,
             note="issue 19 (a): min_p keeps one token, min_tokens_to_keep two"),
        case("beam sample 2, top_p 0.5", "beam_sample",
             {**sm, "num_beams": 2, "top_p": 0.5}, P2, t2),
        case("beam sample 2, temperature 0.5, min_p 0.3", "beam_sample",
             {**sm, "num_beams": 2, "temperature": 0.5, "min_p": 0.3}, P2, t3),
    ]
    return out


def hf_generate(c, torch, transformers):
    from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    table = torch.tensor(c["table"], dtype=torch.float32)
    calls = []

    class ScriptConfig(PretrainedConfig):
        model_type = "kiln_script"

    class ScriptLM(PreTrainedModel, GenerationMixin):
        config_class = ScriptConfig

        def __init__(self, config):
            super().__init__(config)
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, **kwargs):
            calls.append(input_ids.clone())
            rows = [row_of(s, len(c["table"]), c["key"]) for s in input_ids.tolist()]
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], V)
            logits[:, -1, :] = table[rows]
            return CausalLMOutput(logits=logits)

        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            return {"input_ids": input_ids}

    model = ScriptLM(ScriptConfig(vocab_size=V))
    d = c["decode"]
    strategy = c["strategy"]
    g = dict(
        do_sample=strategy in ("sample", "beam_sample"),
        num_beams=d.get("num_beams", 1),
        num_beam_groups=d.get("num_beam_groups", 1),
        diversity_penalty=d.get("diversity_penalty", 0.0),
        length_penalty=d.get("length_penalty", 1.0),
        early_stopping=d.get("early_stopping", False),
        num_return_sequences=d.get("num_return_sequences", 1),
        temperature=d.get("temperature", 1.0),
        top_k=d.get("top_k", 50),
        top_p=d.get("top_p", 1.0),
        min_p=d.get("min_p"),
        typical_p=d.get("typical_p", 1.0),
        repetition_penalty=d.get("repetition_penalty", 1.0),
        no_repeat_ngram_size=d.get("no_repeat_ngram_size", 0),
        bad_words_ids=d.get("bad_words_ids") or None,
        min_length=d.get("min_length", 0),
        min_new_tokens=d.get("min_new_tokens"),
        max_new_tokens=d.get("max_new_tokens"),
        eos_token_id=c["eos"],
        pad_token_id=PAD,
        use_cache=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    if "max_length" in d:
        g["max_length"] = d["max_length"]
    ids = torch.tensor(c["prompts"], dtype=torch.long)
    torch.manual_seed(0)
    res = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(**g))
    return res, calls


def run_kiln(binary, spec):
    out = subprocess.run([binary], input=json.dumps(spec), capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"decode_script failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def kiln_spec(c, mode, **extra):
    d = dict(c["decode"], strategy=c["strategy"])
    if c["eos"] is not None:
        d["eos_token_id"] = c["eos"]
    d["pad_token_id"] = PAD
    spec = dict(decode=d, eos=c["eos"], pad=PAD, default_max_length=20, table=c["table"], mode=mode)
    if c["key"] == "last":
        spec["key"] = "last"
    spec.update(extra)
    return spec


def compare_tokens(c, res, kiln):
    hf = res.sequences.tolist()
    n_ret = c["decode"].get("num_return_sequences", 1)
    kseqs = [g for per in kiln["sequences"] for g in per]
    if len(kseqs) != len(hf):
        return False, f"{len(kseqs)} sequences from kiln, {len(hf)} from transformers"
    width = len(hf[0])
    bad = []
    scores = getattr(res, "sequences_scores", None)
    skipped = 0
    for i, (h, k) in enumerate(zip(hf, kseqs)):
        if not c["inf_tokens"] and scores is not None and math.isinf(scores[i].item()):
            skipped += 1
            continue
        kt = k["tokens"] + [PAD] * (width - len(k["tokens"]))
        if kt != h:
            bad.append(f"row {i}: kiln {k['tokens']} vs transformers {h}")
    worst = 0.0
    if scores is not None and c["strategy"] != "greedy":
        for i, (s, k) in enumerate(zip(scores.tolist(), kseqs)):
            ks = -math.inf if k["score"] is None else k["score"]
            if math.isinf(s) or math.isinf(ks):
                if s != ks:
                    bad.append(f"row {i}: score kiln {ks} vs transformers {s}")
                continue
            worst = max(worst, abs(s - ks))
            if abs(s - ks) > TOL * max(1.0, abs(s)):
                bad.append(f"row {i}: score kiln {ks} vs transformers {s}")
    detail = f"{len(hf)} sequences of {n_ret} per prompt; max |Δscore| {worst:.1e}"
    if skipped:
        detail += f"; tokens of {skipped} at −∞ not compared"
    return not bad, "; ".join(bad) if bad else detail


def compare_scores(c, res, calls, binary):
    prompt_len = len(c["prompts"][0])
    rows, hf = [], []
    for step, (ids, sc) in enumerate(zip(calls, res.scores)):
        for seq, s in zip(ids.tolist(), sc.tolist()):
            rows.append({"seq": seq, "prompt_len": prompt_len})
            hf.append(s)
    kiln = run_kiln(binary, kiln_spec(c, "process", rows=rows,
                                      log_softmax=c["strategy"] == "beam_sample"))["scores"]
    worst, bad = 0.0, []
    for i, (h, k) in enumerate(zip(hf, kiln)):
        k = [-math.inf if x is None else x for x in k]
        hm = [math.isinf(x) for x in h]
        km = [math.isinf(x) for x in k]
        if hm != km:
            bad.append(f"row {i} {rows[i]['seq']}: kept {[not x for x in km]} vs {[not x for x in hm]}")
            continue
        for x, y in zip(h, k):
            if not math.isinf(x):
                worst = max(worst, abs(x - y))
                if abs(x - y) > TOL * max(1.0, abs(x)):
                    bad.append(f"row {i}: {k} vs {h}")
                    break
    # kiln's own run: every token it drew must be one its processors kept for that prefix.
    own = run_kiln(binary, kiln_spec(c, "generate", prompts=c["prompts"]))
    seqs = [g["tokens"] for per in own["sequences"] for g in per]
    prefixes, drawn = [], []
    for q in seqs:
        for t in range(prompt_len, len(q)):
            prefixes.append({"seq": q[:t], "prompt_len": prompt_len})
            drawn.append(q[t])
            if q[t] == c["eos"]:
                break
    mine = run_kiln(binary, kiln_spec(c, "process", rows=prefixes,
                                      log_softmax=c["strategy"] == "beam_sample"))["scores"]
    outside = sum(sc[t] is None for sc, t in zip(mine, drawn))
    if outside:
        bad.append(f"kiln drew {outside} of {len(drawn)} tokens its processors removed")
    detail = f"{len(rows)} rows over {len(calls)} steps; max |Δ| {worst:.1e}; kiln's own " + \
        f"{len(seqs)} sequences drew {len(drawn)} kept tokens"
    if bad:
        return False, "; ".join(bad[:3]) + (f" (+{len(bad) - 3})" if len(bad) > 3 else "")
    return True, detail


def random_rows(binary, n, vocab, seed):
    """Every warper setting on `n` random rows of each of four kinds (Gaussian, half-integer with
    ties, Dirichlet log-probabilities, a few equal tokens), kiln's processed scores against the
    transformers warper applied to the same row. Returns (setting, rows that differ per kind, rows
    per kind)."""
    import numpy as np
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(seed)
    kinds = [
        rng.standard_normal((n, vocab)) * 2,
        np.round(rng.standard_normal((n, vocab)) * 2) / 2,
        np.maximum(np.log(rng.dirichlet(np.ones(vocab) * 0.5, n)), -80),
    ]
    flat = np.zeros((n, vocab))
    for i in range(n):
        flat[i, : rng.integers(1, vocab + 1)] = rng.integers(0, 3) * 0.5
    table = np.concatenate(kinds + [flat]).astype(np.float32).tolist()
    settings = []
    for mk in (1, 2):
        for v in (0.3, 0.6, 0.8, 0.95):
            settings.append(({"top_p": v}, [lp.TopPLogitsWarper(v, min_tokens_to_keep=mk)], mk))
            settings.append(({"typical_p": v}, [lp.TypicalLogitsWarper(v, min_tokens_to_keep=mk)], mk))
    for v in (0.05, 0.3, 0.9):
        settings.append(({"min_p": v}, [lp.MinPLogitsWarper(v)], 1))
    for v in (1, 3):
        settings.append(({"top_k": v}, [lp.TopKLogitsWarper(v)], 1))
    for v in (0.7, 1.3):
        settings.append(({"temperature": v, "top_p": 0.8},
                         [lp.TemperatureLogitsWarper(v), lp.TopPLogitsWarper(0.8)], 1))
    out = []
    rows = [{"seq": [i], "prompt_len": 1} for i in range(len(table))]
    for d, procs, mk in settings:
        strategy = {"strategy": "beam_sample", "num_beams": 2} if mk == 2 else {"strategy": "sample"}
        spec = dict(decode=dict({"top_k": 0}, **d, **strategy), eos=None, pad=0,
                    default_max_length=20, table=table, mode="process", rows=rows, key="last")
        kiln = run_kiln(binary, spec)["scores"]
        x = torch.tensor(table)
        ids = torch.zeros(len(table), 1, dtype=torch.long)
        for p in procs:
            x = p(ids, x)
        differ = [0, 0, 0, 0]
        for i, (h, k) in enumerate(zip(x.tolist(), kiln)):
            k = [-math.inf if v is None else v for v in k]
            if [math.isinf(v) for v in h] != [math.isinf(v) for v in k] or any(
                abs(a - b) > TOL * max(1.0, abs(a)) for a, b in zip(h, k) if not math.isinf(a)
            ):
                differ[i // n] += 1
        name = ", ".join(f"{k} {v}" for k, v in d.items()) + f", min_tokens_to_keep {mk}"
        out.append((name, differ, n))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kiln", default=str(ROOT / "target" / "debug" / "examples" / "decode_script"),
                   help="the decode_script example (cargo build --example decode_script)")
    p.add_argument("-k", default="", help="only cases whose name contains this")
    p.add_argument("-v", action="store_true", help="print each case's details")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="also compare every warper on 4·N random rows (ties included)")
    p.add_argument("--vocab", type=int, default=8,
                   help="vocabulary of the random rows (above 16, torch's CPU sort orders "
                        "equal scores its own way)")
    a = p.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"vs_transformers: {e.name} is not installed; nothing to compare (exit 0). "
              "Install torch and transformers==4.46.3 to run the differential check.")
        return 0
    if not transformers.__version__.startswith("4.46."):
        print(f"vs_transformers: transformers {transformers.__version__} is installed; kiln claims "
              "the semantics of 4.46 (install transformers==4.46.3); nothing compared (exit 0)")
        return 0
    if not Path(a.kiln).exists():
        print(f"{a.kiln} does not exist: run `cargo build --example decode_script` first",
              file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    results = []
    for c in cases():
        if a.k not in c["name"]:
            continue
        try:
            res, calls = hf_generate(c, torch, transformers)
            if c["strategy"] in ("sample", "beam_sample"):
                ok, detail = compare_scores(c, res, calls, a.kiln)
                what = "processed scores"
            else:
                kiln = run_kiln(a.kiln, kiln_spec(c, "generate", prompts=c["prompts"]))
                ok, detail = compare_tokens(c, res, kiln)
                what = "tokens + scores"
        except Exception as e:  # a case that fails on either side is a disagreement
            ok, detail, what = False, f"{type(e).__name__}: {e}", "-"
        results.append(dict(name=c["name"], strategy=c["strategy"], compared=what, agree=ok,
                            detail=detail, note=c["note"]))
        if a.v or not ok:
            print(f"{'agree' if ok else 'DIFFER'}: {c['name']}: {detail}", file=sys.stderr)
    w = max(len(r["name"]) for r in results) if results else 4
    if results:
        print(f"| {'case':<{w}} | strategy | compared | agree |")
        print(f"|{'-' * (w + 2)}|---|---|---|")
    for r in results:
        print(f"| {r['name']:<{w}} | {r['strategy']} | {r['compared']} | "
              f"{'yes' if r['agree'] else 'NO'} |")
    n_ok = sum(r["agree"] for r in results)
    random_bad = 0
    if a.random:
        print(f"\n| warper on random rows (vocab {a.vocab}), rows that differ of {a.random} | "
              "Gaussian | half-integers (ties) | Dirichlet | a few equal tokens |\n|---|---|---|---|---|")
        for name, differ, n in random_rows(a.kiln, a.random, a.vocab, 0):
            print(f"| {name} | " + " | ".join(str(x) for x in differ) + " |")
            random_bad += sum(differ) > 0
    if results:
        print(f"\nvs_transformers (transformers {transformers.__version__}, torch "
              f"{torch.__version__}): {n_ok} of {len(results)} cases agree")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    if a.random:
        print(f"random rows: {random_bad} warper settings differ on some row")
    return 0 if n_ok == len(results) and random_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
