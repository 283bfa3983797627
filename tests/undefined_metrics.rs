//! A grammar rate over zero finished completions is undefined (0/0): summary.json stores
//! null with the count of finished completions beside it, and the printed table shows "-"
//! and says why nothing finished (issue 18, item 10).

mod common;
use common::{kiln, ok, tmp_path};

/// The default recipe on baN after a few steps: greedy decoding emits no EOS within the
/// budget of task.max_length tokens, so none of the 128 + 128 prompts finishes.
#[test]
fn zero_finished_completions_give_null_and_dash_not_zero() {
    let d = tmp_path("undefined", "ban");
    let mut c = kiln();
    c.args([
        "train",
        "recipes/default.yaml",
        "--out",
        d.to_str().unwrap(),
    ]);
    for set in [
        "task.language=baN",
        "task.num_train=256",
        "train.steps=20",
        "train.schedule.warmup_steps=10",
        "train.eval_every=20",
    ] {
        c.args(["--set", set]);
    }
    let out = ok(&c.output().unwrap());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    let m = &s["metrics"];
    assert_eq!(m["task"], "grammar", "{s}");
    assert_eq!(m["decode_max_length"], 64, "{m}");
    for set in ["id", "ood"] {
        let x = &m[set];
        assert_eq!(x["n"], 128, "{x}");
        assert_eq!(x["finished_n"], 0, "{x}");
        assert_eq!(x["finished"], 0.0, "{x}");
        for k in ["rule1", "rule2", "rule2_completion", "grammatical"] {
            assert!(x[k].is_null(), "{set} {k} should be null (0/0): {x}");
        }
    }
    // Chance levels stay numbers.
    assert_eq!(m["chance_ood_r1"], 0.5);

    for label in ["ID (128)", "OOD (128)"] {
        let line = out.lines().find(|l| l.starts_with(label)).unwrap();
        let cols: Vec<&str> = line[label.len()..].split_whitespace().collect();
        assert_eq!(cols, ["0.000", "-", "-", "-", "-"], "{out}");
    }
    assert!(out.contains("\"-\" is undefined"), "{out}");
    assert!(
        out.contains("0 of 128 ID and 0 of 128 OOD prompts finished"),
        "{out}"
    );
    assert!(out.contains("within 64 tokens"), "{out}");
    assert!(out.contains("seldom finishes"), "{out}");
    assert!(out.contains("decode.max_new_tokens"), "{out}");

    // eval recomputes the same table from the checkpoint.
    let table = ok(&kiln().arg("eval").arg(&d).output().unwrap());
    let ood = out.lines().find(|l| l.starts_with("OOD (")).unwrap();
    assert!(table.contains(ood), "{table}");
    assert!(table.contains("0 of 128 ID"), "{table}");
    let _ = std::fs::remove_dir_all(d);
}
