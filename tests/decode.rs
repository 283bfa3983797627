//! Decoding: each processor and strategy on tiny hand-built models whose logits are known,
//! against hand-computed expectations; cached against uncached logits at every decoding step of
//! real models with perturbed weights; and bad settings as validation errors.

use kiln::decode::process::Processors;
use kiln::decode::{generate, Generated, ModelLm, NextLogits, Settings};
use kiln::runtime::{DeviceKind, Runtime};
use kiln::spec::recipe::{Decode, EarlyStop, Strategy};
use std::path::Path;

mod decode_common;
use decode_common::{model, perturbed};

/// A model given by a function of the sequence so far.
struct Table<F: Fn(&[i64]) -> Vec<f32>>(F);

impl<F: Fn(&[i64]) -> Vec<f32>> NextLogits for Table<F> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], _: Option<&[usize]>) -> Vec<Vec<f32>> {
        seqs.iter().map(|s| (self.0)(s)).collect()
    }
}

const EOS: i64 = 0;

fn settings(d: Decode, max_len: usize) -> Settings {
    Settings {
        d,
        eos: Some(EOS),
        pad: 9,
        default_max_length: max_len,
        source_len: 0,
    }
}

fn ln(p: &[f64]) -> Vec<f32> {
    p.iter().map(|&x| x.ln() as f32).collect()
}

fn tokens(g: &[Generated]) -> Vec<Vec<i64>> {
    g.iter().map(|x| x.tokens.clone()).collect()
}

#[test]
fn greedy_takes_the_most_probable_token_and_pads_after_eos() {
    // Vocab {EOS, a, b}: after the prompt a b … the model says a, then EOS.
    let mut m = Table(|s: &[i64]| match s.len() {
        1 => vec![0.0, 2.0, 1.0],
        2 => vec![3.0, 0.0, 1.0],
        _ => vec![0.0, 0.0, 5.0],
    });
    let out = generate(&mut m, &[vec![2], vec![1]], &settings(Decode::default(), 5));
    assert_eq!(tokens(&out[0]), vec![vec![2, 1, 0]]);
    assert_eq!(tokens(&out[1]), vec![vec![1, 1, 0]]);
    // Two prompts finishing at different steps in one batch: the first pads.
    let mut m = Table(|s: &[i64]| {
        if s[0] == 1 || s.len() >= 2 {
            vec![5.0, 0.0, 0.0]
        } else {
            vec![0.0, 0.0, 5.0]
        }
    });
    let out = generate(&mut m, &[vec![1], vec![2]], &settings(Decode::default(), 6));
    assert_eq!(tokens(&out[0]), vec![vec![1, 0, 9]]);
    assert_eq!(tokens(&out[1]), vec![vec![2, 2, 0]]);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
    let d = Decode {
        repetition_penalty: 2.0,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![1.0, 4.0, -3.0, 2.0];
    // Tokens 1 and 2 occurred (1 twice: penalised once).
    p.process(&[1, 2, 1], &mut s, None);
    assert_eq!(s, vec![1.0, 2.0, -6.0, 2.0]);
}

#[test]
fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
    let d = Decode {
        no_repeat_ngram_size: 2,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![0.0; 5];
    // Bigrams seen: (1,2) (2,3) (3,1); the sequence ends in 1 → token 2 banned.
    p.process(&[1, 2, 3, 1], &mut s, None);
    assert_eq!(s[2], f32::NEG_INFINITY);
    assert_eq!(s.iter().filter(|v| v.is_infinite()).count(), 1);
    let d3 = Decode {
        no_repeat_ngram_size: 3,
        ..Decode::default()
    };
    let mut s = vec![0.0; 5];
    Processors::new(&d3, Some(EOS), 1, 1).process(&[1], &mut s, None);
    assert!(
        s.iter().all(|v| v.is_finite()),
        "no banning while too short"
    );
}

#[test]
fn min_lengths_and_bad_words_mask_tokens() {
    let d = Decode {
        min_new_tokens: 2,
        bad_words_ids: vec![vec![3], vec![1, 2]],
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 2, 1);
    let mut s = vec![0.0; 5];
    p.process(&[4, 1, 7], &mut s, None); // one new token so far
    assert_eq!(s[0], f32::NEG_INFINITY, "EOS masked before min_new_tokens");
    assert_eq!(s[3], f32::NEG_INFINITY, "single-token bad word");
    assert_eq!(s[2], 0.0, "(1, 2) only after 1");
    let mut s = vec![0.0; 5];
    p.process(&[4, 7, 8, 1], &mut s, None);
    assert_eq!(s[0], 0.0);
    assert_eq!(s[2], f32::NEG_INFINITY);
    let d = Decode {
        min_length: 4,
        ..Decode::default()
    };
    let mut s = vec![0.0; 3];
    Processors::new(&d, Some(EOS), 1, 1).process(&[1, 1, 1], &mut s, None);
    assert_eq!(s[0], f32::NEG_INFINITY);
}

fn kept(d: Decode, scores: &[f32], min_keep: usize) -> Vec<usize> {
    let mut s = scores.to_vec();
    Processors::new(&d, Some(EOS), 1, min_keep).warp(&mut s);
    (0..s.len()).filter(|&i| s[i].is_finite()).collect()
}

#[test]
fn warpers_keep_the_hand_computed_sets() {
    let probs = ln(&[0.5, 0.2, 0.15, 0.1, 0.05]);
    let base = Decode {
        top_k: 0,
        ..Decode::default()
    };
    // top-k with a tie at the threshold keeps both.
    let tie = vec![3.0, 2.0, 2.0, 1.0];
    assert_eq!(
        kept(
            Decode {
                top_k: 2,
                ..base.clone()
            },
            &tie,
            1
        ),
        vec![0, 1, 2]
    );
    // top-p 0.7: 0.5 + 0.2 reaches it.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.7,
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1]
    );
    // top-p 0.71 needs the third.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.71,
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1, 2]
    );
    // min-p 0.29: keep p ≥ 0.145.
    assert_eq!(
        kept(
            Decode {
                min_p: Some(0.29),
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1, 2]
    );
    assert_eq!(
        kept(
            Decode {
                min_p: Some(0.35),
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1]
    );
    // min_tokens_to_keep = 2 overrides a tiny top-p.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.01,
                ..base.clone()
            },
            &probs,
            2
        ),
        vec![0, 1]
    );
    // Temperature is applied before top-p: T = 10 flattens, so 0.7 needs more tokens.
    let hot = kept(
        Decode {
            top_p: 0.7,
            temperature: 10.0,
            ..base.clone()
        },
        &probs,
        1,
    );
    assert!(hot.len() > 2, "{hot:?}");
    // typical-p: H = −Σ p ln p; rank by |−ln p − H|.
    let p = [0.5f64, 0.2, 0.15, 0.1, 0.05];
    let h: f64 = p.iter().map(|x| -x * x.ln()).sum();
    let mut order: Vec<usize> = (0..5).collect();
    order.sort_by(|&a, &b| (-p[a].ln() - h).abs().total_cmp(&(-p[b].ln() - h).abs()));
    let mut want = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        want.push(i);
        mass += p[i];
        if mass >= 0.5 {
            break;
        }
    }
    want.sort_unstable();
    assert_eq!(
        kept(
            Decode {
                typical_p: 0.5,
                ..base
            },
            &probs,
            1
        ),
        want
    );
}

#[test]
fn sampling_is_seeded_and_follows_the_distribution() {
    let d = Decode {
        strategy: Strategy::Sample,
        num_return_sequences: 4,
        top_k: 0,
        seed: 3,
        ..Decode::default()
    };
    let probs = ln(&[0.0001, 0.7, 0.2999]);
    let run = |d: Decode| {
        let mut m = Table(|_: &[i64]| probs.clone());
        generate(&mut m, &vec![vec![1]; 200], &settings(d, 2))
    };
    let a = run(d.clone());
    assert_eq!(a, run(d.clone()), "same seed, same samples");
    let ones = a.iter().flatten().filter(|g| g.tokens[1] == 1).count() as f64 / 800.0;
    assert!((ones - 0.7).abs() < 0.05, "{ones}");
    let other = run(Decode {
        seed: 4,
        ..d.clone()
    });
    assert_ne!(a, other);
    // top_k = 1 makes sampling greedy.
    let g = run(Decode { top_k: 1, ..d });
    assert!(g.iter().flatten().all(|x| x.tokens[1] == 1));
}

/// Vocab {EOS, a, b}. Greedy takes a (0.6) then must end weakly; b (0.4) then EOS (0.9)
/// is the more probable sequence.
fn trap(s: &[i64]) -> Vec<f32> {
    match (s.len(), s.last()) {
        (1, _) => ln(&[0.0001, 0.6, 0.3999]),
        (2, Some(1)) => ln(&[0.3, 0.35, 0.35]),
        (2, Some(2)) => ln(&[0.9, 0.05, 0.05]),
        _ => ln(&[0.98, 0.01, 0.01]),
    }
}

#[test]
fn beam_search_finds_the_more_probable_sequence_with_hand_computed_scores() {
    let greedy = generate(
        &mut Table(trap),
        &[vec![5]],
        &settings(Decode::default(), 5),
    );
    assert_eq!(greedy[0][0].tokens[..2], [5, 1]);
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        ..Decode::default()
    };
    let out = generate(&mut Table(trap), &[vec![5]], &settings(d.clone(), 5));
    assert_eq!(out[0][0].tokens, vec![5, 2, 0]);
    // score = sum log p / generated_len^1 with generated_len counting the EOS.
    let want = ((0.3999f64).ln() + (0.9f64).ln()) / 2.0;
    assert!(
        (out[0][0].score - want).abs() < 1e-5,
        "{} vs {want}",
        out[0][0].score
    );
    assert!(out[0][0].score >= out[0][1].score);
    // The runner-up is a → (a or b) → EOS.
    let second = ((0.6f64).ln() + (0.35f64).ln() + (0.98f64).ln()) / 3.0;
    assert!((out[0][1].score - second).abs() < 1e-5, "{:?}", out[0]);
}

#[test]
fn length_penalty_decides_between_short_and_long_hypotheses() {
    // After the prompt: EOS at once (p .45) or x then EOS (.55 · .9 = .495).
    let m = |s: &[i64]| match s.len() {
        1 => ln(&[0.45, 0.55, 1e-9]),
        _ => ln(&[0.9, 0.05, 0.05]),
    };
    let run = |lp: f64| {
        let d = Decode {
            strategy: Strategy::Beam,
            num_beams: 2,
            length_penalty: lp,
            early_stopping: EarlyStop::Never(kiln::spec::recipe::Never::Never),
            ..Decode::default()
        };
        generate(&mut Table(m), &[vec![7]], &settings(d, 4))[0][0].clone()
    };
    // short: ln .45 / 1^lp = −0.799; long: (ln .55 + ln .9) / 2^lp = −0.703 / 2^lp.
    assert_eq!(run(1.0).tokens, vec![7, 1, 0]); // −0.351 beats −0.799
    assert_eq!(run(0.0).tokens, vec![7, 1, 0]); // −0.703 beats −0.799
    let short = run(-1.0); // long: −1.406, short −0.799
    assert_eq!(short.tokens, vec![7, 0]);
    assert!((short.score - (0.45f64).ln()).abs() < 1e-5);
}

#[test]
fn early_stopping_true_stops_at_the_first_full_set() {
    // Every step EOS has p .5; with early_stopping = true the search ends as soon as 2
    // hypotheses are finished, i.e. after step 2, never reaching longer ones.
    let m = |_: &[i64]| ln(&[0.5, 0.3, 0.2]);
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        early_stopping: EarlyStop::Flag(true),
        ..Decode::default()
    };
    let calls = std::cell::Cell::new(0);
    let mut counted = Table(|s: &[i64]| {
        calls.set(calls.get() + 1);
        m(s)
    });
    let out = generate(&mut counted, &[vec![4]], &settings(d, 10));
    assert!(out[0].iter().all(|g| g.tokens.len() <= 3), "{:?}", out[0]);
    assert!(calls.get() <= 2 * 2, "{} calls", calls.get());
}

#[test]
fn diverse_beam_search_spreads_the_groups() {
    let m = |s: &[i64]| match s.len() {
        1 => ln(&[0.01, 0.6, 0.39]),
        _ => ln(&[0.98, 0.01, 0.01]),
    };
    let run = |penalty: f64| {
        let d = Decode {
            strategy: Strategy::GroupBeam,
            num_beams: 2,
            num_beam_groups: 2,
            diversity_penalty: penalty,
            num_return_sequences: 2,
            ..Decode::default()
        };
        let mut out: Vec<i64> = generate(&mut Table(m), &[vec![3]], &settings(d, 4))[0]
            .iter()
            .map(|g| g.tokens[1])
            .collect();
        out.sort_unstable();
        out
    };
    // Without a penalty both groups pick a; with one the second group must pick b
    // (ln .6 − 5 < ln .39).
    assert_eq!(run(0.0), vec![1, 1]);
    assert_eq!(run(5.0), vec![1, 2]);
}

#[test]
fn beam_sampling_samples_and_is_seeded() {
    let d = Decode {
        strategy: Strategy::BeamSample,
        num_beams: 2,
        top_k: 0,
        seed: 1,
        ..Decode::default()
    };
    let run = |seed| {
        generate(
            &mut Table(trap),
            &vec![vec![5]; 30],
            &settings(Decode { seed, ..d.clone() }, 5),
        )
    };
    assert_eq!(run(1), run(1));
    let firsts: std::collections::HashSet<i64> = run(1).iter().map(|g| g[0].tokens[1]).collect();
    assert!(firsts.len() > 1 || firsts.contains(&2), "{firsts:?}");
}

/// Decodes with the cache and, on every call, runs the uncached model on the same sequences and
/// compares all the logits: returns the cached ones.
struct Checked<'a> {
    cached: ModelLm<'a>,
    uncached: ModelLm<'a>,
    what: String,
    /// Calls compared, and the largest spread of a row's logits.
    calls: usize,
    max_spread: f32,
}

impl NextLogits for Checked<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>> {
        let a = self.cached.next_logits(seqs, parents);
        let b = self.uncached.next_logits(seqs, parents);
        assert_eq!((a.len(), b.len()), (seqs.len(), seqs.len()));
        for (r, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.len(), y.len());
            for (v, (p, q)) in x.iter().zip(y).enumerate() {
                let d = (p - q).abs();
                assert!(
                    d <= 1e-4 * (1.0 + q.abs()),
                    "{}: call {}, row {r} ({:?}), token {v}: cached logit {p}, uncached {q}",
                    self.what,
                    self.calls,
                    seqs[r]
                );
            }
            let (lo, hi) = y
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &q| (l.min(q), h.max(q)));
            self.max_spread = self.max_spread.max(hi - lo);
        }
        self.calls += 1;
        a
    }
}

#[test]
fn cached_and_uncached_decoding_give_the_same_logits() {
    let prompts = vec![vec![0, 3, 3, 4], vec![0, 3, 4, 4], vec![0, 4, 3, 3]];
    let cases = [
        ("recipes/default.yaml", vec![]),
        ("recipes/anbn-lstm.yaml", vec!["model.vars.depth=2"]),
        (
            "recipes/anbn-transformer-paper.yaml",
            vec!["model.vars.depth=2"],
        ),
        // Mamba with a convolution wider than the prompt, so its state carries padding too.
        ("recipes/anbn-mamba.yaml", vec!["model.vars.depth=2"]),
        ("recipes/anbn-xlstm.yaml", vec!["model.vars.depth=2"]),
        ("recipes/anbn-ets.yaml", vec!["model.vars.depth=2"]),
        // Retention decodes from each head's recurrent state.
        ("recipes/anbn-retnet.yaml", vec!["model.vars.depth=2"]),
        (
            "recipes/anbn-hard-attention.yaml",
            vec!["model.vars.depth=2"],
        ),
        // The causal spectral filter keeps its latest inputs and convolves one window per
        // new position.
        (
            "recipes/default.yaml",
            vec!["model=../models/gfnet-causal.yaml", "model.vars.depth=2"],
        ),
        // The position-wise linear map keeps every earlier input.
        ("recipes/anbn-linear.yaml", vec![]),
        // Memory tokens are cached as a prefix of every attention's keys.
        ("recipes/anbn-memory.yaml", vec!["model.vars.depth=2"]),
        // Phase-coherent attention caches its keys' phases (and amplitudes) too.
        ("recipes/anbn-wave.yaml", vec!["model.vars.depth=1"]),
        (
            "recipes/anbn-wave.yaml",
            vec![
                "model.vars.depth=1",
                "model.layers.4.body.0.body.1.mode=complex",
            ],
        ),
    ];
    for (file, sets) in cases {
        let rt = perturbed(file, &sets, 17);
        for d in strategies() {
            // At least 8 steps before EOS may end a row (padded after it).
            let s = Settings {
                d: Decode {
                    min_new_tokens: 8,
                    ..d
                },
                eos: Some(1),
                pad: 2,
                default_max_length: 24,
                source_len: 0,
            };
            let what = format!("{file} {sets:?} {:?}", s.d.strategy);
            let mut lm = Checked {
                cached: ModelLm::new(&rt, true),
                uncached: ModelLm::new(&rt, false),
                what: what.clone(),
                calls: 0,
                max_spread: 0.0,
            };
            assert!(lm.cached.cached(), "{file} supports a cache");
            assert!(!lm.uncached.cached());
            let a = generate(&mut lm, &prompts, &s);
            // Every generation step was compared (one call per step, at least 8), on logits
            // that tell tokens apart.
            assert!(lm.calls >= 8, "{what}: {} calls", lm.calls);
            let longest = a.iter().flatten().map(|g| g.tokens.len()).max().unwrap();
            assert!(longest <= 4 + lm.calls, "{what}");
            assert!(
                lm.max_spread > 0.25,
                "{what}: logits spread only {}",
                lm.max_spread
            );
            // (The tokens and beam scores follow from the logits: the uncached model's, up to
            // the tolerance.)
        }
    }
}

fn tokens_all(g: &[Vec<Generated>]) -> Vec<Vec<Vec<i64>>> {
    g.iter().map(|x| tokens(x)).collect()
}

#[test]
fn the_cache_holds_only_the_kv_heads_of_grouped_query_attention() {
    // transformer-modern: 4 query heads share 2 KV heads of width 8.
    let rt = model("recipes/default.yaml", &[]);
    let mut lm = ModelLm::new(&rt, true);
    let s = Settings {
        d: Decode {
            max_new_tokens: Some(5),
            ..Decode::default()
        },
        eos: None,
        pad: 2,
        default_max_length: 0,
        source_len: 0,
    };
    generate(&mut lm, &[vec![0, 3, 3], vec![0, 3, 4]], &s);
    let shapes = lm.cache().unwrap().key_shapes();
    assert_eq!(shapes.len(), 2, "one entry per attention layer");
    for sh in shapes {
        // batch 2, H_kv 2, 7 positions (3 prompt + 5 new − the last, not yet fed), d 8.
        assert_eq!(sh, [2, 2, 7, 8]);
    }
    // The causal GFNet's FFTs have no incremental form before the spectral pass fuses them
    // into a causal filter: an unoptimized graph decodes without the cache, same tokens.
    let sets = vec!["model=../models/gfnet-causal.yaml".to_string()];
    let mut sources = kiln::diag::SourceMap::new();
    let Ok(kiln::spec::Document::Recipe(doc)) =
        kiln::spec::load(Path::new("recipes/default.yaml"), &sets, &mut sources)
    else {
        panic!("the recipe loads")
    };
    let plain = kiln::lower::lower_recipe(&doc).expect("lowers");
    let rt = Runtime::init(plain, DeviceKind::Cpu.device(false), 11);
    assert!(rt.cache_support().is_err());
    assert!(!ModelLm::new(&rt, true).cached());
    let fused = model(
        "recipes/default.yaml",
        &["model=../models/gfnet-causal.yaml"],
    );
    assert!(ModelLm::new(&fused, true).cached());
    let prompts = [vec![0, 3, 3, 4], vec![0, 3, 4, 4]];
    let a = generate(&mut ModelLm::new(&rt, true), &prompts, &s);
    let b = generate(&mut ModelLm::new(&fused, true), &prompts, &s);
    assert_eq!(tokens_all(&a), tokens_all(&b));
    // Memory tokens: the 4 memory positions come first in every cached key.
    let rt = model("recipes/anbn-memory.yaml", &[]);
    let mut lm = ModelLm::new(&rt, true);
    assert!(lm.cached());
    generate(&mut lm, &[vec![0, 3, 3], vec![0, 3, 4]], &s);
    assert_eq!(lm.cache().unwrap().key_shapes(), vec![[2, 2, 11, 8]; 2]);
    // Phase-coherent attention caches keys `[batch, heads, T, e]` like attention: the wave
    // model's two phase-attention layers (4 heads of 6) and its band stacks' three attention
    // layers (2 heads of 3 for the low bands' 6 features).
    let rt = model("recipes/anbn-wave.yaml", &[]);
    let mut lm = ModelLm::new(&rt, true);
    assert!(lm.cached());
    generate(&mut lm, &[vec![0, 3, 3], vec![0, 3, 4]], &s);
    let mut shapes = lm.cache().unwrap().key_shapes();
    shapes.sort_unstable();
    assert_eq!(
        shapes,
        vec![
            [2, 2, 7, 3],
            [2, 2, 7, 3],
            [2, 2, 7, 3],
            [2, 4, 7, 6],
            [2, 4, 7, 6]
        ]
    );
}

#[test]
fn bad_decoding_settings_are_validation_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["decode.top_p=1.5"], "K103"),
        (&["decode.top_p=0"], "K103"),
        (&["decode.temperature=0"], "K103"),
        (
            &[
                "decode.strategy=group_beam",
                "decode.num_beams=4",
                "decode.num_beam_groups=3",
            ],
            "not divisible",
        ),
        (
            &["decode.min_new_tokens=9", "decode.max_new_tokens=3"],
            "exceeds `max_new_tokens`",
        ),
        (
            &["decode.min_length=30", "decode.max_length=10"],
            "exceeds `max_length`",
        ),
        (&["decode.strategy=beam"], "num_beams` of at least 2"),
        (&["decode.num_beams=4"], "no effect"),
        (
            &[
                "decode.strategy=beam",
                "decode.num_beams=2",
                "decode.num_return_sequences=3",
            ],
            "exceeds `num_beams`",
        ),
        (&["decode.eos_token_id=99"], "outside the task's vocabulary"),
        (&["decode.early_stopping=sometimes"], "early_stopping"),
    ];
    for (sets, want) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["validate", "recipes/default.yaml"])
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{sets:?}: {err}");
        assert!(err.contains(want), "{sets:?}: {err}");
    }
    for ok in [
        &[
            "decode.early_stopping=never",
            "decode.strategy=beam",
            "decode.num_beams=2",
        ][..],
        &[
            "decode.early_stopping=true",
            "decode.strategy=beam",
            "decode.num_beams=2",
        ][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["validate", "recipes/default.yaml"])
            .args(ok.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ok:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An encoder-decoder decodes from rows that start with the source: cached (the source
/// encoded once, its cross-attention keys and values kept) and uncached decoding agree for
/// every strategy, and lengths and processors count only decoder tokens.
#[test]
fn encoder_decoder_decoding_encodes_the_source_once() {
    let rt = model(
        "recipes/reverse-encoder-decoder.yaml",
        &["task.max_length=6", "model.vars.depth=1"],
    );
    assert_eq!(rt.source_len(), Some(6));
    // Sources (PAD-padded to 6) followed by BOS.
    let prompts = vec![
        vec![3, 4, 5, 0, 0, 0, 1],
        vec![7, 7, 3, 4, 5, 6, 1],
        vec![10, 0, 0, 0, 0, 0, 1],
    ];
    for d in strategies() {
        let s = Settings {
            d: Decode {
                max_new_tokens: Some(5),
                ..d
            },
            eos: Some(2),
            pad: 0,
            default_max_length: 14,
            source_len: 6,
        };
        let mut cached = ModelLm::new(&rt, true);
        assert!(cached.cached());
        let a = generate(&mut cached, &prompts, &s);
        assert!(
            cached.cache().unwrap().source_values() > 0,
            "the encoder's output is kept"
        );
        let b = generate(&mut ModelLm::new(&rt, false), &prompts, &s);
        assert_eq!(tokens_all(&a), tokens_all(&b), "{:?}", s.d.strategy);
        for g in a.iter().flatten() {
            assert!(
                prompts.iter().any(|p| g.tokens.starts_with(p)),
                "{:?}",
                g.tokens
            );
            assert!(
                g.tokens.len() <= 7 + 5,
                "max_new_tokens counts generated tokens"
            );
        }
    }
    // `max_length` counts decoder tokens only (BOS included), as Hugging Face does.
    let s = Settings {
        d: Decode {
            max_length: Some(3),
            ..Decode::default()
        },
        eos: None,
        pad: 0,
        default_max_length: 14,
        source_len: 6,
    };
    let out = generate(&mut ModelLm::new(&rt, true), &prompts[..1], &s);
    assert_eq!(out[0][0].tokens.len(), 6 + 3);
}

/// Processors skip an encoder-decoder's source: a repetition penalty does not touch tokens
/// that occur only in the source.
#[test]
fn processors_ignore_the_source() {
    let d = Decode {
        repetition_penalty: 2.0,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 4, 1).skipping(3);
    let mut s = vec![1.0, 4.0, -3.0, 2.0];
    // Source [1, 2, 3], then the decoder's [3].
    p.process(&[1, 2, 3, 3], &mut s, None);
    assert_eq!(s, vec![1.0, 4.0, -3.0, 1.0]);
}

/// Greedy, beam search (3 beams, 2 returned) and seeded sampling: what the cached-vs-uncached
/// tests compare.
fn strategies() -> [Decode; 3] {
    [
        Decode::default(),
        Decode {
            strategy: Strategy::Beam,
            num_beams: 3,
            num_return_sequences: 2,
            ..Decode::default()
        },
        Decode {
            strategy: Strategy::Sample,
            seed: 5,
            ..Decode::default()
        },
    ]
}

#[test]
fn bad_words_skip_the_eos_word_and_words_longer_than_the_sequence() {
    // transformers 4.46 `NoBadWordsLogitsProcessor` drops a bad word equal to [eos], and
    // `SequenceBiasLogitsProcessor` skips a word longer than the sequence so far.
    let d = Decode {
        bad_words_ids: vec![vec![0], vec![1, 2], vec![4, 3, 1]],
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![0.0; 5];
    p.process(&[1], &mut s, None);
    assert_eq!(s, vec![0.0; 5], "[eos] ignored; [1, 2] longer than [1]");
    let mut s = vec![0.0; 5];
    p.process(&[3, 1], &mut s, None);
    assert_eq!(s[2], f32::NEG_INFINITY);
    assert_eq!(s[0], 0.0);
    let mut s = vec![0.0; 5];
    p.process(&[4, 3], &mut s, None);
    assert_eq!(s[1], 0.0, "[4, 3, 1] is longer than [4, 3]");
    let mut s = vec![0.0; 5];
    p.process(&[2, 4, 3], &mut s, None);
    assert_eq!(s[1], f32::NEG_INFINITY);
    // Without an EOS, [0] is an ordinary bad word.
    let mut s = vec![0.0; 5];
    Processors::new(&d, None, 1, 1).process(&[2], &mut s, None);
    assert_eq!(s[0], f32::NEG_INFINITY);
}

#[test]
fn top_p_compares_the_cumulative_mass_with_one_minus_top_p_rounded_once() {
    // transformers 4.46 `TopPLogitsWarper`: remove `cumsum(sorted probs) <= 1 - top_p`, the
    // bound computed in f64 and rounded to f32 once (0.4 for top_p 0.6; f32 arithmetic gave
    // 0.39999998), the cumulative sum accumulated in f64 (torch's CPU cumsum). Five equal
    // tokens: 0.2 + 0.2 = 0.4 ≤ 0.4, so two are removed and three kept.
    let base = Decode {
        top_k: 0,
        top_p: 0.6,
        ..Decode::default()
    };
    assert_eq!(kept(base.clone(), &[0.0; 5], 1), vec![2, 3, 4]);
    assert_eq!(kept(base.clone(), &ln(&[0.4, 0.6]), 1), vec![1]);
    assert_eq!(kept(base, &ln(&[0.4, 0.6]), 2), vec![0, 1]);
}

fn no_eos(d: Decode, max_len: usize) -> Settings {
    Settings {
        eos: None,
        ..settings(d, max_len)
    }
}

#[test]
fn beam_sampling_without_eos_keeps_two_tokens_per_beam_and_draws_two_per_beam() {
    // As transformers 4.46 (`_get_logits_processor`: min_tokens_to_keep = 2 with beams and no
    // EOS; `_beam_search`: n_tokens_to_keep = max(2, 1 + n_eos) · num_beams). Step 1: four
    // tied tokens survive top-k 1, and all four are drawn. Step 2: top-k 1 keeps two tokens
    // per beam (four in all), all four are drawn, and the two best both continue token 0.
    let m = |s: &[i64]| match (s.len(), s.last()) {
        (1, _) => vec![0.0, 0.0, 0.0, 0.0, -30.0, -30.0],
        (_, Some(0)) => vec![5.0, 4.9, -30.0, -30.0, -30.0, -30.0],
        (_, Some(1)) => vec![-30.0, -30.0, 0.3, 0.0, -0.2, -30.0],
        _ => vec![0.0; 6],
    };
    for seed in 0..6 {
        let d = Decode {
            strategy: Strategy::BeamSample,
            num_beams: 2,
            num_return_sequences: 2,
            top_k: 1,
            max_new_tokens: Some(2),
            seed,
            ..Decode::default()
        };
        let out = generate(&mut Table(m), &[vec![5]], &no_eos(d, 9));
        assert_eq!(
            tokens(&out[0]),
            vec![vec![5, 0, 0], vec![5, 0, 1]],
            "seed {seed}"
        );
    }
}

#[test]
fn exactly_tied_hypotheses_return_the_last_added_first() {
    // transformers 4.46 `BeamSearchScorer.finalize`: `sorted(..., key=score)` then `pop()`,
    // so of two equal scores the later hypothesis comes first. Vocab {EOS, a, b, c}; a and
    // b tie (ln ½); a → EOS and b → c → EOS are certain (log p exactly 0), so with
    // length_penalty 0 both hypotheses score ln ½; a's is added at step 2, b's at step 3.
    let m = |s: &[i64]| match (s.len(), s.last()) {
        (1, _) => vec![-1e4, 0.0, 0.0, -1e4],
        (_, Some(2)) => vec![-1e4, -1e4, -1e4, 0.0],
        _ => vec![0.0, -1e4, -1e4, -1e4],
    };
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        length_penalty: 0.0,
        ..Decode::default()
    };
    let out = generate(&mut Table(m), &[vec![5]], &settings(d, 6));
    assert_eq!(tokens(&out[0]), vec![vec![5, 2, 3, 0], vec![5, 1, 0]]);
    assert_eq!(out[0][0].score, out[0][1].score);
}

#[test]
fn beams_without_a_finite_candidate_continue_at_minus_infinity() {
    // transformers 4.46 `_beam_search` takes the top 2·num_beams candidates whatever their
    // score, so a beam can continue at −∞; it never comes back and no PAD enters a running
    // sequence. Vocab {0, 1, 2, 3}, no EOS: after 1 every token is a bad word, after 2 and
    // after 3 all but 3.
    let bad: Vec<Vec<u32>> = [1u32, 2, 3]
        .iter()
        .flat_map(|&a| {
            (0..4)
                .filter(move |&b| a == 1 || b != 3)
                .map(move |b| vec![a, b])
        })
        .collect();
    let m = |s: &[i64]| match s.len() {
        1 => vec![-10.0, 1.0, 1.5, -10.0],
        _ => vec![0.0; 4],
    };
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        max_new_tokens: Some(3),
        bad_words_ids: bad,
        ..Decode::default()
    };
    let out = generate(&mut Table(m), &[vec![0]], &no_eos(d, 9));
    assert_eq!(out[0][0].tokens, vec![0, 2, 3, 3]);
    assert_eq!(out[0][1].score, f64::NEG_INFINITY, "{:?}", out[0]);
    // The −∞ beam took the first candidate in flat order (beam 0 before beam 1, then by token)
    // at steps 2 and 3.
    assert_eq!(out[0][1].tokens, vec![0, 2, 3, 0]);
}

#[test]
fn warpers_order_minus_zero_and_zero_as_equal() {
    // torch sorts −0.0 and 0.0 as equal (a stable order keeps their indices' order); kiln
    // sorted −0.0 first, so top-p removed a different one of the tied tokens. Checked against
    // transformers 4.46 `TopPLogitsWarper(0.7)`: it keeps tokens 0, 2, 5 and 7.
    let scores = [0.5, 0.0, 1.0, 0.0, -0.5, 1.5, 0.0, -0.0];
    let d = Decode {
        top_k: 0,
        top_p: 0.7,
        ..Decode::default()
    };
    assert_eq!(kept(d, &scores, 1), vec![0, 2, 5, 7]);
}

#[test]
fn typical_p_accumulates_the_softmax_of_the_sorted_scores_as_transformers() {
    // transformers 4.46 `TypicalLogitsWarper`: the mass is `softmax(sorted scores).cumsum()`
    // (accumulated in f64 by torch's CPU cumsum), compared with typical_p in f32. kiln summed
    // exp(log-softmax) in f32 and kept token 21 too on this row (found by a randomized
    // comparison with transformers: 1 row in 4000 differed).
    let row: Vec<f32> = vec![
        -1.6061692,
        2.3164103,
        4.3453174,
        0.2973928,
        1.2089149,
        1.4450159,
        3.8093123,
        0.80602956,
        0.13190039,
        4.5752583,
        0.90617067,
        0.42965212,
        -3.4170182,
        3.1229057,
        0.6089068,
        -1.970892,
        3.551914,
        -3.761173,
        0.4008596,
        2.0557811,
        1.9744726,
        1.3302068,
        -1.9150195,
        0.6425746,
        1.2006793,
        0.8421002,
        0.8404408,
        1.67466,
        0.3156007,
        -1.2634462,
        -0.3736669,
        -2.8555954,
        3.2934198,
        -1.1246606,
        2.4236805,
        -0.04463846,
        2.6491957,
        -3.227798,
        -1.7913129,
        0.32765487,
        1.2962443,
        1.912521,
        3.4659579,
        -1.1678952,
        1.0345957,
        3.0728545,
        3.2080617,
        0.51074564,
        0.7837133,
        0.2106002,
        2.2201684,
        2.1208153,
        0.52342296,
        -4.19101,
        1.6413954,
        2.6824226,
        0.883069,
        -3.799621,
        -0.44716617,
        -0.6229192,
        -0.5562629,
        0.44907364,
        1.4694237,
        -1.1473181,
    ];
    let d = Decode {
        top_k: 0,
        typical_p: 0.9,
        ..Decode::default()
    };
    let want = vec![
        1, 2, 5, 6, 9, 13, 16, 19, 20, 27, 32, 34, 36, 41, 42, 45, 46, 50, 51, 54, 55, 62,
    ];
    assert_eq!(kept(d, &row, 1), want);
}

#[test]
fn diversity_penalty_is_subtracted_once_times_the_count() {
    // transformers 4.46 `HammingDiversityLogitsProcessor`: scores −= penalty · bincount (f32),
    // one subtraction; kiln subtracted the penalty once per earlier choice, which rounds
    // differently: −0.1 − 2 · 1.1 = −2.3 in f32, but −0.1 − 1.1 − 1.1 = −2.3000002.
    let p = Processors::new(&Decode::default(), Some(EOS), 1, 1);
    let mut s = vec![0.0, -0.1, 0.0];
    p.process(&[2], &mut s, Some((&[1, 1], 1.1)));
    assert_eq!(s[1], -0.1f32 - 2.0 * 1.1f32);
    assert_eq!(s[1], -2.3f32);
}

#[test]
fn log_softmax_subtracts_the_max_then_the_log_sum_as_torch() {
    // torch's CPU log_softmax computes (x − max) − log Σ exp(x − max); kiln computed
    // x − (max + log Σ), which rounds differently far from 0. Expected values from
    // torch.log_softmax (2.15, CPU).
    let x = [-42.37135f32, -43.660522, -39.797886];
    let want = [-2.666_301_f32, -3.955_474_1, -0.092_837_565];
    assert_eq!(kiln::decode::process::log_softmax(&x), want);
}
