//! Cached decoding against uncached on real models with perturbed weights: the logits at every
//! decoding step for every strategy, grouped-query attention's cache holding only the KV heads,
//! memory tokens and phase-coherent attention, an encoder-decoder encoding its source once; and
//! bad decoding settings as validation errors.

use kiln::decode::{generate, Generated, ModelLm, NextLogits, Settings};
use kiln::runtime::{DeviceKind, Runtime};
use kiln::spec::recipe::Decode;
use std::path::Path;

mod decode_common;
use decode_common::{model, perturbed, strategies};

fn tokens(g: &[Generated]) -> Vec<Vec<i64>> {
    g.iter().map(|g| g.tokens.clone()).collect()
}
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
