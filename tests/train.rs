//! Training end to end through the CLI: determinism, and a run killed with SIGKILL and resumed
//! ends with exactly the metrics of an uninterrupted run.

mod common;
use common::kiln;
use std::path::{Path, PathBuf};

const SETS: &[&str] = &[
    "--set",
    "task.max_length=16",
    "--set",
    "model.vars.depth=1",
    "--set",
    "train.steps=60",
    "--set",
    "train.checkpoint_every=5",
    "--set",
    "train.eval_every=20",
];

fn tmp(name: &str) -> PathBuf {
    common::tmp_path("train", name)
}

fn summary(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn killed_and_resumed_run_matches_an_uninterrupted_one() {
    let a = tmp("a");
    let out = kiln()
        .args([
            "train",
            "recipes/default.yaml",
            "--out",
            a.to_str().unwrap(),
        ])
        .args(SETS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OOD ("), "{stdout}");
    assert!(stdout.contains("chance (OOD)"));

    // The same recipe and seed give the same run.
    let b = tmp("b");
    let out = kiln()
        .args([
            "train",
            "recipes/default.yaml",
            "--out",
            b.to_str().unwrap(),
        ])
        .args(SETS)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(summary(&a), summary(&b));
    assert_eq!(
        std::fs::read(a.join("metrics.jsonl")).unwrap(),
        std::fs::read(b.join("metrics.jsonl")).unwrap()
    );

    // Kill a third run once it has written a checkpoint, then resume it.
    let c = tmp("c");
    let mut child = kiln()
        .args([
            "train",
            "recipes/default.yaml",
            "--out",
            c.to_str().unwrap(),
        ])
        .args(SETS)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !c.join("checkpoint.safetensors").exists() && start.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(!c.join("summary.json").exists() || summary(&c) == summary(&a));
    let out = kiln()
        .args(["train", "--resume", c.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&c), summary(&a));
    assert_eq!(
        std::fs::read(c.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(a.join("checkpoint.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(c.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap()
    );

    // eval recomputes the same metrics from the checkpoint.
    let out = kiln().args(["eval", a.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let ood_line = stdout.lines().find(|l| l.starts_with("OOD (")).unwrap();
    assert!(table.contains(ood_line), "{table}\n---\n{ood_line}");

    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn resume_without_a_checkpoint_is_a_clear_error() {
    let d = tmp("none");
    std::fs::create_dir_all(&d).unwrap();
    let out = kiln()
        .args(["train", "--resume", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no checkpoint to resume from"));
    let _ = std::fs::remove_dir_all(d);
}
