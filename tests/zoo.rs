//! Components of the zoo end to end through the CLI: each bundled recipe that uses a new layer
//! trains (the loss falls below what a model of the current token alone reaches), generates
//! and reports what the layer promises (`kiln bench` on the zoo's recipes, curricula and
//! regularizers: `tests/zoo_training.rs`; helpers shared in `tests/zoo_common/`).

mod common;
mod zoo_common;
use common::{kiln, ok};
use std::path::Path;
use zoo_common::{logged, losses, tmp, train};

/// `kiln generate` on the run completes "a a" (greedy, the grammar's symbols): see
/// [`assert_completes`].
fn completes_a_prompt(dir: &Path) {
    let text = ok(&kiln()
        .arg("generate")
        .arg(dir)
        .args(["--prompt", "a a"])
        .output()
        .unwrap());
    assert_completes(&text);
}

/// `text` completes the prompt "a a" with tokens of its own: more a's, then b's (at least one),
/// then perhaps EOS. A generator that echoes the prompt, or repeats its last token, fails.
fn assert_completes(text: &str) {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(tokens[..3], ["<sos>", "a", "a"], "{text}");
    let new = &tokens[3..];
    let a = new.iter().take_while(|&&t| t == "a").count();
    let b = new[a..].iter().take_while(|&&t| t == "b").count();
    assert!(
        b > 0 && new[a + b..].iter().all(|&t| t == "<eos>") && new.len() - a - b <= 1,
        "expected a* b+ <eos>? after the prompt: {text}"
    );
}

/// The validation loss on aⁿbⁿ with words of up to `max_length` symbols (the recipes' seed, so
/// the same data) that no model seeing only the current token can beat: the conditional
/// entropy of the next token given the current one, as reached by the model without its
/// layers (embedding, RMSNorm, head) trained to convergence. A layer that outputs zeros leaves
/// exactly this model.
fn position_wise_floor(max_length: u32) -> f64 {
    static FLOORS: std::sync::Mutex<Vec<(u32, f64)>> = std::sync::Mutex::new(Vec::new());
    let mut floors = FLOORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, f)) = floors.iter().find(|(l, _)| *l == max_length) {
        return f;
    }
    let d = tmp(&format!("floor{max_length}"));
    train(
        "recipes/default.yaml",
        &d,
        &[
            &format!("task.max_length={max_length}"),
            "model.layers=[{type: embedding, dim: 32}, {type: rmsnorm}, {type: head}]",
            "train.optimizer={type: adamw, lr: 0.02}",
            "train.schedule={type: constant}",
            "train.steps=300",
        ],
    );
    let f = *logged(&d, "val_loss").last().unwrap();
    let _ = std::fs::remove_dir_all(d);
    floors.push((max_length, f));
    f
}

/// The run's final validation loss is well below [`position_wise_floor`]: the model uses
/// earlier positions (on aⁿbⁿ, to count).
fn uses_context(dir: &Path, max_length: u32, what: &str) {
    let val = *logged(dir, "val_loss").last().unwrap();
    let floor = position_wise_floor(max_length);
    assert!(
        val < 0.9 * floor,
        "{what}: validation loss {val}, while a model of the current token alone reaches {floor}"
    );
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn hard_attention_trains_and_reports_hard_and_soft_evaluation() {
    let d = tmp("hard");
    let out = train(
        "recipes/anbn-hard-attention.yaml",
        &d,
        &[
            "task.max_length=24",
            "model.vars.depth=2",
            "train.steps=100",
        ],
    );
    let (first, last) = losses(&d);
    assert!(last < 0.5 * first, "loss {first} → {last}");
    uses_context(&d, 24, "hard attention");
    completes_a_prompt(&d);
    assert!(out.contains("evaluated soft"), "{out}");
    let s = summary(&d);
    assert_eq!(s["metrics"]["task"], "grammar");
    assert_eq!(s["soft_attention_metrics"]["task"], "grammar", "{s}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn the_linear_baseline_trains_and_refuses_to_generate_past_its_length() {
    let d = tmp("linear");
    train(
        "recipes/anbn-linear.yaml",
        &d,
        &[
            "task.max_length=24",
            "model.vars.max_len=25",
            "train.steps=100",
        ],
    );
    let (first, last) = losses(&d);
    assert!(last < 0.5 * first, "loss {first} → {last}");
    uses_context(&d, 24, "linear");
    let gen = |n: &str| {
        kiln()
            .arg("generate")
            .arg(&d)
            .args([
                "--prompt",
                "a a",
                "--set",
                &format!("decode.max_length={n}"),
            ])
            .output()
            .unwrap()
    };
    let o = gen("27");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("at most 25 positions"), "{err}");
    let text = ok(&gen("26"));
    assert_completes(&text);
    assert!(text.split_whitespace().count() <= 26, "{text}");
    let _ = std::fs::remove_dir_all(d);
}

/// Each recurrent, prefix or wave model trains on aⁿbⁿ (the loss halves, and ends well below
/// what a model of the current token alone reaches), reports the task's metrics and completes
/// a prompt: Mamba, xLSTM and ETS attention decode with their recurrent states, memory tokens
/// and phase-coherent attention without a cache.
#[test]
fn recurrent_and_memory_models_train_and_decode() {
    for (recipe, depth, steps) in [
        ("anbn-mamba", "model.vars.depth=1", 100),
        ("anbn-xlstm", "model.vars.depth=2", 100),
        ("anbn-ets", "model.vars.depth=2", 150),
        ("anbn-retnet", "model.vars.depth=1", 100),
        ("anbn-memory", "model.vars.depth=2", 100),
        ("anbn-wave", "model.vars.depth=1", 100),
        (
            "anbn-wave",
            "model.layers.4.body.0.body.1.mode=complex",
            100,
        ),
    ] {
        let d = tmp(recipe);
        let out = train(
            &format!("recipes/{recipe}.yaml"),
            &d,
            &["task.max_length=16", depth, &format!("train.steps={steps}")],
        );
        let (first, last) = losses(&d);
        assert!(last < 0.5 * first, "{recipe}: loss {first} → {last}");
        uses_context(&d, 16, &format!("{recipe} {depth}"));
        assert!(out.contains("OOD ("), "{recipe}: {out}");
        completes_a_prompt(&d);
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_encoder_decoder_learns_to_reverse_words_and_generates() {
    let d = tmp("s2s");
    let out = train(
        "recipes/reverse-encoder-decoder.yaml",
        &d,
        &["task.max_length=5", "task.num_test=64", "train.steps=250"],
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    let exact = s["metrics"]["exact_match"].as_f64().unwrap();
    let acc = s["metrics"]["token_accuracy"].as_f64().unwrap();
    assert!(
        exact > 0.3 && acc > 0.7,
        "exact {exact}, token accuracy {acc}\n{out}"
    );
    assert!(out.contains("exact match (greedy decoding)"), "{out}");
    let gen = ok(&kiln()
        .arg("generate")
        .arg(&d)
        .args(["--prompt", "1 2 3"])
        .output()
        .unwrap());
    assert!(
        gen.starts_with("<bos> ") && gen.trim_end().ends_with("<eos>"),
        "{gen}"
    );
    let bad = kiln()
        .arg("generate")
        .arg(&d)
        .args(["--prompt", "1 2 3 4 5 6 7"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a source longer than the task's is an error"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn patchtst_forecasts_the_airline_series_beside_its_baselines() {
    let d = tmp("airline");
    let out = train("recipes/airline-patchtst.yaml", &d, &["train.steps=120"]);
    let s = summary(&d);
    let m = &s["metrics"];
    assert_eq!(m["task"], "forecast");
    assert_eq!(m["windows"], 17);
    let mse = |k: &str| m[k]["mse"].as_f64().unwrap();
    // The baselines are fixed functions of the data: last value 1.7505, seasonal naive 0.4355
    // on the last ⌊144 · 0.2⌋ = 28 months.
    assert!((mse("last_value") - 1.7505).abs() < 1e-3, "{m}");
    assert!((mse("seasonal_naive") - 0.4355).abs() < 1e-3, "{m}");
    assert!(mse("model") < mse("last_value"), "{m}");
    assert!(out.contains("seasonal naive"), "{out}");
    let (first, last) = losses(&d);
    assert!(last < 0.5 * first, "loss {first} → {last}");
    // eval prints the same table; generate has nothing to do.
    let table = ok(&kiln().arg("eval").arg(&d).output().unwrap());
    assert!(table.contains("last value"), "{table}");
    let gen = kiln()
        .arg("generate")
        .arg(&d)
        .args(["--prompt", "1"])
        .output()
        .unwrap();
    assert_eq!(gen.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
    // With Fourier features before the head, and with windowed spectral gates instead of
    // attention.
    for model in ["patchtst-fourier", "windowed-fft"] {
        train(
            "recipes/airline-patchtst.yaml",
            &d,
            &["train.steps=120", &format!("model=../models/{model}.yaml")],
        );
        let (first, last) = losses(&d);
        assert!(last < 0.5 * first, "{model}: loss {first} → {last}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn bad_forecasting_data_is_a_clear_error() {
    let d = tmp("bad-csv");
    std::fs::create_dir_all(&d).unwrap();
    let csv = d.join("bad.csv");
    let mut text = String::from("month,passengers\n");
    for i in 0..100 {
        text.push_str(&format!(
            "{i},{}\n",
            if i == 57 {
                "n/a".to_string()
            } else {
                i.to_string()
            }
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let run = |sets: &[String]| {
        let mut c = kiln();
        c.args(["train", "recipes/airline-patchtst.yaml", "--out"])
            .arg(d.join("run"));
        for s in sets {
            c.args(["--set", s]);
        }
        c.output().unwrap()
    };
    let path = format!("task.path={}", csv.display());
    let o = run(std::slice::from_ref(&path));
    let err = String::from_utf8_lossy(&o.stderr);
    // A data file that cannot be used exits 2 (README, "Exit status").
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 59, column `passengers`: `n/a` is not a number"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let o = run(&[path, "task.columns=[riders]".into()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no column `riders`"), "{err}");
    let o = run(&["task.lookback=120".into()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the training part has"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn the_adaptive_temperature_and_yarn_model_trains() {
    let d = tmp("adaptive");
    let out = train(
        "recipes/default.yaml",
        &d,
        &[
            "model=../models/transformer-adaptive.yaml",
            "task.max_length=16",
            "train.steps=100",
        ],
    );
    let (first, last) = losses(&d);
    assert!(last < 0.5 * first, "loss {first} → {last}");
    uses_context(&d, 16, "transformer-adaptive");
    completes_a_prompt(&d);
    assert!(out.contains("OOD ("), "{out}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn an_ensemble_trains_its_members_and_reports_beside_their_mean() {
    let d = tmp("ensemble");
    let sets = [
        "ensemble={seeds: [4, 5]}",
        "task.max_length=16",
        "model.vars.depth=1",
        "train.steps=60",
    ];
    let out = train("recipes/default.yaml", &d, &sets);
    assert!(out.contains("ensemble of 2 (seeds [4, 5])"), "{out}");
    assert!(out.contains("members (mean ± std)"), "{out}");
    let s = summary(&d);
    let members = s["ensemble"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_ne!(
        members[0]["final_loss"], members[1]["final_loss"],
        "different seeds"
    );
    assert_eq!(s["metrics"]["task"], "grammar");
    assert!(d.join("member-5").join("checkpoint.safetensors").exists());
    // Resuming a finished ensemble retrains nothing and reports the same.
    let again = ok(&kiln().args(["train", "--resume"]).arg(&d).output().unwrap());
    assert!(!again.contains("step "), "{again}");
    let s2 = summary(&d);
    assert_eq!(s2["val_loss"], s["val_loss"]);
    // eval and generate use the whole ensemble.
    let table = ok(&kiln().arg("eval").arg(&d).output().unwrap());
    let line = out.lines().find(|l| l.starts_with("OOD (")).unwrap();
    assert!(table.contains(line), "{table}\n---\n{line}");
    completes_a_prompt(&d);
    let _ = std::fs::remove_dir_all(d);
}

/// A forecasting ensemble averages its members' point forecasts: by convexity its test MSE is
/// at most the members' mean MSE (and differs from each member's), and `kiln eval` agrees.
#[test]
fn a_forecasting_ensemble_averages_point_forecasts() {
    let d = tmp("airline-ensemble");
    let out = train(
        "recipes/airline-patchtst.yaml",
        &d,
        &["train.steps=60", "ensemble={seeds: [1, 2, 3]}"],
    );
    assert!(out.contains("ensemble of 3"), "{out}");
    let s = summary(&d);
    let mse = |m: &serde_json::Value| m["model"]["mse"].as_f64().unwrap();
    let ens = mse(&s["metrics"]);
    let members: Vec<f64> = s["ensemble"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| mse(&m["metrics"]))
        .collect();
    let mean = members.iter().sum::<f64>() / members.len() as f64;
    assert!(ens <= mean + 1e-9, "ensemble {ens}, members {members:?}");
    assert!(
        members.iter().all(|m| (m - ens).abs() > 1e-6),
        "{ens} {members:?}"
    );
    let table = ok(&kiln().arg("eval").arg(&d).output().unwrap());
    assert!(table.contains(&format!("{ens:.4}")), "{ens}\n{table}");
    let _ = std::fs::remove_dir_all(d);
}
