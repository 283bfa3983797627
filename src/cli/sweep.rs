//! `kiln sweep`, `kiln sweep plan`, `kiln sweep report`.

use super::ReportFormat;
use crate::sweep::{self, Trial};
use std::path::{Path, PathBuf};

/// Expand and validate every trial; print the plan. Err carries the exit status.
pub fn plan_cmd(recipe: &Path, set: &[String]) -> Result<(String, Vec<Trial>), i32> {
    let (name, trials) = checked_trials(recipe, set)?;
    println!("{name}: {} trial(s)", trials.len());
    for t in &trials {
        println!("{:>5}  {}", t.index, t.sets.join(" "));
    }
    Ok((name, trials))
}

fn checked_trials(recipe: &Path, set: &[String]) -> Result<(String, Vec<Trial>), i32> {
    let (doc, _) = crate::lower::compile_recipe(recipe, set).map_err(|e| {
        eprint!("{e}");
        1
    })?;
    let name = doc.spec.name.clone().unwrap_or_else(|| "sweep".into());
    let Some(s) = &doc.spec.sweep else {
        eprintln!(
            "error: `{}` has no `sweep` section; add e.g. `sweep: {{grid: {{train.optimizer.lr: [1e-3, 3e-3]}}, seeds: [0, 1]}}`",
            recipe.display()
        );
        return Err(1);
    };
    let trials = sweep::plan(s).map_err(|e| {
        eprintln!("error: {e}");
        1
    })?;
    // Every trial is checked before any starts: one bad point fails fast.
    for t in &trials {
        let sets: Vec<String> = set.iter().chain(&t.sets).cloned().collect();
        if let Err(e) = crate::lower::compile_recipe(recipe, &sets) {
            eprint!("{e}");
            eprintln!(
                "error: trial {} ({}) is not a valid recipe; nothing was run",
                t.index,
                t.sets.join(" ")
            );
            return Err(1);
        }
    }
    Ok((name, trials))
}

pub fn run_cmd(recipe: &Path, set: &[String], out: Option<PathBuf>, jobs: usize) -> i32 {
    let (name, trials) = match checked_trials(recipe, set) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let dir = out.unwrap_or_else(|| PathBuf::from("sweeps").join(&name));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the kiln executable: {e}");
            return 2;
        }
    };
    match sweep::run(&exe, recipe, set, &trials, &dir, jobs) {
        Ok((_, failed)) => {
            report_cmd(&dir, ReportFormat::Markdown, None, true);
            i32::from(failed > 0)
        }
        Err(e) => {
            eprintln!("error: sweep directory `{}`: {e}", dir.display());
            2
        }
    }
}

pub fn report_cmd(dir: &Path, format: ReportFormat, metric: Option<&str>, plots: bool) -> i32 {
    let recs = sweep::records(dir);
    if recs.is_empty() {
        eprintln!(
            "error: `{}` holds no sweep results (results.jsonl)",
            dir.display()
        );
        return 2;
    }
    if plots {
        match sweep::plots(dir, &recs, &dir.join("plots")) {
            Ok(files) => {
                for f in files {
                    eprintln!("wrote {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    let (rows, metrics) = sweep::report(&recs);
    let pick = metric.unwrap_or("best_val_loss");
    let Some(mi) = metrics.iter().position(|m| m.name == pick) else {
        let names: Vec<&str> = metrics.iter().map(|m| m.name).collect();
        eprintln!(
            "error: no metric `{pick}`; choose one of {}",
            names.join(", ")
        );
        return 2;
    };
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        ),
        ReportFormat::Csv => {
            let mut head = vec!["point".to_string(), "n".into(), "failed".into()];
            for m in &metrics {
                head.push(format!("{}_mean", m.name));
                head.push(format!("{}_std", m.name));
                head.push(format!("{}_ci95_low", m.name));
                head.push(format!("{}_ci95_high", m.name));
                if m.reference.is_some() {
                    head.push(format!("{}_reference", m.name));
                }
            }
            println!("{}", head.join(","));
            for r in &rows {
                let mut cells = vec![
                    format!("\"{}\"", r.point),
                    r.n.to_string(),
                    r.failed.to_string(),
                ];
                for v in &r.values {
                    cells.push(format!("{}", v.mean));
                    cells.push(format!("{}", v.std));
                    let (lo, hi) = v.ci95.map_or((String::new(), String::new()), |c| {
                        (c.0.to_string(), c.1.to_string())
                    });
                    cells.push(lo);
                    cells.push(hi);
                    if let Some(x) = v.reference {
                        cells.push(format!("{x}"));
                    }
                }
                println!("{}", cells.join(","));
            }
        }
        ReportFormat::Markdown => {
            let mut head = vec!["point".to_string(), "n".into()];
            head.extend(metrics.iter().map(|m| {
                if m.reference.is_some() {
                    format!("{} (reference)", m.name)
                } else {
                    m.name.to_string()
                }
            }));
            println!("| {} |", head.join(" | "));
            println!("|{}", "---|".repeat(head.len()));
            for r in &rows {
                let mut cells = vec![
                    r.point.clone(),
                    if r.failed > 0 {
                        format!("{} ({} failed)", r.n, r.failed)
                    } else {
                        r.n.to_string()
                    },
                ];
                for v in &r.values {
                    let mut c = format!("{:.4} ± {:.4}", v.mean, v.std);
                    if let Some(x) = v.reference {
                        c.push_str(&format!(" ({x:.4})"));
                    }
                    cells.push(c);
                }
                println!("| {} |", cells.join(" | "));
            }
        }
    }
    // The best point, and whether it is distinguishable from the runner-up.
    let m = &metrics[mi];
    let mut scored: Vec<&sweep::Row> = rows.iter().filter(|r| r.n > 0).collect();
    scored.sort_by(|a, b| {
        let (x, y) = (a.values[mi].mean, b.values[mi].mean);
        if m.lower {
            x.total_cmp(&y)
        } else {
            y.total_cmp(&x)
        }
    });
    if let Some(best) = scored.first() {
        let b = &best.values[mi];
        let ci = b
            .ci95
            .map(|c| format!(", 95% CI [{:.4}, {:.4}]", c.0, c.1))
            .unwrap_or_default();
        eprintln!(
            "best by {pick}: {} ({:.4} ± {:.4}{ci}, n = {})",
            best.point, b.mean, b.std, best.n
        );
        for other in &scored[1..] {
            let o = &other.values[mi];
            if b.overlaps(o) {
                eprintln!(
                    "  not significantly different from {} ({:.4} ± {:.4}): {} overlap",
                    other.point,
                    o.mean,
                    o.std,
                    if b.ci95.is_some() && o.ci95.is_some() {
                        "the 95% intervals"
                    } else {
                        "the ±1 std ranges (fewer than 2 seeds)"
                    }
                );
            }
        }
    }
    0
}

pub fn run_one_cmd(recipe: &Path, trial: Option<usize>, set: &[String], out: &Path) -> i32 {
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
        return 2;
    };
    let (_, trials) = match checked_trials(recipe, set) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(t) = trials.get(index) else {
        eprintln!(
            "error: trial {index} does not exist: this sweep has {} trials (0..{})",
            trials.len(),
            trials.len().saturating_sub(1)
        );
        return 2;
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the kiln executable: {e}");
            return 2;
        }
    };
    match sweep::run(&exe, recipe, set, std::slice::from_ref(t), out, 1) {
        Ok((_, failed)) => i32::from(failed > 0),
        Err(e) => {
            eprintln!("error: sweep directory `{}`: {e}", out.display());
            2
        }
    }
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
    let (name, trials) = match checked_trials(recipe, set) {
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
