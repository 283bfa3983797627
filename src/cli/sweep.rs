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
            report_cmd(&dir, ReportFormat::Markdown, None);
            i32::from(failed > 0)
        }
        Err(e) => {
            eprintln!("error: sweep directory `{}`: {e}", dir.display());
            2
        }
    }
}

pub fn report_cmd(dir: &Path, format: ReportFormat, metric: Option<&str>) -> i32 {
    let recs = sweep::records(dir);
    if recs.is_empty() {
        eprintln!(
            "error: `{}` holds no sweep results (results.jsonl)",
            dir.display()
        );
        return 2;
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
                for (_, mean, std, reference) in &r.values {
                    cells.push(format!("{mean}"));
                    cells.push(format!("{std}"));
                    if let Some(x) = reference {
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
                for (_, mean, std, reference) in &r.values {
                    let mut c = format!("{mean:.4} ± {std:.4}");
                    if let Some(x) = reference {
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
        let (x, y) = (a.values[mi].1, b.values[mi].1);
        if m.lower {
            x.total_cmp(&y)
        } else {
            y.total_cmp(&x)
        }
    });
    if let Some(best) = scored.first() {
        let (_, mean, std, _) = &best.values[mi];
        eprintln!(
            "best by {pick}: {} ({mean:.4} ± {std:.4}, n = {})",
            best.point, best.n
        );
        if let Some(next) = scored.get(1) {
            let (_, m2, s2, _) = &next.values[mi];
            if (mean - m2).abs() <= std + s2 {
                eprintln!(
                    "  not clearly better than {} ({m2:.4} ± {s2:.4}): the ±1 std ranges overlap",
                    next.point
                );
            }
        }
    }
    0
}
