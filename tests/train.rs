//! Training end to end through the CLI: determinism, and a run killed with SIGKILL mid-run and
//! resumed from its checkpoint's step ends with exactly the metrics of an uninterrupted run.

mod common;
use common::kiln;
use std::path::{Path, PathBuf};

const SETS: &[&str] = &[
    "--set",
    "task.max_length=16",
    "--set",
    "model.vars.depth=1",
    "--set",
    "train.steps=100", // = STEPS
    "--set",
    "train.checkpoint_every=5",
    "--set",
    "train.eval_every=20",
];

/// `train.steps` in [`SETS`].
const STEPS: u64 = 100;

/// The training step a checkpoint holds (its `kiln_state` metadata).
fn checkpoint_step(path: &Path) -> u64 {
    kiln::train::load_checkpoint(path).unwrap().2.step
}

/// The step of a `metrics.jsonl` line.
fn metrics_step(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["step"].as_u64().unwrap()
}

/// What [`mark_metrics_up_to`] puts at the start of a line (still a JSON object with its step).
const MARK: &str = "{\"before_kill\":true,";

/// Mark the lines of steps up to `k` of a `metrics.jsonl` (later ones, and a line cut short by
/// the kill, stay as they are); returns how many were marked.
fn mark_metrics_up_to(path: &Path, k: u64) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let mut marked = 0;
    let mut out = String::new();
    for l in text.split_inclusive('\n') {
        if serde_json::from_str::<serde_json::Value>(l).is_ok() && metrics_step(l) <= k {
            out.push_str(&l.replacen('{', MARK, 1));
            marked += 1;
        } else {
            out.push_str(l);
        }
    }
    std::fs::write(path, out).unwrap();
    marked
}

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
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // The kill landed mid-run: the checkpoint holds step k, 0 < k < N, and the run had not
    // finished.
    let k = checkpoint_step(&c.join("checkpoint.safetensors"));
    assert!(
        0 < k && k < STEPS,
        "killed at checkpoint step {k} of {STEPS}"
    );
    assert!(!c.join("summary.json").exists());
    // Mark the metrics of the steps the checkpoint covers (what the resume keeps): a resume that
    // started over from step 0 would write them again, unmarked.
    let kept = mark_metrics_up_to(&c.join("metrics.jsonl"), k);
    let before_k = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| metrics_step(l) <= k)
        .count();
    assert_eq!(kept, before_k, "metrics of steps 1..={k} were written");
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
    // It resumed at step k: the lines up to k are the marked ones from before the kill, the
    // rest were written by the resumed run, and together they are the uninterrupted run's.
    let resumed = std::fs::read_to_string(c.join("metrics.jsonl")).unwrap();
    for line in resumed.lines() {
        assert_eq!(
            line.starts_with(MARK),
            metrics_step(line) <= k,
            "resumed at checkpoint step {k}: {line}"
        );
    }
    assert_eq!(
        resumed.replace(MARK, "{"),
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap()
    );
    // Its TensorBoard events likewise: the older file cut back to step k (the steps it had
    // written past the checkpoint are written again, once), a second file from the resume
    // that starts with a SessionLog START at k + 1, and together the uninterrupted run's.
    let (ea, ec) = (common::tfevents::events(&a), common::tfevents::events(&c));
    assert_eq!(common::tfevents::files(&c).len(), 2);
    for tag in ["train/loss", "train/grad_norm", "val/loss", "metrics/ood/n"] {
        assert_eq!(
            common::tfevents::scalars(&ec, tag),
            common::tfevents::scalars(&ea, tag),
            "{tag}"
        );
    }
    let starts: Vec<i64> = ec
        .iter()
        .filter(|e| e.session_status == Some(1))
        .map(|e| e.step)
        .collect();
    assert_eq!(starts, [k as i64 + 1]);
    assert_eq!(common::tfevents::texts(&ec, "recipe").len(), 1);

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
