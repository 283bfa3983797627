//! Helpers shared by the zoo tests (`tests/zoo.rs`, `tests/zoo_training.rs`): a training run
//! through the CLI and what it logged. The test file declares `mod common;` too.

use crate::common::{self, kiln, ok};
use std::path::{Path, PathBuf};

pub fn tmp(name: &str) -> PathBuf {
    common::tmp_path("zoo", name)
}

pub fn train(recipe: &str, dir: &Path, sets: &[&str]) -> String {
    let mut c = kiln();
    c.args(["train", recipe, "--out", dir.to_str().unwrap()]);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(&c.output().unwrap())
}

/// The values of `key` in a run's `metrics.jsonl`, one per line that has it.
pub fn logged(dir: &Path, key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v[key].as_f64())
        .collect()
}

/// First and last training loss of a run.
pub fn losses(dir: &Path) -> (f64, f64) {
    let l = logged(dir, "loss");
    (l[0], *l.last().unwrap())
}
