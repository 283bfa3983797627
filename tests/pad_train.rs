//! Static shapes in training: token inputs right-padded to a multiple of 16 positions (the
//! default on a GPU, forced here on the CPU) give a causal model the loss, gradients and
//! validation loss of the unpadded run; models that padding would change run unpadded.

mod common;

use burn::prelude::*;
use common::{bench_json, kiln};
use kiln::ir::reference::Rng;
use kiln::spec::recipe::RecipeSpec;
use kiln::train::{eval_loss, Batch, Trainer};
use std::path::Path;

/// Input positions per row: not a multiple of 16 (the rows hold one id more).
const L: usize = 37;

fn compile(recipe: &str, sets: &[&str]) -> (RecipeSpec, kiln::ir::Graph) {
    let sets: Vec<String> = sets.iter().map(ToString::to_string).collect();
    let (r, g) = kiln::compile::recipe(Path::new(recipe), &sets, false)
        .unwrap_or_else(|e| panic!("{recipe}: {e}"));
    (r.spec, g)
}

fn rows(seed: u64, n: usize, len: usize, vocab: u64) -> Vec<Vec<i64>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (0..len).map(|_| (rng.next_u64() % vocab) as i64).collect())
        .collect()
}

fn trainer(spec: &RecipeSpec, g: &kiln::ir::Graph, pad_to: usize) -> Trainer {
    let mut tr = Trainer::new(
        &spec.train,
        g.clone(),
        kiln::runtime::DeviceKind::Cpu.device(true),
    );
    tr.rt.pad_to = pad_to;
    tr
}

fn flat(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Causal families, each small and without dropout.
const CAUSAL: &[(&str, &[&str])] = &[
    ("recipes/default.yaml", &["model.vars.depth=1"]),
    (
        "recipes/anbn-lstm.yaml",
        &["model.vars.depth=2", "model.layers.2.p=0.0"],
    ),
    ("recipes/anbn-mamba.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-xlstm.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-retnet.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-gfnet-frequency.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-ets.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-memory.yaml", &["model.vars.depth=1"]),
    ("recipes/anbn-linear.yaml", &[]),
];

#[test]
fn padding_leaves_loss_gradients_and_validation_loss_unchanged_in_causal_models() {
    for &(recipe, sets) in CAUSAL {
        let (spec, g) = compile(recipe, sets);
        let vocab = spec.task.vocab();
        let (mut plain, mut padded) = (trainer(&spec, &g, 1), trainer(&spec, &g, 16));
        assert_eq!(plain.rt.padded_len(L), L, "{recipe}");
        assert_eq!(
            padded.rt.padded_len(L),
            48,
            "{recipe}: {:?}",
            padded.rt.pad_refusal()
        );
        for step in 0..2u64 {
            let micro: Vec<Batch> = (0..2)
                .map(|k| Batch::Tokens(rows(10 * step + k, 3, L + 1, vocab)))
                .collect();
            let a = plain.gradients(&micro, 10).unwrap();
            let b = padded.gradients(&micro, 10).unwrap();
            assert!(
                (a.stats.loss - b.stats.loss).abs() < 1e-5,
                "{recipe} step {step}: loss {} vs {}",
                a.stats.loss,
                b.stats.loss
            );
            for ((ga, gb), name) in a.grads.iter().zip(&b.grads).zip(&plain.rt.names) {
                let (ga, gb) = (flat(ga.clone()), flat(gb.clone()));
                let worst = ga
                    .iter()
                    .zip(&gb)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{recipe} step {step}: gradient of `{name}` differs by {worst}"
                );
            }
            // Both take the unpadded run's update, so that the next step compares the same
            // parameters.
            let b_grads = kiln::train::StepGradients {
                grads: a.grads.clone(),
                stats: a.stats,
            };
            plain.apply(a);
            padded.apply(b_grads);
        }
        let val = rows(99, 5, L + 1, vocab);
        let (va, vb) = (
            eval_loss(&plain.rt, &val, 2),
            eval_loss(&padded.rt, &val, 2),
        );
        assert!(
            va.is_finite() && (va - vb).abs() < 1e-5,
            "{recipe}: {va} vs {vb}"
        );
    }
}

#[test]
fn padding_changes_the_outputs_a_non_causal_model_would_see() {
    // What the eligibility check protects against: a bidirectional model's outputs at the
    // real positions change when pad tokens follow them.
    let (spec, g) = compile(
        "recipes/default.yaml",
        &[
            "model.vars.depth=1",
            "model.layers.1.body.0.body.1.causal=false",
            "allow_noncausal=true",
        ],
    );
    let mut tr = trainer(&spec, &g, 16);
    let why = tr.rt.pad_refusal().map(str::to_string);
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("later positions")),
        "{why:?}"
    );
    assert!(tr.rt.pad_note().is_some_and(|n| n.contains("16")));
    assert_eq!(tr.rt.padded_len(L), L);
    let device = tr.rt.device.clone();
    let x = rows(3, 2, L, spec.task.vocab());
    let pad = |s: &Vec<i64>| {
        let mut s = s.clone();
        s.resize(48, 0);
        s
    };
    let run = |rows: &[Vec<i64>], n: usize| {
        let t = kiln::runtime::tokens_tensor(rows, &device);
        let out = tr.rt.forward(t, false).narrow(1, 0, n);
        out.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let plain = run(&x, L);
    let by_hand = run(&x.iter().map(pad).collect::<Vec<_>>(), L);
    let worst = plain
        .iter()
        .zip(&by_hand)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst > 1e-3, "padding would not change this model: {worst}");
    // Unpadded training still runs.
    let micro = vec![Batch::Tokens(rows(4, 2, L + 1, spec.task.vocab()))];
    assert!(tr.gradients(&micro, 10).is_ok());
    tr.rt.pad_to = 1;
    assert!(tr.rt.pad_note().is_none());
}

#[test]
fn encoder_decoders_and_forecasters_are_not_padded() {
    for (recipe, sets, why) in [
        (
            "recipes/reverse-encoder-decoder.yaml",
            vec![],
            "encoder-decoder",
        ),
        ("recipes/airline-patchtst.yaml", vec![], "series"),
    ] {
        let (spec, g) = compile(recipe, &sets);
        let tr = trainer(&spec, &g, 16);
        let got = tr.rt.pad_refusal().map(str::to_string);
        assert!(
            got.as_deref().is_some_and(|w| w.contains(why)),
            "{recipe}: {got:?}"
        );
        assert_eq!(tr.rt.padded_len(L), L, "{recipe}");
    }
}

#[test]
fn a_model_is_not_padded_past_its_positions() {
    // position_linear reads at most max_len positions: 40 allows 37 but not 48.
    let (spec, g) = compile(
        "recipes/anbn-linear.yaml",
        &["model.vars.max_len=40", "task.max_length=32"],
    );
    let tr = trainer(&spec, &g, 16);
    assert_eq!(tr.rt.max_positions(), Some(40));
    assert!(tr.rt.pad_refusal().is_none());
    assert_eq!(tr.rt.padded_len(L), L);
    assert_eq!(tr.rt.padded_len(20), 32);
    assert_eq!(tr.rt.padded_len(32), 32);
    // Learned positions (and a causal spectral gate) of 72 rows: 70 is not padded to 80.
    let (spec, g) = compile(
        "recipes/anbn-gfnet-frequency.yaml",
        &["model.vars.depth=1", "model.vars.max_len=72"],
    );
    let tr = trainer(&spec, &g, 16);
    assert_eq!(tr.rt.max_positions(), Some(72));
    assert_eq!(tr.rt.padded_len(70), 70);
    assert_eq!(tr.rt.padded_len(L), 48);
    assert_eq!(tr.rt.padded_len(63), 64);
}

#[test]
fn bench_reports_the_padded_length() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "recipes/uint16-prng.yaml",
            "--set",
            "model.vars.depth=1",
            "--set",
            "task.context=37",
            "--gen-tokens",
            "0",
        ];
        args.extend_from_slice(extra);
        bench_json(&args)
    };
    let plain = run(&[]);
    let padded = run(&["--pad-to", "16"]);
    assert_eq!(plain["pad_to"], 1, "{plain}");
    assert_eq!(plain["train_padded_len"], 37, "{plain}");
    assert_eq!(padded["pad_to"], 16, "{padded}");
    assert_eq!(padded["train_padded_len"], 48, "{padded}");
    assert!(padded["last_loss"].as_f64().is_some_and(f64::is_finite));
    let out = kiln()
        .args(["bench", "recipes/uint16-prng.yaml", "--pad-to", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A resumed run pads as the run it continues did (the checkpoint records it), not as its
/// device's default: otherwise a run forced to pad on the CPU, or not to pad on a GPU, would
/// change its shapes (and its dropout masks) at the resume.
#[test]
fn a_resumed_run_pads_as_the_checkpointed_run_did() {
    let (spec, g) = compile("recipes/default.yaml", &["model.vars.depth=1"]);
    let dir = common::tmp_path("pad", "resume");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let device = kiln::runtime::DeviceKind::Cpu.device(true);
    for pad_to in [16, 1] {
        let mut tr = trainer(&spec, &g, pad_to);
        tr.step(&[rows(3, 4, L + 1, 4)], 10).unwrap();
        tr.save(&path).unwrap();
        let resumed = Trainer::resume(&spec.train, g.clone(), device.clone(), &path).unwrap();
        assert_eq!(resumed.rt.pad_to, pad_to);
        assert_eq!(resumed.state.pad_to, Some(pad_to));
        // What `kiln train --resume` reads from the header for its memory estimate.
        let stored = kiln::train::stored_state(&path).unwrap();
        assert_eq!(stored.pad_to, Some(pad_to));
        assert_eq!(stored.step, resumed.state.step);
    }
    // A file that is not a checkpoint has no stored state.
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(kiln::train::stored_state(&path).is_none());
    let _ = std::fs::remove_dir_all(dir);
}
