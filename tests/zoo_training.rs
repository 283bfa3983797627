//! The zoo's training options end to end through the CLI: sequence-length and frequency
//! curricula (the schedule logged, and the same from `kiln curriculum plot`), the
//! regularizers (attention entropy, harmonic sparsity, the distribution loss); and
//! `kiln bench` on the zoo's recipes (each bundled model training and generating:
//! `tests/zoo.rs`).

mod common;
mod zoo_common;
use common::{kiln, ok};
use zoo_common::{logged, losses, tmp, train};

#[test]
fn bench_rejects_generating_past_the_models_positions() {
    // The causal GFNet's learned positions hold 128: 200 new tokens cannot be generated.
    let out = kiln()
        .args(["bench", "recipes/anbn-gfnet-frequency.yaml", "--steps", "1"])
        .args(["--warmup", "0", "--gen-tokens", "200"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 128 positions"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_generates_as_many_tokens_as_the_model_reads_by_default() {
    // No --gen-tokens: 256 would not fit the GFNet's 128 positions, so it generates 128.
    let out = kiln()
        .args(["bench", "recipes/anbn-gfnet-frequency.yaml", "--steps", "1"])
        .args(["--warmup", "0", "--gen-batch", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("generating 128 tokens per sequence"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gen_tokens"], 128, "{v}");
}

#[test]
fn bench_measures_training_and_generation_in_f32_and_mixed_bf16() {
    let mut rows = Vec::new();
    for precision in ["f32", "bf16"] {
        let out = ok(&kiln()
            .args([
                "bench",
                "recipes/uint16-prng.yaml",
                "--set",
                "model.vars.depth=1",
            ])
            .args(["--steps", "4", "--warmup", "1", "--gen-tokens", "8"])
            .args(["--precision", precision])
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["precision"], precision);
        assert!(v["train_steps_per_s"].as_f64().unwrap() > 0.0, "{v}");
        // One warm-up step timed on its own; the fastest timed step is at most the median.
        assert_eq!(v["warmup_step_ms"].as_array().unwrap().len(), 1, "{v}");
        let (fast, med) = (
            v["train_step_ms_fastest"].as_f64(),
            v["train_step_ms_median"].as_f64(),
        );
        assert!(fast.unwrap() > 0.0 && fast <= med, "{v}");
        assert_eq!(v["gen_tokens"], 4 * 8, "{v}");
        assert_eq!(v["gen_cached"], true);
        rows.push(v["last_loss"].as_f64().unwrap());
    }
    // Mixed precision changes the numbers a little, not the model.
    let (a, b) = (rows[0], rows[1]);
    assert!(
        a != b && (a - b).abs() < 0.02 * a,
        "f32 loss {a}, bf16 loss {b}"
    );
}

/// An encoder-decoder recipe benchmarks its generation too: each row starts with a source,
/// which the generated-token count leaves out (it used to panic on a one-token prompt).
#[test]
fn bench_generates_with_an_encoder_decoder() {
    let out = ok(&kiln()
        .args(["bench", "recipes/reverse-encoder-decoder.yaml"])
        .args([
            "--steps",
            "1",
            "--warmup",
            "0",
            "--gen-tokens",
            "6",
            "--gen-batch",
            "2",
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gen_tokens"], 2 * 6, "{v}");
    assert_eq!(v["gen_cached"], true, "{v}");
    assert!(v["gen_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
}

/// A forecasting recipe benchmarks in windows per second, with no tokens and no generation;
/// `--profile` adds the forward time by op.
#[test]
fn bench_measures_a_forecaster_in_windows() {
    let out = ok(&kiln()
        .args(["bench", "recipes/airline-patchtst.yaml"])
        .args([
            "--steps",
            "4",
            "--warmup",
            "1",
            "--gen-tokens",
            "8",
            "--profile",
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["train_steps_per_s"].as_f64().unwrap();
    let windows = v["train_windows_per_s"].as_f64().unwrap();
    // 16 windows per step.
    assert!((windows / steps - 16.0).abs() < 1e-6, "{v}");
    assert!(
        v["train_tokens_per_s"].is_null() && v.get("gen_tokens").is_none(),
        "{v}"
    );
    assert!(v["last_loss"].as_f64().unwrap().is_finite(), "{v}");
    // --profile: the forward time by op adds up, and the model's ops are there.
    let p = &v["profile"];
    let ops = p["forward_ops"].as_array().unwrap();
    let sum: f64 = ops.iter().map(|o| o["ms"].as_f64().unwrap()).sum();
    assert!(
        (sum - p["forward_ms"].as_f64().unwrap()).abs() < 1e-6,
        "{p}"
    );
    for op in ["linear", "attention", "patch", "revin_norm"] {
        assert!(ops.iter().any(|o| o["op"] == op), "{op} missing: {p}");
    }
}

#[test]
fn a_sequence_length_curriculum_trains_on_growing_prefixes() {
    let d = tmp("curriculum");
    train(
        "recipes/default.yaml",
        &d,
        &[
            "train.curriculum={start: 4, steps: 40, growth: linear}",
            "task.max_length=16",
            "model.vars.depth=1",
            "train.steps=60",
        ],
    );
    let lens: Vec<u64> = logged(&d, "seq_len").iter().map(|&v| v as u64).collect();
    assert_eq!(lens.len(), 60);
    assert_eq!((lens[0], lens[20], lens[39], lens[59]), (4, 10, 16, 17));
    let (first, last) = losses(&d);
    assert!(last < first, "loss {first} → {last}");
    // The CLI shows the same schedule.
    let csv = ok(&kiln()
        .args(["curriculum", "plot", "recipes/default.yaml", "--csv"])
        .args(["--set", "train.curriculum={start: 4, steps: 40}"])
        .args(["--set", "task.max_length=16", "--set", "train.steps=60"])
        .output()
        .unwrap());
    assert!(csv.starts_with("step,length\n0,4\n"), "{csv}");
    assert!(csv.trim_end().ends_with("40,17"), "{csv}");
    let png = d.join("curriculum.png");
    ok(&kiln()
        .args(["curriculum", "plot", "recipes/default.yaml", "--png"])
        .arg(&png)
        .args(["--set", "train.curriculum={start: 4, steps: 40}"])
        .output()
        .unwrap());
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_frequency_curriculum_widens_the_gates_band_then_lifts_the_mask() {
    let d = tmp("freq-curriculum");
    let sets = [
        "train.frequency_curriculum={start: 0.1, warmup: 10, steps: 30, growth: linear, slope: 20}",
        "task.max_length=16",
        "model.vars.depth=1",
        "model.vars.max_len=32",
        "train.steps=60",
    ];
    train("recipes/anbn-gfnet-frequency.yaml", &d, &sets);
    let cut = logged(&d, "freq_cutoff");
    assert_eq!(cut.len(), 60);
    assert_eq!((cut[0], cut[9]), (0.1, 0.1), "held during warm-up");
    assert!((cut[25] - 0.55).abs() < 1e-9, "{}", cut[25]);
    assert!(cut.windows(2).all(|w| w[0] <= w[1]), "{cut:?}");
    assert_eq!(cut[40], 1.0, "lifted after warm-up + steps");
    let (first, last) = losses(&d);
    assert!(last < first, "loss {first} → {last}");
    // The CLI shows the same schedule.
    let mut cmd = kiln();
    cmd.args([
        "curriculum",
        "plot",
        "recipes/anbn-gfnet-frequency.yaml",
        "--csv",
    ]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let csv = ok(&cmd.output().unwrap());
    assert!(csv.starts_with("step,cutoff\n0,0.1\n11,0.1"), "{csv}");
    assert!(csv.trim_end().ends_with("40,1"), "{csv}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn the_attention_entropy_regularizer_works_on_forecasters() {
    let d = tmp("airline-entropy");
    train(
        "recipes/airline-patchtst.yaml",
        &d,
        &["train.steps=40", "train.regularizers.attention_entropy=2.0"],
    );
    let h = logged(&d, "attention_entropy");
    let _ = std::fs::remove_dir_all(d);
    assert_eq!(h.len(), 40);
    // Sharpening: the mean entropy falls.
    assert!(h[39] < h[0] - 0.05, "entropy {} → {}", h[0], h[39]);
}

/// The harmonic-sparsity term concentrates each scorer's softmax on the harmonics it keeps
/// (the logged term falls), and a model without `harmonic_select` cannot ask for it.
#[test]
fn the_harmonic_sparsity_term_sharpens_the_selection() {
    let d = tmp("sparsity");
    train(
        "recipes/anbn-wave.yaml",
        &d,
        &[
            "task.max_length=16",
            "model.vars.depth=1",
            "train.steps=60",
            "train.regularizers.harmonic_sparsity=1.0",
        ],
    );
    let h = logged(&d, "harmonic_sparsity");
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(h.len(), 60);
    assert!(h[59] < 0.5 * h[0], "harmonic sparsity {} → {}", h[0], h[59]);
    let out = kiln()
        .args(["train", "recipes/default.yaml", "--out"])
        .arg(&d)
        .args(["--set", "train.regularizers.harmonic_sparsity=0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a `harmonic_select` layer"), "{err}");
}

#[test]
fn the_distribution_loss_pulls_the_predicted_marginal_to_the_data() {
    let d = tmp("distribution");
    train(
        "recipes/uint16-biased-die.yaml",
        &d,
        &[
            "train.regularizers.distribution={weight: 1.0, scales: [2, 6]}",
            "train.steps=60",
            "model.vars.depth=1",
        ],
    );
    let h = logged(&d, "distribution");
    let _ = std::fs::remove_dir_all(d);
    assert_eq!(h.len(), 60);
    let (first, last) = (h[..5].iter().sum::<f64>(), h[55..].iter().sum::<f64>());
    assert!(last < 0.5 * first, "distribution term {first} → {last}");
    assert!(h.iter().all(|v| v.is_finite() && *v >= -1e-6), "{h:?}");
}

#[test]
fn the_attention_entropy_regularizer_sharpens_or_spreads_attention() {
    let last_entropy = |w: &str| {
        let d = tmp(&format!("entropy{w}"));
        train(
            "recipes/default.yaml",
            &d,
            &[
                &format!("train.regularizers.attention_entropy={w}"),
                "task.max_length=16",
                "model.vars.depth=1",
                "train.steps=60",
            ],
        );
        let h = logged(&d, "attention_entropy");
        let _ = std::fs::remove_dir_all(d);
        assert_eq!(h.len(), 60);
        h[59]
    };
    let (sharp, spread) = (last_entropy("1.0"), last_entropy("-1.0"));
    assert!(
        sharp < spread - 0.1,
        "entropy with +1: {sharp}, with −1: {spread}"
    );
}
