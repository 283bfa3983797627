//! Helpers shared by the end-to-end test files that drive the `kiln` binary.
// Each test file uses a different subset.
#![allow(dead_code)]

pub mod tfevents;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `kiln` binary under test.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// A fresh (removed) path in the temporary directory, unique to this test process:
/// `kiln-<suite>-<name>-<pid>`.
pub fn tmp_path(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The stdout of a command that must have succeeded (otherwise the test fails with its
/// status, stdout and stderr).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON of one `kiln bench` run of a single timed step without warm-up: `args` name the
/// recipe and any other options.
pub fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = kiln()
        .arg("bench")
        .args(args)
        .args(["--steps", "1", "--warmup", "0"])
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).unwrap()
}
pub mod corpus;
