//! Issue 18, single runs: resuming a finished run changes nothing, damaged checkpoints are
//! refused, one writer per run directory, Ctrl-C and SIGTERM stop with a checkpoint, and
//! generation refuses what it cannot do. Each test reproduces a scenario that gave a wrong
//! or lost result before.

mod common;
use common::{kiln, ok};
use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    common::tmp_path("trust-run", name)
}

const SHORT: &[&str] = &[
    "--set",
    "train.steps=20",
    "--set",
    "train.schedule={type: constant}",
    "--set",
    "train.eval_every=10",
    "--set",
    "task.max_length=12",
    "--set",
    "model.vars.depth=1",
];

fn train(dir: &Path) -> Output {
    kiln()
        .args(["train", "recipes/default.yaml", "--out"])
        .arg(dir)
        .args(SHORT)
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line `{start}` in\n{text}"))
}

#[test]
fn resuming_a_finished_run_changes_nothing() {
    let d = tmp("finished");
    let first = ok(&train(&d));
    let summary = std::fs::read(d.join("summary.json")).unwrap();
    let resume = || kiln().args(["train", "--resume"]).arg(&d).output().unwrap();
    // Before: "final train loss NaN" and summary.json rewritten with null losses.
    let again = ok(&resume());
    assert_eq!(
        line(&again, "final train loss"),
        line(&first, "final train loss")
    );
    assert_eq!(line(&again, "OOD ("), line(&first, "OOD ("));
    assert_eq!(std::fs::read(d.join("summary.json")).unwrap(), summary);
    // A finished run's stored result is shown even where training it again could not fit
    // (here: a recipe whose batch needs far more memory than any test machine has). Before,
    // the memory check refused it with exit 4.
    let recipe = d.join("recipe.resolved.yaml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let huge = text.replacen("\"batch_size\": 32", "\"batch_size\": 1048576", 1);
    assert_ne!(huge, text, "{text}");
    std::fs::write(&recipe, huge).unwrap();
    let again = ok(&resume());
    assert_eq!(line(&again, "OOD ("), line(&first, "OOD ("));
    std::fs::write(&recipe, &text).unwrap();
    // Finished, but killed before its summary was written (a sweep re-resumes such a trial):
    // the losses come from the checkpoint.
    std::fs::remove_file(d.join("summary.json")).unwrap();
    let again = ok(&resume());
    assert_eq!(
        line(&again, "final train loss"),
        line(&first, "final train loss")
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
    assert!(s["final_loss"].as_f64().is_some_and(f64::is_finite), "{s}");
    assert!(s["val_loss"].as_f64().is_some_and(f64::is_finite), "{s}");
    assert_eq!(s["steps"], 20);
    let _ = std::fs::remove_dir_all(d);
}

/// Overwrite 4 bytes of tensor `name`'s data in a safetensors file.
fn poke(path: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    let old = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
    let new = if value.is_nan() { value } else { old * value };
    bytes[start..start + 4].copy_from_slice(&new.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_checkpoints_are_refused_with_the_file_and_the_other_checkpoint() {
    let d = tmp("damaged");
    ok(&train(&d));
    std::fs::remove_file(d.join("summary.json")).unwrap();
    let ckpt = d.join("checkpoint.safetensors");
    let pristine = std::fs::read(&ckpt).unwrap();
    // One weight scaled by 3 (before: trained on unnoticed), then NaN bytes (before: "loss
    // became NaN ... kept the last good checkpoint" pointing at the damaged file).
    for value in [3.0, f32::NAN] {
        std::fs::write(&ckpt, &pristine).unwrap();
        poke(&ckpt, "w/layers.1.0.0.1.q.weight", value);
        let out = kiln().args(["train", "--resume"]).arg(&d).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", err(&out));
        let e = err(&out);
        assert!(e.contains("checkpoint.safetensors` is damaged"), "{e}");
        assert!(e.contains("w/layers.1.0.0.1.q.weight"), "{e}");
        assert!(e.contains("--checkpoint best"), "{e}");
        // eval exits the same way (before: 2 on eval, 1 on train --resume).
        let out = kiln().arg("eval").arg(&d).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    }
    // The best weights still evaluate; damaged, they are refused (before: all-zero metrics
    // and exit 0), pointing at the last checkpoint.
    ok(&kiln()
        .arg("eval")
        .arg(&d)
        .args(["--checkpoint", "best"])
        .output()
        .unwrap());
    poke(
        &d.join("best.safetensors"),
        "layers.1.0.0.1.q.weight",
        f32::NAN,
    );
    let out = kiln()
        .arg("eval")
        .arg(&d)
        .args(["--checkpoint", "best"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    assert!(err(&out).contains("--checkpoint last"), "{}", err(&out));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn generation_refuses_what_it_cannot_do() {
    let d = tmp("generate");
    ok(&train(&d));
    let generate = |prompt: &str, sets: &[&str]| {
        let mut c = kiln();
        c.arg("generate").arg(&d).args(["--prompt", prompt]);
        for s in sets {
            c.args(["--set", s]);
        }
        c.output().unwrap()
    };
    ok(&generate("a a b", &[]));
    for (prompt, sets, want) in [
        ("a <eos> b", &[][..], "`<eos>` is a special token"),
        ("<sos> a", &[][..], "`<sos>` is a special token"),
        ("a <pad>", &[][..], "`<pad>` is a special token"),
        (
            "a a a a b",
            &["decode.max_length=4"][..],
            "so nothing would be generated",
        ),
        (
            "a a b",
            &["decode.min_length=40"][..],
            "no sequence could end",
        ),
        (
            "a a b",
            &["decode.min_new_tokens=20", "decode.max_new_tokens=20"][..],
            "no sequence could end",
        ),
    ] {
        let out = generate(prompt, sets);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{prompt} {sets:?}: {}",
            err(&out)
        );
        assert!(err(&out).contains(want), "{prompt} {sets:?}: {}", err(&out));
    }
    // A 30 000-token prompt (before: "memory allocation of ... bytes failed", exit 134).
    let long = "a ".repeat(15_000) + &"b ".repeat(15_000);
    let out = generate(&long, &[]);
    let code = out.status.code();
    assert!(
        code == Some(4) || code == Some(2),
        "{code:?}: {}",
        err(&out)
    );
    assert!(err(&out).starts_with("error: "), "{}", err(&out));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn sizes_that_cannot_fit_are_refused_before_anything_is_written() {
    // Before: validation passed, then "memory allocation of ... bytes failed", exit 134, a
    // backtrace and a half-made run directory.
    for sets in [
        &["train.batch_size=1048576", "task.max_length=4096"][..],
        &["model.vars.d_model=65536"][..],
    ] {
        let d = tmp("huge");
        let mut c = kiln();
        c.args(["train", "recipes/default.yaml", "--out"]).arg(&d);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{sets:?}: {}", err(&out));
        let e = err(&out);
        assert!(e.contains("but this machine has"), "{e}");
        assert!(e.contains("--ignore-memory-check"), "{e}");
        assert!(!d.exists(), "nothing was written");
        // validate says so too, as a warning.
        let mut c = kiln();
        c.args(["validate", "recipes/default.yaml"]);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            err(&out).contains("warning: recipes/default.yaml: training needs about"),
            "{}",
            err(&out)
        );
    }
    // A sweep refuses before any trial runs.
    let d = tmp("huge-sweep");
    let out = kiln()
        .args(["sweep", "recipes/sweep-anbn.yaml", "--out"])
        .arg(&d)
        .args([
            "--set",
            "train.batch_size=1048576",
            "--set",
            "task.max_length=4096",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", err(&out));
    assert!(!d.exists());
}

#[cfg(unix)]
#[test]
fn ctrl_c_and_sigterm_stop_with_a_checkpoint_and_a_busy_run_is_refused() {
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let d = tmp(name);
        let child = kiln()
            .args(["train", "recipes/default.yaml", "--out"])
            .arg(&d)
            .args([
                "--set",
                "train.steps=100000",
                "--set",
                "train.eval_every=100000",
                "--set",
                "task.max_length=12",
                "--set",
                "model.vars.depth=1",
            ])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let metrics = d.join("metrics.jsonl");
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 30 {
            assert!(start.elapsed().as_secs() < 120, "no progress");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A second writer on the same run directory is refused, naming the holder.
        let out = kiln()
            .args(["train", "recipes/default.yaml", "--out"])
            .arg(&d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{}", err(&out));
        assert!(
            err(&out).contains(&format!("pid {}", child.id())),
            "{}",
            err(&out)
        );
        // Before: killed with no message and no checkpoint.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", err(&out));
        let e = err(&out);
        assert!(e.contains(&format!("stopped by {name}")), "{e}");
        assert!(e.contains("kiln train --resume"), "{e}");
        let state = kiln::train::load_checkpoint(&d.join("checkpoint.safetensors"))
            .unwrap()
            .2;
        let logged = std::fs::read_to_string(&metrics).unwrap().lines().count() as u64;
        assert!(state.step >= 30, "{}", state.step);
        assert_eq!(state.step, logged, "the checkpoint holds every logged step");
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_run_directory_has_one_writer() {
    use kiln::os::lock::{DirLock, Mode};
    let d = tmp("locked");
    ok(&train(&d));
    std::fs::remove_file(d.join("summary.json")).unwrap();
    let held = DirLock::acquire(&d, Mode::Exclusive, "kiln train (the test)").unwrap();
    let out = kiln().args(["train", "--resume"]).arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", err(&out));
    assert!(
        err(&out).contains("in use by another kiln process"),
        "{}",
        err(&out)
    );
    assert!(err(&out).contains("kiln train (the test)"), "{}", err(&out));
    assert!(!d.join("summary.json").exists(), "nothing was written");
    drop(held);
    ok(&kiln().args(["train", "--resume"]).arg(&d).output().unwrap());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn messages_name_paths_that_work() {
    // The suggestion for a mistyped model path works when written into the recipe (before:
    // `models/transformer-modern.yaml` for a recipe in `recipes/`).
    let out = kiln()
        .args(["validate", "recipes/default.yaml", "--set"])
        .arg("model=../models/transformer-modrn.yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(
        e.contains("did you mean `../models/transformer-modern.yaml`?"),
        "{e}"
    );
    // A run directory that cannot be made is named.
    let out = kiln()
        .args([
            "train",
            "recipes/default.yaml",
            "--out",
            "/proc/kiln-no/run",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    assert!(err(&out).contains("/proc/kiln-no/run"), "{}", err(&out));
}
