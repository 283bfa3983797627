//! Sweeps through the CLI: a stable plan, fail-fast validation of every trial, parallel
//! running into an append-only store, resuming without redoing finished trials, reports.

mod common;
use common::kiln;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    common::tmp_path("sweep", name)
}

const SMALL: &[&str] = &[
    "--set",
    "train.steps=12",
    "--set",
    "train.eval_every=6",
    "--set",
    "train.schedule={type: constant}",
    "--set",
    "task.max_length=12",
    "--set",
    "model.vars.depth=1",
];

#[test]
fn conditional_parameters_reach_only_their_trials() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tmp("when");
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("when.yaml");
    let text = std::fs::read_to_string("recipes/sweep-anbn.yaml")
        .unwrap()
        .replace("../models/", &format!("{root}/models/"))
        .replace(
            "  seeds: [0, 1]",
            "  zip:\n    model.vars.heads: [2, 4]\n    model.vars.kv_heads: [2, 4]\n  when:\n    model.vars.heads: {model: [MODEL]}\n    model.vars.kv_heads: {model: [MODEL]}\n  seeds: [0]",
        )
        .replace("MODEL", &format!("{root}/models/transformer-modern.yaml"));
    std::fs::write(&recipe, text).unwrap();
    let out = kiln()
        .args(["sweep", "plan"])
        .arg(&recipe)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two Transformer points; the LSTM, which has no heads, once (not once per zip row).
    assert!(stdout.starts_with("sweep-anbn: 3 trial(s)"), "{stdout}");
    assert_eq!(stdout.matches("model.vars.heads=").count(), 2, "{stdout}");
    assert!(stdout.contains("lstm.yaml train.seed=0"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plan_is_stable_and_lists_every_trial() {
    let out = kiln()
        .args(["sweep", "plan", "recipes/sweep-anbn.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("sweep-anbn: 4 trial(s)"), "{text}");
    assert!(text.contains("    0  model=../models/transformer-modern.yaml train.seed=0"));
    assert!(text.contains("    3  model=../models/lstm.yaml train.seed=1"));
}

#[test]
fn one_bad_point_fails_before_anything_runs() {
    let d = tmp("bad");
    let out = kiln()
        .args(["sweep", "recipes/sweep-anbn.yaml", "--out"])
        .arg(&d)
        .args(["--set", "sweep.grid={train.optimizer.lr: [0.001, 50]}"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("K103"), "{err}");
    assert!(err.contains("trial 2 (train.optimizer.lr=50"), "{err}");
    assert!(!d.exists(), "nothing may run");
}

#[test]
fn a_sweep_runs_in_parallel_resumes_and_reports() {
    let d = tmp("run");
    let run = || {
        kiln()
            .args(["sweep", "recipes/sweep-anbn.yaml", "--jobs", "2", "--out"])
            .arg(&d)
            .args(SMALL)
            .output()
            .unwrap()
    };
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let store = std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert_eq!(store.lines().count(), 4);
    assert!(store.lines().all(|l| l.contains("\"status\":\"ok\"")));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| model=../models/lstm.yaml | 2 |"),
        "{table}"
    );
    assert!(table.contains(" ± "), "{table}");
    // The rule-extrapolation paper's per-run numbers are columns of their own.
    assert!(table.contains("ood_r1_max (reference)"), "{table}");
    assert!(table.contains("ood_r1_at_min_val (reference)"), "{table}");
    assert!(err.contains("best by best_val_loss"), "{err}");
    // The run ends with the report's charts.
    for f in ["loss.png", "val_loss.png"] {
        let png = std::fs::read(d.join("plots").join(f)).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{f}");
    }

    // Lose one trial's record (as if killed before it finished): only that trial runs again.
    let kept: Vec<&str> = store
        .lines()
        .filter(|l| !l.contains("\"index\":2"))
        .collect();
    std::fs::write(d.join("results.jsonl"), kept.join("\n") + "\n").unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("4 trials, 3 already done, running 1"), "{err}");
    let out = run();
    assert!(String::from_utf8_lossy(&out.stderr).contains("running 0"));

    for (format, want) in [
        (
            "csv",
            "point,config,n,failed,best_val_loss_n,best_val_loss_undefined,best_val_loss_mean",
        ),
        ("json", "\"point\""),
    ] {
        let out = kiln()
            .args(["sweep", "report"])
            .arg(&d)
            .args(["--format", format, "--metric", "ood_r1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(want));
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_failing_trial_is_recorded_and_the_others_finish() {
    let d = tmp("fail");
    // lr 10 with decay 10 on everything diverges: those trials fail, the others succeed.
    let out = kiln()
        .args(["sweep", "recipes/sweep-anbn.yaml", "--jobs", "2", "--out"])
        .arg(&d)
        .args(SMALL)
        .args([
            "--set",
            "sweep={zip: {train.optimizer.lr: [0.003, 10], train.optimizer.weight_decay: [0.01, 10]}}",
            "--set",
            "train.optimizer.decay_all=true",
            "--set",
            "train.steps=60",
            "--set",
            "train.clip_grad_norm=1000",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let store = std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert_eq!(store.lines().count(), 2, "{store}");
    assert!(store.contains("\"status\":\"ok\""), "{store}");
    assert!(store.contains("\"status\":\"failed\""), "{store}");
    assert!(store.contains("training loss became"), "{store}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn cluster_jobs_match_their_golden_files() {
    for (flag, file, extra) in [
        ("--slurm", "sweep-anbn.slurm", &[][..]),
        (
            "--k8s",
            "sweep-anbn.k8s.yaml",
            &["--set", "train.steps=300"][..],
        ),
    ] {
        let out = kiln()
            .args([
                "sweep",
                "emit",
                "recipes/sweep-anbn.yaml",
                flag,
                "--out",
                "/shared/sweeps/anbn",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = std::path::Path::new("tests/golden/emit").join(file);
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &out.stdout).unwrap();
        }
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&path).unwrap(),
            "{file} changed; KILN_BLESS=1 cargo test --test sweep rewrites it"
        );
    }
}

#[test]
fn one_trial_runs_from_the_scheduler_index() {
    let d = tmp("one");
    let out = kiln()
        .args(["run", "recipes/sweep-anbn.yaml", "--out"])
        .arg(&d)
        .args(SMALL)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert_eq!(store.lines().count(), 1);
    assert!(
        store.contains("\"index\":2") && store.contains("lstm.yaml"),
        "{store}"
    );
    let out = kiln()
        .args(["run", "recipes/sweep-anbn.yaml", "--out"])
        .arg(&d)
        .args(SMALL)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env("JOB_COMPLETION_INDEX", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(d.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let out = kiln()
        .args(["run", "recipes/sweep-anbn.yaml", "--trial", "9", "--out"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("this sweep has 4 trials"));
    let _ = std::fs::remove_dir_all(d);
}
