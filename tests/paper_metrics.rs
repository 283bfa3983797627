//! Issue 19: the rule metrics at every evaluation, reported at the lowest validation loss and
//! as the maximum over evaluations (what the rule-extrapolation paper reports), in `kiln
//! train`, `kiln eval` and sweep reports.

mod common;
use common::{kiln, ok};

#[test]
fn rule_metrics_are_recorded_at_every_evaluation_and_summarised_two_ways() {
    let d = common::tmp_path("paper", "history");
    let out = ok(&kiln()
        .args(["train", "recipes/default.yaml", "--out"])
        .arg(&d)
        .args([
            "--set",
            "train.steps=60",
            "--set",
            "train.eval_every=15",
            "--set",
            "train.schedule={type: constant}",
            "--set",
            "task.max_length=12",
        ])
        .output()
        .unwrap());
    // Every evaluation line carries the task's metrics.
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(d.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("val_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 4);
    assert!(evals.iter().all(|v| v["task_metrics"]["task"] == "grammar"));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
    let h = &s["evaluations"];
    assert_eq!(h["evaluations"], 4);
    // The evaluation with the lowest validation loss, with its own metrics.
    let best = evals
        .iter()
        .min_by(|a, b| {
            a["val_loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["val_loss"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(h["at_min_val_loss"]["step"], best["step"]);
    assert_eq!(h["at_min_val_loss"]["metrics"], best["task_metrics"]);
    // The maximum of each rule metric over the evaluations.
    for p in ["/ood/rule1", "/ood/rule2_completion", "/id/grammatical"] {
        let xs: Vec<f64> = evals
            .iter()
            .filter_map(|v| v["task_metrics"].pointer(p)?.as_f64())
            .collect();
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let got = h["max_over_evaluations"]
            .pointer(p)
            .and_then(|x| x.as_f64());
        if xs.is_empty() {
            assert_eq!(got, None, "{p}");
        } else {
            assert_eq!(got, Some(max), "{p}");
        }
    }
    // The final metrics are the last evaluation's (same weights).
    assert_eq!(s["metrics"], evals[3]["task_metrics"]);
    assert!(out.contains("max over evaluations"), "{out}");
    assert!(out.contains("at min. val. loss (step "), "{out}");
    let eval = ok(&kiln().arg("eval").arg(&d).output().unwrap());
    assert!(eval.contains("max over evaluations"), "{eval}");
    let _ = std::fs::remove_dir_all(d);
}
