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

/// Logits of `g` (f32 runtime, no dropout) for `rows`, initialised from seed 1.
fn logits(g: &kiln::ir::Graph, rows: &[Vec<i64>]) -> Vec<f32> {
    use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 1);
    rt.forward(tokens_tensor(rows, &rt.device), false)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn the_papers_model_as_it_ran_masks_pad_keys_and_has_no_positions() {
    use kiln::ir::{reference, Op};
    use kiln::ops::positions::Positions;
    let compile = |file: &str, sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        kiln::compile::recipe(std::path::Path::new(file), &sets, false)
            .unwrap_or_else(|e| panic!("{e}"))
            .1
    };
    let small = [
        "model.vars.depth=2",
        "model.vars.d_ff=16",
        "task.max_length=8",
    ];
    let as_run = compile("recipes/anbn-transformer-paper-as-run.yaml", &small);
    let ops: Vec<&Op> = as_run.g.node_weights().map(|n| &n.op).collect();
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::PadBias { pad: 2 }))
            .count(),
        1
    );
    let attentions: Vec<&&Op> = ops
        .iter()
        .filter(|o| matches!(o, Op::Attention { .. }))
        .collect();
    assert_eq!(attentions.len(), 2);
    assert!(attentions.iter().all(|o| matches!(
        o,
        Op::Attention {
            key_mask: true,
            causal: true,
            ..
        }
    )));
    assert!(!ops.iter().any(|o| matches!(
        o,
        Op::Positions(Positions::SinusoidalTable { .. } | Positions::Add)
    )));
    // SOS a a b b EOS PAD PAD, and a row without padding.
    let rows = vec![
        vec![0, 3, 3, 4, 4, 1, 2, 2, 2],
        vec![0, 3, 3, 3, 4, 4, 4, 1, 2],
    ];
    let got = logits(&as_run, &rows);
    let want = reference::run(&as_run, &reference::init_params(&as_run, 1), &rows).unwrap();
    let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(err / scale < 1e-4, "runtime vs reference: {}", err / scale);
    // Without the mask (same weights): identical before the padding (causal attention never
    // sees later PAD keys), different where a PAD query would attend to PAD keys.
    let unmasked = compile(
        "recipes/anbn-transformer-paper-as-run.yaml",
        &[&small[..], &["task.mask_padding=false"]].concat(),
    );
    let plain = logits(&unmasked, &rows);
    let v = 5;
    let at = |x: &[f32], r: usize, t: usize| x[(r * 9 + t) * v..(r * 9 + t + 1) * v].to_vec();
    let diff = |t: usize| {
        at(&got, 0, t)
            .iter()
            .zip(at(&plain, 0, t))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    // (The masked attention takes the plain tensor path, the unmasked one the fused kernel:
    // equal up to rounding.)
    for t in 0..6 {
        assert!(diff(t) < 1e-4, "position {t}: {}", diff(t));
    }
    for t in 6..9 {
        assert!(
            diff(t) > 1e-3,
            "a PAD query at {t} over PAD keys: {}",
            diff(t)
        );
    }
    // Decoding recomputes the prefix (a generated PAD is masked too).
    let rt = kiln::runtime::Runtime::init(
        as_run.clone(),
        kiln::runtime::DeviceKind::Cpu.device(false),
        1,
    );
    let why = rt.cache_support().unwrap_err();
    assert!(why.contains("attention"), "{why}");
}

#[test]
fn the_papers_model_as_it_ran_trains_and_generates() {
    let d = common::tmp_path("paper", "as-run");
    ok(&kiln()
        .args([
            "train",
            "recipes/anbn-transformer-paper-as-run.yaml",
            "--out",
        ])
        .arg(&d)
        .args([
            "--set",
            "model.vars.depth=2",
            "--set",
            "task.max_length=12",
            "--set",
            "train.steps=30",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.eval_every=15",
            "--set",
            "train.schedule={type: constant}",
        ])
        .output()
        .unwrap());
    let out = ok(&kiln()
        .arg("generate")
        .arg(&d)
        .args(["--prompt", "a a b"])
        .output()
        .unwrap());
    assert!(out.trim().starts_with("<sos> a a b"), "{out}");
    assert!(
        out.split_whitespace().count() > 4,
        "tokens were generated: {out}"
    );
    let _ = std::fs::remove_dir_all(d);
}
