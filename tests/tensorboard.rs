//! `kiln train` writes TensorBoard event files into the run directory: read back here with a
//! reader written from the format's definition (tests/common/tfevents.rs), both CRCs checked,
//! and compared with what the run recorded in `metrics.jsonl` and its files.

mod common;
use common::tfevents::{self, Val};
use common::{kiln, ok};

#[test]
fn a_training_run_writes_its_scalars_and_texts_for_tensorboard() {
    let dir = common::tmp_path("tensorboard", "run");
    let out = kiln()
        .args(["train", "recipes/default.yaml", "--out"])
        .arg(&dir)
        .args(["--set", "task.max_length=16", "--set", "model.vars.depth=1"])
        .args(["--set", "train.steps=6", "--set", "train.eval_every=3"])
        .args(["--set", "train.schedule.warmup_steps=2"])
        .output()
        .unwrap();
    ok(&out);
    let files = tfevents::files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    // events.out.tfevents.<unix seconds>.<host>
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"], "{name}");
    let secs: u64 = parts[3].parse().unwrap();
    assert!(secs > 1_700_000_000 && !parts[4].is_empty(), "{name}");

    let events = tfevents::events(&dir);
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(events
        .iter()
        .all(|e| (e.wall_time - secs as f64).abs() < 3600.0));
    assert!(
        events.iter().all(|e| e.session_status.is_none()),
        "a new run"
    );

    // Every number of metrics.jsonl at its step: the training lines' under train/, the
    // validation loss, and the grammar task's metrics at each evaluation under metrics/.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |tag: &str, step: u64| -> Vec<f32> {
        tfevents::scalars(&events, tag)
            .into_iter()
            .filter(|(s, _)| *s == step as i64)
            .map(|(_, v)| v)
            .collect()
    };
    let (mut train, mut evals) = (0, 0);
    for l in &lines {
        let step = l["step"].as_u64().unwrap();
        if let Some(v) = l.get("val_loss") {
            evals += 1;
            assert_eq!(at("val/loss", step), [v.as_f64().unwrap() as f32]);
            let m = &l["task_metrics"];
            for (tag, p) in [
                ("metrics/ood/rule2_completion", "/ood/rule2_completion"),
                ("metrics/id/n", "/id/n"),
                ("metrics/chance_ood_r1", "/chance_ood_r1"),
            ] {
                let want: Vec<f32> = m
                    .pointer(p)
                    .and_then(|x| x.as_f64())
                    .map(|x| x as f32)
                    .into_iter()
                    .collect();
                assert_eq!(at(tag, step), want, "{tag} at {step}");
            }
        } else {
            train += 1;
            for k in ["loss", "lr", "grad_norm"] {
                assert_eq!(
                    at(&format!("train/{k}"), step),
                    [l[k].as_f64().unwrap() as f32],
                    "train/{k} at {step}"
                );
            }
        }
    }
    assert_eq!((train, evals), (6, 2));
    // Once each: the final metrics are the last evaluation's, not written twice.
    assert_eq!(tfevents::scalars(&events, "train/loss").len(), 6);
    assert_eq!(tfevents::scalars(&events, "metrics/ood/n").len(), 2);

    // The run's texts at step 0: the resolved recipe and the graph, as in its files.
    for (tag, file) in [("recipe", "recipe.resolved.yaml"), ("graph", "graph.txt")] {
        let texts = tfevents::texts(&events, tag);
        assert_eq!(texts.len(), 1, "{tag}");
        assert_eq!(texts[0].0, 0);
        let want = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            texts[0].1.contains(want.trim_end()),
            "{tag}: {}",
            texts[0].1
        );
        assert!(texts[0].1.starts_with("```"), "a Markdown code block");
    }
    // Nothing but scalars and these texts.
    let texts = events
        .iter()
        .flat_map(|e| &e.values)
        .filter(|(_, v)| matches!(v, Val::Text(_)))
        .count();
    assert_eq!(texts, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// TensorBoard's own reader (`scripts/check_tensorboard.py`: EventAccumulator) on a run that
/// was killed after its first checkpoint and resumed, where Python has the `tensorboard`
/// package (`KILN_PYTHON` names the interpreter; default `python3`).
#[test]
fn tensorboards_own_reader_reads_a_killed_and_resumed_run() {
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args([
            "-c",
            "from tensorboard.backend.event_processing import event_accumulator\n\
             from tensorboard.util import tensor_util",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("{python} has no `tensorboard` package: skipped");
        return;
    }
    let out = std::process::Command::new(&python)
        .arg("scripts/check_tensorboard.py")
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(
        text.contains("killed after its first checkpoint, resumed"),
        "{text}"
    );
    assert!(text.contains("values equal to metrics.jsonl"), "{text}");
}
