//! `kiln sweep`, `kiln sweep plan`, `kiln sweep report`.

use super::{exit, ReportFormat};
use crate::os::lock::Mode;
use crate::sweep::{self, Plan, Scope, Trial};
use std::path::{Path, PathBuf};

/// Expand and validate every trial; print the plan. Err carries the exit status.
pub fn plan_cmd(recipe: &Path, set: &[String]) -> Result<(String, Vec<Trial>), i32> {
    let (name, trials) = checked_trials(recipe, set, false)?;
    println!("{name}: {} trial(s)", trials.len());
    for t in &trials {
        println!("{:>5}  {}  [{}]", t.index, t.sets.join(" "), t.key);
    }
    Ok((name, trials))
}

/// Expand the sweep and check every trial: valid, its data readable, distinct from the others,
/// and (with `memory`) fitting in the memory available.
fn checked_trials(
    recipe: &Path,
    set: &[String],
    memory: bool,
) -> Result<(String, Vec<Trial>), i32> {
    let (doc, _) = crate::compile::recipe(recipe, set, super::color()).map_err(|e| {
        eprint!("{e}");
        e.exit_code()
    })?;
    let name = doc.spec.name.clone().unwrap_or_else(|| "sweep".into());
    let Some(s) = &doc.spec.sweep else {
        eprintln!(
            "error: `{}` has no `sweep` section; add e.g. `sweep: {{grid: {{train.optimizer.lr: [1e-3, 3e-3]}}, seeds: [0, 1]}}`",
            recipe.display()
        );
        return Err(exit::FAILED);
    };
    let mut trials = sweep::plan(s).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    })?;
    // Every trial is checked before any starts: one bad point fails fast. Its resolved recipe
    // gives its content key.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for t in &mut trials {
        let sets: Vec<String> = set.iter().chain(&t.sets).cloned().collect();
        let doc = match crate::compile::recipe(recipe, &sets, super::color()) {
            Ok((doc, graph)) => {
                let est = crate::train::memory::training(&graph, &doc.spec, 1);
                if let Err(e) = est
                    .check("training")
                    .or_else(|e| if memory { Err(e) } else { Ok(()) })
                {
                    eprintln!("error: trial {} ({}): {e}", t.index, t.sets.join(" "));
                    return Err(exit::TOO_LARGE);
                }
                doc
            }
            Err(e) => {
                eprint!("{e}");
                eprintln!(
                    "error: trial {} ({}) is not a valid recipe; nothing was run",
                    t.index,
                    t.sets.join(" ")
                );
                return Err(exit::FAILED);
            }
        };
        let keys = sweep::key::keys(&doc).map_err(|e| {
            eprintln!("error: trial {}: {e}", t.index);
            exit::UNUSABLE
        })?;
        if let Some(first) = seen.insert(keys.key.clone(), t.index) {
            eprintln!(
                "error: trials {first} and {} ({}) are the same recipe (a value listed twice, or a seed listed twice?); nothing was run",
                t.index,
                t.sets.join(" ")
            );
            return Err(exit::FAILED);
        }
        (t.key, t.config) = (keys.key, keys.config);
    }
    Ok((name, trials))
}

/// The kiln executable, to run trials with.
fn kiln_exe() -> Result<PathBuf, i32> {
    std::env::current_exe().map_err(|e| {
        eprintln!("error: cannot find the kiln executable: {e}");
        exit::INTERNAL
    })
}

/// Run `trials` (the plan's, or one of them) into `dir`, holding its lock in `mode`, after
/// recording the plan. Returns the exit status.
fn run_trials(
    recipe: &Path,
    set: &[String],
    plan: Vec<Trial>,
    only: Option<usize>,
    dir: &Path,
    jobs: usize,
    mode: Mode,
) -> i32 {
    if let Err(e) = crate::os::interrupt::install() {
        eprintln!("error: cannot install the Ctrl-C handler: {e}");
        return exit::INTERNAL;
    }
    let exe = match kiln_exe() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let _lock = match super::lock_dir(dir, mode) {
        Ok(l) => l,
        Err(c) => return c,
    };
    let plan = Plan {
        recipe: recipe.display().to_string(),
        sets: set.to_vec(),
        trials: plan,
    };
    if let Err(e) = plan.save(dir) {
        eprintln!(
            "error: cannot write `{}`: {e}",
            dir.join(sweep::store::PLAN).display()
        );
        return exit::UNUSABLE;
    }
    let trials = match only {
        Some(i) => std::slice::from_ref(&plan.trials[i]),
        None => &plan.trials[..],
    };
    match sweep::run(&exe, recipe, set, trials, dir, jobs) {
        Ok(o) => {
            if only.is_none() {
                report_cmd(
                    dir,
                    ReportFormat::Markdown,
                    None,
                    true,
                    ReportScope::Current,
                );
            }
            if let Some(sig) = o.signal {
                eprintln!(
                    "kiln sweep: stopped by {}: {} trial(s) interrupted with their checkpoints kept; run the same command again to resume",
                    crate::os::interrupt::name(sig),
                    o.interrupted
                );
                crate::os::interrupt::exit_code(sig)
            } else if o.failed > 0 {
                exit::FAILED
            } else if o.busy > 0 {
                exit::BUSY
            } else {
                exit::OK
            }
        }
        Err(e) => {
            eprintln!("error: sweep directory `{}`: {e}", dir.display());
            exit::UNUSABLE
        }
    }
}

pub fn run_cmd(
    recipe: &Path,
    set: &[String],
    out: Option<PathBuf>,
    jobs: usize,
    ignore_memory: bool,
) -> i32 {
    let (name, trials) = match checked_trials(recipe, set, !ignore_memory) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let dir = out.unwrap_or_else(|| PathBuf::from("sweeps").join(&name));
    run_trials(recipe, set, trials, None, &dir, jobs, Mode::Exclusive)
}

/// What `kiln sweep report` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportScope {
    /// The current plan's configurations.
    Current,
    /// The records of older configurations.
    Stale,
    /// Remove the records of older configurations.
    Prune,
}

pub fn report_cmd(
    dir: &Path,
    format: ReportFormat,
    metric: Option<&str>,
    plots: bool,
    scope: ReportScope,
) -> i32 {
    let store = match sweep::Store::load(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNUSABLE;
        }
    };
    if store.records.is_empty() {
        eprintln!(
            "error: `{}` holds no sweep results (results.jsonl)",
            dir.display()
        );
        return exit::UNUSABLE;
    }
    for p in &store.problems {
        eprintln!("warning: {p}");
    }
    let plan = Plan::load(dir);
    if scope == ReportScope::Prune {
        let Some(plan) = &plan else {
            eprintln!("error: `{}` has no plan.json: without a current plan there is nothing to tell old results by; run the sweep once with the current recipe", dir.display());
            return exit::UNUSABLE;
        };
        let _lock = match super::lock_dir(dir, Mode::Exclusive) {
            Ok(l) => l,
            Err(c) => return c,
        };
        return match sweep::store::prune(dir, &store, &plan.keys()) {
            Ok(n) => {
                eprintln!(
                    "removed {n} result(s) of other configurations (and their run directories) from `{}`",
                    dir.display()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: cannot prune `{}`: {e}", dir.display());
                exit::UNUSABLE
            }
        };
    }
    let which = if scope == ReportScope::Stale {
        Scope::Stale
    } else {
        Scope::Current
    };
    let rep = sweep::report(&store, plan.as_ref(), which);
    if rep.rows.is_empty() {
        eprintln!("{}: no results of other configurations", dir.display());
        return exit::OK;
    }
    if plan.is_none() && rep.unkeyed > 0 {
        eprintln!("warning: {} record(s) predate content-keyed trials (kiln 0.1): rows are grouped by their overrides only and may mix configurations (e.g. runs with different `--set` values); re-run the sweep to key them", rep.unkeyed);
    }
    if which == Scope::Current && rep.stale > 0 {
        eprintln!(
            "note: the store also holds {} result(s) of other configurations, not shown: `kiln sweep report {} --stale` shows them, `--prune` removes them",
            rep.stale,
            dir.display()
        );
    }
    if plots && which == Scope::Current {
        let keys = plan.as_ref().map(Plan::keys);
        let recs: Vec<&sweep::Record> = store
            .records
            .iter()
            .filter(|r| {
                keys.as_ref()
                    .is_none_or(|k| k.contains(r.trial.key.as_str()))
            })
            .collect();
        match sweep::plots(dir, &recs, &rep.metrics, &dir.join("plots")) {
            Ok(files) => {
                for f in files {
                    eprintln!("wrote {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        }
    }
    super::sweep_table::print(&rep, format, metric)
}

pub fn run_one_cmd(
    recipe: &Path,
    trial: Option<usize>,
    set: &[String],
    out: &Path,
    ignore_memory: bool,
) -> i32 {
    let from_env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let Some(index) = trial
        .or_else(|| from_env("SLURM_ARRAY_TASK_ID"))
        .or_else(|| from_env("JOB_COMPLETION_INDEX"))
    else {
        eprintln!("error: no trial index: give --trial I, or run under a Slurm array (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)");
        return exit::UNUSABLE;
    };
    let (_, trials) = match checked_trials(recipe, set, !ignore_memory) {
        Ok(x) => x,
        Err(c) => return c,
    };
    if index >= trials.len() {
        eprintln!(
            "error: trial {index} does not exist: this sweep has {} trials (0..{})",
            trials.len(),
            trials.len().saturating_sub(1)
        );
        return exit::UNUSABLE;
    }
    // The tasks of one cluster job share the sweep directory; each trial's directory has its
    // own (exclusive) lock.
    run_trials(recipe, set, trials, Some(index), out, 1, Mode::Shared)
}

/// Settings of `kiln sweep emit`.
pub struct EmitOptions {
    /// Shared results directory.
    pub out: PathBuf,
    /// Container image.
    pub image: String,
    /// PersistentVolumeClaim.
    pub pvc: String,
    /// Tasks at once.
    pub parallelism: usize,
    /// Cores per task.
    pub cpus: usize,
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn emit_cmd(recipe: &Path, set: &[String], slurm: bool, o: &EmitOptions) -> i32 {
    // The cluster's nodes are not this machine: their memory is not checked here.
    let (name, trials) = match checked_trials(recipe, set, false) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let n = trials.len();
    let job = format!(
        "kiln-{}",
        name.to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let mut args = vec![
        "kiln".to_string(),
        "run".into(),
        recipe.display().to_string(),
        "--out".into(),
        o.out.display().to_string(),
    ];
    for s in set {
        args.push("--set".into());
        args.push(s.clone());
    }
    if slurm {
        let cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        print!(
            "#!/bin/bash\n\
             # {n} trials of `{recipe}`; each array task runs the trial SLURM_ARRAY_TASK_ID.\n\
             # Results: {out}/results.jsonl; summarise with `kiln sweep report {out}`.\n\
             # Create {out} before `sbatch` (Slurm opens the log files before the script runs).\n\
             #SBATCH --job-name={job}\n\
             #SBATCH --array=0-{last}%{par}\n\
             #SBATCH --cpus-per-task={cpus}\n\
             #SBATCH --output={out}/slurm-%A_%a.log\n\
             set -euo pipefail\n\
             mkdir -p {out}\n\
             {cmd}\n",
            recipe = recipe.display(),
            out = o.out.display(),
            last = n - 1,
            par = o.parallelism,
            cpus = o.cpus,
            cmd = cmd.join(" "),
        );
    } else {
        let cmd: Vec<String> = args
            .iter()
            .map(|a| serde_json::to_string(a).expect("string"))
            .collect();
        print!(
            "# {n} trials of `{recipe}`; pod i runs trial JOB_COMPLETION_INDEX = i.\n\
             # Results: {out}/results.jsonl on the claim `{pvc}`; summarise with `kiln sweep report {out}`.\n\
             apiVersion: batch/v1\n\
             kind: Job\n\
             metadata:\n\
             \x20 name: {job}\n\
             spec:\n\
             \x20 completionMode: Indexed\n\
             \x20 completions: {n}\n\
             \x20 parallelism: {par}\n\
             \x20 backoffLimitPerIndex: 2\n\
             \x20 template:\n\
             \x20   spec:\n\
             \x20     restartPolicy: Never\n\
             \x20     containers:\n\
             \x20       - name: trial\n\
             \x20         image: {image}\n\
             \x20         command: [{cmd}]\n\
             \x20         resources:\n\
             \x20           requests: {{cpu: \"{cpus}\"}}\n\
             \x20         volumeMounts:\n\
             \x20           - {{name: results, mountPath: {out}}}\n\
             \x20     volumes:\n\
             \x20       - name: results\n\
             \x20         persistentVolumeClaim: {{claimName: {pvc}}}\n",
            recipe = recipe.display(),
            out = o.out.display(),
            pvc = o.pvc,
            image = o.image,
            par = o.parallelism,
            cpus = o.cpus,
            cmd = cmd.join(", "),
        );
    }
    0
}
