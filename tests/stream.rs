//! The uint16 stream task end to end through the CLI: a learnable stream is learned and
//! reported above its baselines, an unlearnable one is not, `kiln data analyze` tells them
//! apart, and bad data or a diverging run are clear errors.

mod common;
use common::{kiln, ok, tmp_path};
use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    let d = tmp_path("stream", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn generate(kind: &str, values: usize, path: &Path) {
    ok(&kiln()
        .args([
            "data",
            "generate",
            kind,
            "--values",
            &values.to_string(),
            "--out",
        ])
        .arg(path)
        .output()
        .unwrap());
}

fn train(recipe: &str, dir: &Path, sets: &[String]) -> Output {
    kiln()
        .args(["train", recipe, "--out"])
        .arg(dir.join("run"))
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .output()
        .unwrap()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap()).unwrap()
}

#[test]
fn the_bundled_data_is_what_the_generator_makes() {
    let d = tmp("bundled");
    for (kind, file, n) in [
        ("prng", "prng.u16", 20_000),
        ("biased-die", "biased-die.u16", 50_000),
        ("fair-die", "fair-die.u16", 50_000),
    ] {
        let p = d.join(file);
        generate(kind, n, &p);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(Path::new("data").join(file)).unwrap(),
            "data/{file} is not `kiln data generate {kind} --values {n}`"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_learnable_stream_is_learned_and_reported_above_its_baselines() {
    let d = tmp("prng");
    let out = train(
        "recipes/uint16-prng.yaml",
        &d,
        &["model.vars.depth=1".into(), "train.steps=120".into()],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("top-1"), "{stdout}");
    let s = summary(&d);
    let top1 = &s["metrics"]["top"][0];
    assert_eq!(s["metrics"]["task"], "uint16");
    assert!(top1["model"].as_f64().unwrap() > 0.9, "{s}");
    assert_eq!(top1["chance"].as_f64().unwrap(), 1.0 / 64.0);
    assert_eq!(top1["beats_baselines"], true);
    // eval recomputes the same table from the checkpoint.
    let table = ok(&kiln().arg("eval").arg(d.join("run")).output().unwrap());
    let line = stdout.lines().find(|l| l.starts_with("top-1")).unwrap();
    assert!(table.contains(line), "{table}\n---\n{line}");
    // generate continues the sequence x ← (5x + 3) mod 64.
    let gen = ok(&kiln()
        .arg("generate")
        .arg(d.join("run"))
        .args(["--prompt", "1 8 43"])
        .output()
        .unwrap());
    let vals: Vec<u64> = gen.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(vals[..3], [1, 8, 43]);
    assert_eq!(vals[3], (5 * 43 + 3) % 64, "{gen}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn an_unlearnable_stream_is_reported_at_chance() {
    let d = tmp("fair");
    let out = train(
        "recipes/uint16-fair-die.yaml",
        &d,
        &["model.vars.depth=1".into(), "train.steps=40".into()],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("NOT above both baselines"), "{stdout}");
    let s = summary(&d);
    let top1 = &s["metrics"]["top"][0];
    assert_eq!(top1["beats_baselines"], false);
    let (lo, hi) = (
        top1["ci95"][0].as_f64().unwrap(),
        top1["ci95"][1].as_f64().unwrap(),
    );
    assert!(lo < 1.0 / 6.0 + 0.02 && hi > 1.0 / 6.0 - 0.02, "{s}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn data_analyze_tells_structure_from_noise() {
    let fair = ok(&kiln()
        .args(["data", "analyze", "data/fair-die.u16"])
        .output()
        .unwrap());
    assert!(fair.contains("verdict: no structure"), "{fair}");
    let prng = ok(&kiln()
        .args(["data", "analyze", "data/prng.u16", "--format", "json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&prng).unwrap();
    assert_eq!(v["distinct"], 64);
    assert!(v["conditional_entropy_bits"].as_f64().unwrap() < 1e-9);
    assert!(v["verdict"].as_str().unwrap().starts_with("predictable"));
}

#[test]
fn bad_data_is_a_clear_error() {
    let d = tmp("bad");
    let recipe = "recipes/uint16-prng.yaml";
    let cases: Vec<(Vec<String>, &str)> = {
        let odd = d.join("odd.u16");
        std::fs::write(&odd, [1u8, 0, 2]).unwrap();
        let short = d.join("short.u16");
        std::fs::write(&short, [1u8, 0, 2, 0]).unwrap();
        let big = d.join("big.u16");
        generate("prng", 5000, &big);
        vec![
            (
                vec![format!("task.path={}", d.join("missing.u16").display())],
                "cannot read the data file",
            ),
            (
                vec![format!("task.path={}", odd.display())],
                "3 bytes, not a multiple of 2",
            ),
            (
                vec![format!("task.path={}", short.display())],
                "fewer than one window",
            ),
            (
                vec![
                    format!("task.path={}", big.display()),
                    "task.vocab=32".into(),
                ],
                "Set `task.vocab` to at least",
            ),
        ]
    };
    for (sets, want) in cases {
        let out = train(recipe, &d, &sets);
        let err = String::from_utf8_lossy(&out.stderr);
        // A data file that cannot be used exits 2 (README, "Exit status").
        assert_eq!(out.status.code(), Some(2), "{sets:?}: {err}");
        assert!(err.contains(want), "{sets:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let _ = std::fs::remove_dir_all(d.join("run"));
    }
    let out = kiln()
        .args(["data", "analyze"])
        .arg(d.join("odd.u16"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_diverging_run_stops_with_a_message_and_keeps_its_last_good_checkpoint() {
    // Decoupled decay of lr·λ = 100 multiplies every weight by −99 per step: the loss
    // overflows to inf/NaN within a few dozen steps.
    let d = tmp("nan");
    let out = train(
        "recipes/uint16-prng.yaml",
        &d,
        &[
            "model.vars.depth=1".into(),
            "train.steps=200".into(),
            "train.checkpoint_every=1".into(),
            "train.schedule={type: constant}".into(),
            "train.optimizer={type: adamw, lr: 10, weight_decay: 10, decay_all: true}".into(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The weights overflow first (a finite loss from infinite weights is not trusted): the
    // checkpoint with them is never written.
    assert!(
        err.contains("the training loss became") || err.contains("became non-finite at step"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let step: u64 = err
        .split("at step ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    let (_, _, state) =
        kiln::train::load_checkpoint(&d.join("run/checkpoint.safetensors")).unwrap();
    assert_eq!(
        state.step,
        step - 1,
        "the kept checkpoint is the step before"
    );
    let _ = std::fs::remove_dir_all(d);
}
