//! What GPU runs need, checked on the CPU. What a run reads back from the device: Reading the training statistics back every N steps (what a GPU run does, so that the device
//! never waits for the host inside a step) gives the run a read every step gives: the same
//! metrics, TensorBoard scalars, checkpoints and summary, through a resume, and the same error
//! at the same step when the loss diverges, with no bad checkpoint written. And `kiln bench`
//! prints each step as it finishes, with the kernels CubeCL's log says it compiled. And
//! `benches/gpu_check.sh --dry-run` runs its whole plan with the CPU build.

mod common;

use common::{bench_json, kiln, ok, tfevents, tmp_path};
use kiln::runtime::DeviceKind;
use kiln::train::{train, RunOptions, Summary, TrainError};
use std::path::Path;

fn run(dir: &Path, recipe: &str, sets: &[&str], read_every: u64) -> Result<Summary, TrainError> {
    run_in(dir, recipe, sets, read_every, None)
}

fn run_in(
    dir: &Path,
    recipe: &str,
    sets: &[&str],
    read_every: u64,
    matmul_dtype: Option<burn::tensor::FloatDType>,
) -> Result<Summary, TrainError> {
    let sets: Vec<String> = sets.iter().map(ToString::to_string).collect();
    let (r, g) =
        kiln::compile::recipe(Path::new(recipe), &sets, false).unwrap_or_else(|e| panic!("{e}"));
    train(
        &r.spec,
        g,
        &RunOptions {
            dir: dir.to_path_buf(),
            progress: false,
            device: DeviceKind::Cpu,
            matmul_dtype,
            texts: Vec::new(),
            read_every,
            pad_to: None,
        },
    )
}

/// Everything a run leaves that does not depend on the clock.
fn outputs(dir: &Path, s: &Summary) -> (String, Vec<u8>, Vec<u8>, String, String) {
    let events: Vec<String> = tfevents::events(dir)
        .iter()
        .map(|e| format!("{} {:?}", e.step, e.values))
        .collect();
    let summary = Summary {
        seconds: 0.0,
        ..s.clone()
    };
    (
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(dir.join("best.safetensors")).unwrap(),
        events.join("\n"),
        serde_json::to_string(&summary).unwrap(),
    )
}

// Gradient accumulation, a clip that binds at every step, and the three regularizer terms'
// statistics; the run ends between two reads.
const SETS: &[&str] = &[
    "model.vars.d_model=16",
    "model.vars.d_ff=24",
    "model.vars.depth=1",
    "task.max_length=16",
    "train.batch_size=4",
    "train.grad_accum=2",
    "train.steps=11",
    "train.eval_every=5",
    "train.checkpoint_every=7",
    "train.clip_grad_norm=0.05",
    "train.schedule={type: constant}",
    "train.regularizers.attention_entropy=0.1",
    "train.regularizers.distribution={weight: 0.5, scales: [2, 3]}",
];

#[test]
fn reading_every_few_steps_gives_the_run_a_read_every_step_gives() {
    let (a, b) = (tmp_path("read", "every1"), tmp_path("read", "every4"));
    let sa = run(&a, "recipes/default.yaml", SETS, 1).unwrap();
    let sb = run(&b, "recipes/default.yaml", SETS, 4).unwrap();
    let (oa, ob) = (outputs(&a, &sa), outputs(&b, &sb));
    assert_eq!(oa.0, ob.0, "metrics.jsonl");
    assert_eq!(oa.0.lines().filter(|l| l.contains("grad_norm")).count(), 11);
    for key in ["attention_entropy", "distribution", "grad_norm"] {
        assert!(oa.0.contains(key), "{key} is recorded: {}", oa.0);
    }
    assert!(oa.1 == ob.1, "the checkpoints differ");
    assert!(oa.2 == ob.2, "the best weights differ");
    assert_eq!(oa.3, ob.3, "TensorBoard events");
    assert_eq!(oa.4, ob.4, "summary");
    assert!(sa.final_loss.is_finite() && sa.steps == 11);
    // Mixed bf16 too.
    let (c, e) = (tmp_path("read", "bf16-1"), tmp_path("read", "bf16-4"));
    let bf16 = Some(burn::tensor::FloatDType::BF16);
    let sc = run_in(&c, "recipes/default.yaml", SETS, 1, bf16).unwrap();
    let se = run_in(&e, "recipes/default.yaml", SETS, 4, bf16).unwrap();
    let (oc, oe) = (outputs(&c, &sc), outputs(&e, &se));
    assert_eq!(oc.0, oe.0, "bf16 metrics.jsonl");
    assert!(oc.1 == oe.1, "the bf16 checkpoints differ");
    assert_ne!(oa.0, oc.0, "bf16 is not f32");
    for d in [a, b, c, e] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn read_every_is_at_least_one() {
    let out = kiln()
        .args(["train", "recipes/default.yaml", "--read-every", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--read-every"), "{err}");
}

#[test]
fn a_deferred_run_resumes_as_a_run_read_every_step_resumes() {
    // 6 steps, then resumed to 11 (a constant schedule: the learning rate does not depend on
    // the total), read every 4 and every step.
    let mut first: Vec<&str> = SETS.to_vec();
    first.push("train.steps=6");
    let mut got = Vec::new();
    for (name, every) in [("resumed1", 1), ("resumed4", 4)] {
        let d = tmp_path("read", name);
        assert_eq!(
            run(&d, "recipes/default.yaml", &first, every)
                .unwrap()
                .steps,
            6
        );
        let s = run(&d, "recipes/default.yaml", SETS, every).unwrap();
        assert_eq!(s.steps, 11);
        got.push(outputs(&d, &s));
        let _ = std::fs::remove_dir_all(d);
    }
    assert_eq!(got[0].0, got[1].0, "metrics.jsonl");
    assert_eq!(got[0].0.matches("\"val_loss\"").count(), 4, "{}", got[0].0);
    assert!(got[0].1 == got[1].1, "the checkpoints differ");
    assert_eq!(got[0].3, got[1].3, "TensorBoard events");
    assert_eq!(got[0].4, got[1].4, "summary");
}

#[test]
fn a_diverging_deferred_run_stops_at_the_same_step_with_the_same_checkpoint() {
    // Decoupled decay of lr·λ = 100 multiplies every weight by −99 per step: the loss
    // overflows at step 5, the weights after step 4; checkpoints every 3 steps, reads every 8
    // (steps 4-6 run before the read finds it, and nothing non-finite is saved).
    let sets = [
        "model.vars.depth=1",
        "train.steps=200",
        "train.checkpoint_every=3",
        "train.eval_every=1000",
        "train.schedule={type: constant}",
        "train.optimizer={type: adamw, lr: 10, weight_decay: 10, decay_all: true}",
    ];
    let (a, b) = (tmp_path("read", "nan1"), tmp_path("read", "nan8"));
    let ea = run(&a, "recipes/uint16-prng.yaml", &sets, 1).unwrap_err();
    let eb = run(&b, "recipes/uint16-prng.yaml", &sets, 8).unwrap_err();
    assert!(
        matches!(
            ea,
            TrainError::NonFinite { .. } | TrainError::NonFiniteWeight { .. }
        ),
        "{ea}"
    );
    assert_eq!(ea.to_string(), eb.to_string());
    assert!(
        ea.to_string().contains("loss became NaN at step 5;"),
        "{ea}"
    );
    assert!(ea.to_string().contains("checkpoint (step 3)"), "{ea}");
    let ckpt = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert!(ckpt(&a) == ckpt(&b), "the kept checkpoints differ");
    let (_, _, state) = kiln::train::load_checkpoint(&b.join("checkpoint.safetensors")).unwrap();
    assert!(state.last_loss.is_some_and(f64::is_finite), "{state:?}");
    let text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap()
    );
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bench_prints_each_step_and_counts_compilations_from_the_log() {
    // CubeCL's compilation log (written only by GPU runtimes): what it already holds is not
    // counted; the CPU compiles nothing, so every step reports 0 and all timed steps are steady.
    let dir = common::tmp_path("cli", "compile-log");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("compile.log");
    std::fs::write(
        &log,
        "[Compiling kernel] matmul\n[START_KERNEL_COMPILATION]\nname: x\n",
    )
    .unwrap();
    let out = kiln()
        .args([
            "bench",
            "recipes/uint16-prng.yaml",
            "--set",
            "model.vars.depth=1",
        ])
        .args([
            "--steps",
            "3",
            "--warmup",
            "1",
            "--gen-tokens",
            "0",
            "--compile-log",
        ])
        .arg(&log)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let steps: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("kiln bench: step"))
        .collect();
    assert_eq!(steps.len(), 4, "{err}");
    assert!(
        steps[0].starts_with("kiln bench: step 1/4 (warm-up)"),
        "{err}"
    );
    assert!(
        steps[3].starts_with("kiln bench: step 4/4 (timed)"),
        "{err}"
    );
    assert!(
        steps.iter().all(|l| l.ends_with(", 0 kernels compiled")),
        "{err}"
    );
    assert_eq!(
        v["kernels_compiled_per_step"],
        serde_json::json!([0, 0, 0, 0]),
        "{v}"
    );
    assert!(v["last_step_compiling"].is_null(), "{v}");
    assert_eq!(v["steady_steps"], 3, "{v}");
    assert_eq!(v["steady_step_ms_median"], v["train_step_ms_median"], "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

fn gpu_check(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new("bash");
    c.arg("benches/gpu_check.sh").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_gpu_check_runs_its_plan_with_the_cpu_build_and_refuses_missing_binaries() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let out = tmp_path("gpu-check", "dry");
    let o = gpu_check(&["--dry-run", out.to_str().unwrap()], &[("KILN", kiln)]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let runs = std::fs::read_to_string(out.join("runs.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = runs.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 13, "{runs}");
    assert!(
        rows.iter().all(|r| r[1] == "0"),
        "every run exits 0: {runs}"
    );
    for name in [
        "kiln_d128_f32_cold",
        "kiln_default_f32_warm",
        "kiln_d128_bf16",
    ] {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["kernels_compiled_per_step"],
            serde_json::json!([0, 0, 0]),
            "{name}: {v}"
        );
        assert!(v["gen_tokens_per_s"].as_f64().unwrap() > 0.0, "{name}: {v}");
    }
    let growing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("kiln_d128_gen_growing.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(growing["gen_kv_cache"], "growing", "{growing}");
    assert!(growing["gen_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(out.join("run-default/summary.json").exists());
    assert!(out.join("work/d128/cubecl.toml").exists());
    // A missing binary and a binary without the device stop the check before it runs.
    let o = gpu_check(
        &["--dry-run", out.to_str().unwrap()],
        &[("KILN", "/nonexistent/kiln")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no kiln binary at /nonexistent/kiln"));
    let o = gpu_check(
        &[out.to_str().unwrap()],
        &[("KILN", kiln), ("KILN_FUSED", kiln)],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot run --device cuda (possible values: cpu)"),
        "{err}"
    );
    // Runs that no longer fit the time budget are skipped and listed.
    let o = gpu_check(
        &["--dry-run", out.to_str().unwrap()],
        &[("KILN", kiln), ("BUDGET_S", "0")],
    );
    assert!(o.status.success());
    let runs = std::fs::read_to_string(out.join("runs.tsv")).unwrap();
    assert_eq!(runs.matches("\tskipped\t").count(), 13, "{runs}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("skipped for time: torch_d128_f32"));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn position_tables_are_built_once_per_runtime_and_give_what_a_fresh_one_gives() {
    use burn::prelude::{Int, Tensor, TensorData};
    use kiln::runtime::Runtime;
    // The default recipe's model (RoPE in every attention layer: one table) and a sinusoidal
    // Transformer (its table); each forward of a kept runtime matches a fresh runtime's bit for
    // bit, shorter (the table's first rows) and longer (the table grown) than the first.
    for (model, sets) in [
        ("recipes/default.yaml", vec![]),
        ("recipes/anbn-transformer-paper.yaml", vec![]),
    ] {
        let (_, g) = kiln::compile::recipe(Path::new(model), &sets, false).unwrap();
        let device = DeviceKind::Cpu.device(false);
        let kept = Runtime::init(g.clone(), device.clone(), 3);
        let weights = kept.values();
        let run = |rt: &Runtime, len: usize| -> Vec<f32> {
            let ids: Vec<i64> = (0..2 * len as i64).map(|i| i % 4).collect();
            let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, len]), &device);
            rt.forward(x, false)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        for len in [8, 8, 5, 13] {
            let fresh = Runtime::with_values(g.clone(), device.clone(), &weights).unwrap();
            assert!(run(&kept, len) == run(&fresh, len), "{model}, length {len}");
        }
        assert_eq!(kept.consts.len(), 1, "{model}: one table, kept");
    }
}

/// The losses of `n` training steps of `tr` on one fixed batch of 4 sequences of 13 ids.
fn steps(tr: &mut kiln::train::Trainer, n: usize) -> Vec<f64> {
    let batch: Vec<Vec<i64>> = (0..4)
        .map(|i| (0..13).map(|j| (i * 7 + j * 3) % 4).collect())
        .collect();
    (0..n)
        .map(|_| tr.step(std::slice::from_ref(&batch), 10).unwrap().loss)
        .collect()
}

#[test]
fn host_drawn_dropout_keys_are_reproducible_and_resume_exactly() {
    use kiln::train::Trainer;
    // What a GPU trainer does (dropout keys from the host, no read per dropout op), on the
    // CPU: the paper Transformer, with dropout in its embedding and attention.
    let (r, g) =
        kiln::compile::recipe(Path::new("recipes/anbn-transformer-paper.yaml"), &[], false)
            .unwrap_or_else(|e| panic!("{e}"));
    let t = &r.spec.train;
    let device = DeviceKind::Cpu.device(true);
    let make = |host: bool| {
        let mut tr = Trainer::new(t, g.clone(), device.clone());
        tr.rt.host_dropout_keys = host;
        tr
    };
    let host = steps(&mut make(true), 3);
    assert_eq!(host, steps(&mut make(true), 3), "reproducible");
    // The device's generator gives other masks: the host's keys are the ones used.
    assert_ne!(host, steps(&mut make(false), 3));
    // Saved after 2 steps and resumed: the third step is the uninterrupted run's.
    let dir = tmp_path("read", "dropout-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let mut first = make(true);
    steps(&mut first, 2);
    first.save(&path).unwrap();
    let mut resumed = Trainer::resume(t, g.clone(), device.clone(), &path).unwrap();
    assert!(!resumed.rt.host_dropout_keys, "the CPU keeps its generator");
    resumed.rt.host_dropout_keys = true;
    assert_eq!(steps(&mut resumed, 1), host[2..]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn grouped_adamw_trains_as_the_per_parameter_update_and_resumes() {
    use kiln::train::Trainer;
    // What a GPU trainer does (AdamW over grouped buffers, a few kernels a step), on the CPU:
    // the default model, with weight decay on some parameters only and a binding clip.
    let (r, g) = kiln::compile::recipe(
        Path::new("recipes/default.yaml"),
        &[
            "train.optimizer={type: adamw, lr: 0.01, weight_decay: 0.1}".into(),
            "train.clip_grad_norm=0.05".into(),
        ],
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t = &r.spec.train;
    let device = DeviceKind::Cpu.device(true);
    let make = |grouped: bool| {
        let mut tr = Trainer::new(t, g.clone(), device.clone());
        assert!(!tr.grouped_adamw, "the CPU updates per parameter");
        tr.grouped_adamw = grouped;
        tr
    };
    let (mut a, mut b) = (make(true), make(false));
    let (la, lb) = (steps(&mut a, 4), steps(&mut b, 4));
    assert!(la[3] < la[0], "it trains: {la:?}");
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-5 * (1.0 + y.abs()), "{la:?} vs {lb:?}");
    }
    let (wa, wb) = (a.rt.values(), b.rt.values());
    for (name, (x, _)) in &wa {
        let y = &wb[name].0;
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "{name} differs by {d}");
    }
    // Saved after 2 grouped steps and resumed grouped: the uninterrupted run's next steps.
    let dir = tmp_path("grouped", "adamw");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let mut first = make(true);
    steps(&mut first, 2);
    first.save(&path).unwrap();
    let mut resumed = Trainer::resume(t, g.clone(), device.clone(), &path).unwrap();
    resumed.grouped_adamw = true;
    assert_eq!(steps(&mut resumed, 2), la[2..]);
    let _ = std::fs::remove_dir_all(dir);
}

/// `kiln bench` generates with the KV cache it is told, and by default with the CPU's growing
/// one (a GPU's default, the preallocated one, cannot be run here).
#[test]
fn bench_generates_with_the_kv_cache_it_is_told() {
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "recipes/default.yaml",
            "--gen-tokens",
            "6",
            "--gen-batch",
            "2",
        ];
        args.extend_from_slice(extra);
        bench_json(&args)
    };
    for (extra, want) in [
        (vec![], "growing"),
        (vec!["--kv-cache", "static"], "static"),
        (vec!["--kv-cache", "growing"], "growing"),
    ] {
        let v = bench(&extra);
        assert_eq!(v["gen_kv_cache"], want, "{extra:?}: {v}");
        assert_eq!(v["gen_tokens"], 12, "{extra:?}: {v}");
    }
    let out = kiln()
        .args(["bench", "recipes/default.yaml", "--kv-cache", "fixed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
