//! The `kiln` command line: exit statuses, JSON output, help, version and completions.

use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("kiln runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_exit_statuses() {
    let ok = kiln(&["validate", "recipes/default.yaml", "models/lstm.yaml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("recipes/default.yaml: ok"));

    let invalid = kiln(&["validate", "tests/golden/cases/typo_key.yaml"]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stderr(&invalid).contains("error[K101]: unknown key `stpes` in `train`"));
    assert!(stderr(&invalid).contains("tests/golden/cases/typo_key.yaml:5:3"));

    let missing = kiln(&["validate", "no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot read `no/such/file.yaml`: no such file"));

    let syntax = kiln(&["validate", "tests/golden/cases/tabs.yaml"]);
    assert_eq!(syntax.status.code(), Some(2));

    // The worst file decides the status.
    let mixed = kiln(&[
        "validate",
        "recipes/default.yaml",
        "tests/golden/cases/typo_key.yaml",
        "tests/golden/cases/not_utf8.yaml",
    ]);
    assert_eq!(mixed.status.code(), Some(2));
}

#[test]
fn validate_applies_overrides() {
    let ok = kiln(&[
        "validate",
        "recipes/default.yaml",
        "--set",
        "train.steps=50",
        "--set",
        "model.vars.d_model=64",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let bad = kiln(&[
        "validate",
        "recipes/default.yaml",
        "--set",
        "train.batch_size=0",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(err.contains("--> --set #1:1:18"), "{err}");
    assert!(err.contains("must be at least 1"), "{err}");
}

#[test]
fn validate_json_output() {
    let o = kiln(&[
        "validate",
        "--format",
        "json",
        "tests/golden/cases/typo_key.yaml",
        "recipes/default.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["valid"], false);
    assert_eq!(files[1]["valid"], true);
    let d = &files[0]["diagnostics"][0];
    assert_eq!(d["code"], "K101");
    assert_eq!(d["line"], 5);
    assert_eq!(d["column"], 3);
    assert_eq!(d["help"], "did you mean `steps`?");
}

#[test]
fn help_version_and_completions() {
    let help = kiln(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("Examples:"));
    assert!(stdout(&help).contains("kiln validate recipes/default.yaml"));

    let version = kiln(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION"))
    );

    let comp = kiln(&["completions", "bash"]);
    assert_eq!(comp.status.code(), Some(0));
    assert!(stdout(&comp).contains("complete -F _kiln"));
    assert!(stdout(&comp).contains("validate"));

    let bad = kiln(&["frobnicate"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn schema_command_writes_and_checks() {
    let dir = std::env::temp_dir().join(format!("kiln-schema-test-{}", std::process::id()));
    let w = kiln(&["schema", "--out", dir.to_str().unwrap()]);
    assert_eq!(w.status.code(), Some(0), "{}", stderr(&w));
    let committed = std::fs::read_to_string("schemas/recipe.schema.json").unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("recipe.schema.json")).unwrap(),
        committed
    );
    assert_eq!(
        kiln(&["schema", "--check", dir.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    std::fs::write(dir.join("model.schema.json"), "{}").unwrap();
    assert_eq!(
        kiln(&["schema", "--check", dir.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graph_command_formats_and_options() {
    let text = kiln(&["graph", "recipes/default.yaml"]);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let out = stdout(&text);
    assert!(out.starts_with("graph transformer-modern {"));
    assert!(out.contains("kv_groups=2"));
    assert!(!out.contains("repeat_kv"));
    assert!(out.contains("# transformer-modern: 23,141 parameters"));
    assert!(out.contains("# causal: yes"));
    assert!(out.contains("# gqa: "));

    let raw = stdout(&kiln(&["graph", "recipes/default.yaml", "--no-opt"]));
    assert!(raw.contains("repeat_kv"));
    assert!(raw.contains("# passes: none"));

    let dot = kiln(&["graph", "recipes/default.yaml", "--format", "dot"]);
    assert!(stdout(&dot).starts_with("digraph \"transformer-modern\" {"));

    let json = kiln(&[
        "graph",
        "models/gfnet-causal.yaml",
        "--format",
        "json",
        "--vocab",
        "7",
        "--seq",
        "64",
        "--passes",
        "spectral,dce",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("valid JSON");
    assert_eq!(v["seq"], 64);
    assert_eq!(v["causal"], true);
    assert!(v["graph"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["op"] == "spectral_filter"));
    assert!(v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["pass"] == "dce"));

    let bad_pass = kiln(&["graph", "recipes/default.yaml", "--passes", "gqa,cse2"]);
    assert_eq!(bad_pass.status.code(), Some(2));
    assert!(stderr(&bad_pass).contains("unknown pass `cse2` (did you mean `cse`?)"));

    let shape = kiln(&[
        "graph",
        "recipes/default.yaml",
        "--set",
        "model.vars.kv_heads=3",
    ]);
    assert_eq!(shape.status.code(), Some(1));
    assert!(stderr(&shape).contains("error[K300]"));
}
