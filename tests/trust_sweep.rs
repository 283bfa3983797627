//! Issue 18, sweeps: trials keyed by content, a store that survives a torn write, one writer
//! per directory, children that die with the sweep, and a clean stop on SIGTERM. Each test
//! reproduces a scenario that gave a wrong or lost result before.

mod common;
use common::{kiln, ok};
use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    common::tmp_path("trust-sweep", name)
}

/// A small LSTM sweep: two seeds, a few steps, short words.
const SMALL: &[&str] = &[
    "--set",
    "sweep={grid: {model: [../models/lstm.yaml]}, seeds: [0, 1]}",
    "--set",
    "train.eval_every=6",
    "--set",
    "train.schedule={type: constant}",
    "--set",
    "task.max_length=12",
];

fn sweep(dir: &Path, extra: &[&str]) -> Output {
    kiln()
        .args(["sweep", "recipes/sweep-anbn.yaml", "--out"])
        .arg(dir)
        .args(SMALL)
        .args(extra)
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn changed_trials_run_again_and_reports_never_mix_configurations() {
    let d = tmp("keys");
    let first = sweep(&d, &["--set", "train.steps=12"]);
    ok(&first);
    assert!(
        err(&first).contains("2 trials, 0 already done, running 2"),
        "{}",
        err(&first)
    );
    // Before: "3 trials, 2 already done" and an LSTM row of n = 3 mixing 12- and 6-step runs.
    let second = sweep(
        &d,
        &["--set", "sweep.seeds=[0, 1, 2]", "--set", "train.steps=6"],
    );
    let table = ok(&second);
    let e = err(&second);
    assert!(e.contains("3 trials, 0 already done, running 3"), "{e}");
    assert!(e.contains("2 result(s) of other configurations"), "{e}");
    assert!(
        table.contains("| model=../models/lstm.yaml | 3 |"),
        "{table}"
    );
    // Changing only the learning rate is a new configuration too (before: "running 0").
    let lr = sweep(
        &d,
        &[
            "--set",
            "sweep.seeds=[0, 1, 2]",
            "--set",
            "train.steps=6",
            "--set",
            "train.optimizer.lr=0.01",
        ],
    );
    ok(&lr);
    assert!(err(&lr).contains("running 3"), "{}", err(&lr));
    // A trial that an earlier plan ran is not run again: its content is its identity.
    let again = sweep(
        &d,
        &["--set", "sweep.seeds=[1, 2]", "--set", "train.steps=6"],
    );
    ok(&again);
    assert!(
        err(&again).contains("2 trials, 2 already done, running 0"),
        "{}",
        err(&again)
    );

    // The report covers the current plan; older results are shown apart, then pruned.
    let report = |extra: &[&str]| {
        kiln()
            .args(["sweep", "report"])
            .arg(&d)
            .args(extra)
            .output()
            .unwrap()
    };
    let cur = report(&[]);
    let table = ok(&cur);
    assert!(
        table.contains("| model=../models/lstm.yaml | 2 |"),
        "{table}"
    );
    assert!(
        err(&cur).contains("6 result(s) of other configurations"),
        "{}",
        err(&cur)
    );
    let stale = report(&["--stale"]);
    let table = ok(&stale);
    // The 12-step pair, the 6-step seed 0 (its configuration is current, the trial is not),
    // and the lr 0.01 triple: three configurations' rows, never averaged together.
    assert_eq!(table.matches("[config ").count(), 3, "{table}");
    for n in ["| 2 |", "| 1 |", "| 3 |"] {
        assert!(table.contains(n), "{table}");
    }
    let pruned = report(&["--prune"]);
    ok(&pruned);
    assert!(
        err(&pruned).contains("removed 6 result(s)"),
        "{}",
        err(&pruned)
    );
    let left = std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert_eq!(left.lines().count(), 2, "{left}");
    let dirs = std::fs::read_dir(&d)
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.path().is_dir() && e.file_name().to_string_lossy().starts_with("trial-")
        })
        .count();
    assert_eq!(dirs, 2, "the pruned trials' run directories are gone");
    assert!(ok(&report(&["--stale"])).is_empty());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_torn_record_is_reported_and_its_trial_runs_once_more() {
    let d = tmp("torn");
    let args = ["--set", "train.steps=6"];
    ok(&sweep(&d, &args));
    // Killed in the middle of writing the last record.
    let path = d.join("results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.trim_end().len() - 40;
    std::fs::write(&path, &text[..cut]).unwrap();
    let out = sweep(&d, &args);
    ok(&out);
    let e = err(&out);
    assert!(e.contains("is incomplete"), "{e}");
    assert!(e.contains("2 trials, 1 already done, running 1"), "{e}");
    // The new record did not glue onto the torn bytes: every line reads, nothing is re-run.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    let out = sweep(&d, &args);
    ok(&out);
    let e = err(&out);
    assert!(!e.contains("incomplete") && e.contains("running 0"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_busy_sweep_directory_is_refused_with_its_holder() {
    use kiln::os::lock::{DirLock, Mode};
    let d = tmp("busy");
    let held = DirLock::acquire(&d, Mode::Exclusive, "kiln sweep (the test)").unwrap();
    for cmd in [&["sweep"][..], &["run", "--trial", "0"][..]] {
        let out = kiln()
            .args(cmd)
            .arg("recipes/sweep-anbn.yaml")
            .arg("--out")
            .arg(&d)
            .args(SMALL)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{cmd:?}: {}", err(&out));
        assert!(err(&out).contains("kiln sweep (the test)"), "{}", err(&out));
    }
    assert!(!d.join("results.jsonl").exists());
    drop(held);
    let _ = std::fs::remove_dir_all(d);
}

/// Wait until `f` holds or `secs` pass.
fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// The one trial directory of a sweep directory, once it exists.
fn trial_dir(d: &Path) -> Option<PathBuf> {
    std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
        let p = e.path();
        (p.is_dir() && e.file_name().to_string_lossy().starts_with("trial-")).then_some(p)
    })
}

/// A one-trial sweep long enough to be stopped, started in the background.
fn long_sweep(d: &Path) -> std::process::Child {
    kiln()
        .args(["sweep", "recipes/sweep-anbn.yaml", "--out"])
        .arg(d)
        .args([
            "--set",
            "sweep={grid: {model: [../models/lstm.yaml]}}",
            "--set",
            "train.steps=100000",
            "--set",
            "train.eval_every=100000",
            "--set",
            "task.max_length=12",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn trials_die_with_a_killed_sweep_and_resume_after_a_stopped_one() {
    use kiln::os::lock::{DirLock, Mode};
    let d = tmp("signals");
    let steps = |t: &Path| {
        std::fs::read_to_string(t.join("metrics.jsonl")).map_or(0, |s| s.lines().count())
    };
    // SIGKILL the sweep: its trial gets SIGTERM, writes its checkpoint and exits.
    let mut sweep_proc = long_sweep(&d);
    let mut t = None;
    assert!(wait_for(120, || {
        t = trial_dir(&d);
        t.as_ref().is_some_and(|t| steps(t) > 5)
    }));
    let t = t.unwrap();
    sweep_proc.kill().unwrap();
    sweep_proc.wait().unwrap();
    assert!(
        wait_for(30, || DirLock::acquire(&t, Mode::Exclusive, "test").is_ok()),
        "the trial outlived its sweep"
    );
    let k = kiln::train::load_checkpoint(&t.join("checkpoint.safetensors"))
        .unwrap()
        .2
        .step;
    assert!(k > 5, "the orphaned trial saved its steps ({k})");

    // SIGTERM a sweep: the trial is recorded as interrupted, not failed, and the sweep exits
    // with 143.
    let sweep_proc = long_sweep(&d);
    assert!(wait_for(120, || steps(&t) > k as usize + 5));
    unsafe {
        libc::kill(sweep_proc.id() as i32, libc::SIGTERM);
    }
    let out = sweep_proc.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", err(&out));
    assert!(err(&out).contains("interrupted"), "{}", err(&out));
    let store = std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert!(store.contains("\"status\":\"interrupted\""), "{store}");
    assert!(!store.contains("\"status\":\"failed\""), "{store}");
    let k2 = kiln::train::load_checkpoint(&t.join("checkpoint.safetensors"))
        .unwrap()
        .2
        .step;
    assert!(k2 > k, "it resumed from its checkpoint ({k} -> {k2})");
    let _ = std::fs::remove_dir_all(d);
}
