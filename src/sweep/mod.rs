//! Sweeps: trials expanded from a recipe's `sweep` section, run as `kiln train` processes,
//! recorded in an append-only store, resumed after an interruption, and reported with mean ±
//! std over seeds.
//!
//! The trial index is the contract: the same recipe always expands to the same trials in the
//! same order (grid keys sorted, the last varying fastest; then zip rows; then seeds).

use crate::spec::recipe::Sweep;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One trial: the overrides that make it from the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Stable index.
    pub index: usize,
    /// `key=value` overrides (as `--set`), seed last.
    pub sets: Vec<String>,
    /// The point: the overrides without the seed (trials of one point differ by seed only).
    pub point: String,
    /// The seed, when the sweep lists seeds.
    pub seed: Option<u64>,
}

/// Expand a sweep into its trials.
pub fn plan(s: &Sweep) -> Result<Vec<Trial>, String> {
    let zip_len = s.zip.values().map(Vec::len).next().unwrap_or(1);
    if let Some((k, v)) = s.zip.iter().find(|(_, v)| v.len() != zip_len) {
        return Err(format!(
            "`sweep.zip` lists must have one length: `{k}` has {} values, the first list {zip_len}",
            v.len()
        ));
    }
    if let Some((k, _)) = s.grid.iter().chain(&s.zip).find(|(_, v)| v.is_empty()) {
        return Err(format!("`sweep` key `{k}` has no values"));
    }
    // Grid points: mixed-radix counting, last key fastest.
    let keys: Vec<(&String, &Vec<_>)> = s.grid.iter().collect();
    let n_grid: usize = keys.iter().map(|(_, v)| v.len()).product();
    let mut points: Vec<Vec<String>> = Vec::new();
    for g in 0..n_grid {
        let mut rest = g;
        let mut sets = vec![String::new(); keys.len()];
        for (i, (k, v)) in keys.iter().enumerate().rev() {
            sets[i] = format!("{k}={}", v[rest % v.len()]);
            rest /= v.len();
        }
        for z in 0..zip_len {
            let mut p = sets.clone();
            p.extend(s.zip.iter().map(|(k, v)| format!("{k}={}", v[z])));
            points.push(p);
        }
    }
    if let Some(r) = &s.random {
        let draws = random_draws(r)?;
        points = points
            .into_iter()
            .flat_map(|p| {
                draws.iter().map(move |d| {
                    let mut q = p.clone();
                    q.extend(d.iter().cloned());
                    q
                })
            })
            .collect();
    }
    if !s.when.is_empty() {
        points = conditional(s, points)?;
    }
    let seeds: Vec<Option<u64>> = if s.seeds.is_empty() {
        vec![None]
    } else {
        s.seeds.iter().copied().map(Some).collect()
    };
    let mut trials = Vec::new();
    for p in points {
        for &seed in &seeds {
            let mut sets = p.clone();
            if let Some(x) = seed {
                sets.push(format!("train.seed={x}"));
            }
            trials.push(Trial {
                index: trials.len(),
                sets,
                point: p.join(" "),
                seed,
            });
        }
    }
    Ok(trials)
}

/// The `count` draws of a random search, each a list of `key=value` overrides.
/// The value that the `key=value` overrides `sets` give `key`.
fn set_value<'a>(sets: &'a [String], key: &str) -> Option<&'a str> {
    sets.iter().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Drop the settings whose `when` conditions fail, then the points that became duplicates
/// (the first of equal points keeps its place).
fn conditional(s: &Sweep, points: Vec<Vec<String>>) -> Result<Vec<Vec<String>>, String> {
    let swept: std::collections::BTreeSet<&str> = s
        .grid
        .keys()
        .chain(s.zip.keys())
        .chain(s.random.iter().flat_map(|r| r.params.keys()))
        .map(String::as_str)
        .collect();
    for (k, conds) in &s.when {
        for name in std::iter::once(k).chain(conds.keys()) {
            if !swept.contains(name.as_str()) {
                return Err(format!(
                    "`sweep.when` names `{name}`, which is not swept (by grid, zip or random)"
                ));
            }
        }
        if conds.is_empty() {
            return Err(format!("`sweep.when.{k}` lists no condition"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in points {
        let value = |key: &str| set_value(&p, key);
        let kept: Vec<String> = p
            .iter()
            .filter(|kv| {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                s.when.get(key).is_none_or(|conds| {
                    conds.iter().all(|(c, vals)| {
                        value(c).is_some_and(|v| vals.iter().any(|x| x.to_string() == v))
                    })
                })
            })
            .cloned()
            .collect();
        if seen.insert(kept.clone()) {
            out.push(kept);
        }
    }
    Ok(out)
}

fn random_draws(r: &crate::spec::recipe::RandomSearch) -> Result<Vec<Vec<String>>, String> {
    use crate::spec::recipe::Distribution as D;
    for (k, d) in &r.params {
        let bad = match d {
            D::Uniform { low, high } => (low >= high).then(|| "needs low < high".to_string()),
            D::LogUniform { low, high } => {
                (*low <= 0.0 || low >= high).then(|| "needs 0 < low < high".to_string())
            }
            D::Int { low, high } => (low > high).then(|| "needs low ≤ high".to_string()),
            D::Choice { values } => values.is_empty().then(|| "has no values".to_string()),
        };
        if let Some(why) = bad {
            return Err(format!("`sweep.random.params.{k}` {why}"));
        }
    }
    Ok((0..u64::from(r.count))
        .map(|k| {
            let mut rng = crate::util::Rng::new(r.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            r.params
                .iter()
                .map(|(key, d)| {
                    let v = match d {
                        D::Uniform { low, high } => {
                            format!("{:?}", low + (high - low) * rng.uniform())
                        }
                        D::LogUniform { low, high } => {
                            format!(
                                "{:?}",
                                (low.ln() + (high.ln() - low.ln()) * rng.uniform()).exp()
                            )
                        }
                        D::Int { low, high } => {
                            let span = (high - low) as u64 + 1;
                            (low + (rng.next_u64() % span) as i64).to_string()
                        }
                        D::Choice { values } => {
                            values[(rng.next_u64() % values.len() as u64) as usize].to_string()
                        }
                    };
                    format!("{key}={v}")
                })
                .collect()
        })
        .collect())
}

/// One line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The trial.
    pub trial: Trial,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The run's summary.json.
    pub summary: Option<serde_json::Value>,
    /// Wall time of this attempt, seconds.
    pub seconds: f64,
}

/// The records of a sweep directory (the last one of each trial wins).
pub fn records(dir: &Path) -> Vec<Record> {
    let Ok(text) = std::fs::read_to_string(dir.join("results.jsonl")) else {
        return Vec::new();
    };
    let mut by_trial: std::collections::BTreeMap<usize, Record> = Default::default();
    for line in text.lines() {
        // A line cut by a crash mid-write is skipped; its trial runs again.
        if let Ok(r) = serde_json::from_str::<Record>(line) {
            by_trial.insert(r.trial.index, r);
        }
    }
    by_trial.into_values().collect()
}

fn append(dir: &Path, r: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).expect("record serializes");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))?;
    // One write of the whole line on an O_APPEND file, then flushed to disk.
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// The run directory of trial `i`.
pub fn trial_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("trial-{i:04}"))
}

/// Run the trials not yet recorded as `ok`, at most `jobs` at a time, as `kiln train`
/// processes of `exe`; a trial with a checkpoint resumes from it. Returns (ok, failed).
pub fn run(
    exe: &Path,
    recipe: &Path,
    base_sets: &[String],
    trials: &[Trial],
    dir: &Path,
    jobs: usize,
) -> std::io::Result<(usize, usize)> {
    std::fs::create_dir_all(dir)?;
    let done: std::collections::HashSet<usize> = records(dir)
        .into_iter()
        .filter(|r| r.status == "ok")
        .map(|r| r.trial.index)
        .collect();
    let todo: Vec<&Trial> = trials.iter().filter(|t| !done.contains(&t.index)).collect();
    eprintln!(
        "kiln sweep: {} trials, {} already done, running {} with {} job(s) in {}",
        trials.len(),
        done.len(),
        todo.len(),
        jobs,
        dir.display()
    );
    let (mut ok, mut failed) = (0, 0);
    let mut queue = todo.into_iter();
    let mut running: Vec<(&Trial, std::process::Child, std::time::Instant)> = Vec::new();
    let mut finished = done.len();
    loop {
        while running.len() < jobs.max(1) {
            let Some(t) = queue.next() else { break };
            let tdir = trial_dir(dir, t.index);
            let mut cmd = std::process::Command::new(exe);
            if tdir.join("checkpoint.safetensors").exists() {
                cmd.args(["train", "--resume"]).arg(&tdir);
            } else {
                let _ = std::fs::remove_dir_all(&tdir);
                cmd.arg("train").arg(recipe).arg("--out").arg(&tdir);
                for s in base_sets.iter().chain(&t.sets) {
                    cmd.arg("--set").arg(s);
                }
            }
            let log = std::fs::File::create(dir.join(format!("trial-{:04}.log", t.index)))?;
            cmd.stdout(log.try_clone()?).stderr(log);
            running.push((t, cmd.spawn()?, std::time::Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait()? {
                let (t, _, started) = running.remove(i);
                let tdir = trial_dir(dir, t.index);
                let summary = std::fs::read_to_string(tdir.join("summary.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
                let good = status.success() && summary.is_some();
                let error = (!good).then(|| {
                    let log =
                        std::fs::read_to_string(dir.join(format!("trial-{:04}.log", t.index)))
                            .unwrap_or_default();
                    log.lines()
                        .rev()
                        .find(|l| l.contains("error"))
                        .unwrap_or("the trial exited without a summary")
                        .to_string()
                });
                append(
                    dir,
                    &Record {
                        trial: t.clone(),
                        status: if good { "ok" } else { "failed" }.into(),
                        error: error.clone(),
                        summary,
                        seconds: started.elapsed().as_secs_f64(),
                    },
                )?;
                finished += 1;
                if good {
                    ok += 1;
                } else {
                    failed += 1;
                }
                eprintln!(
                    "[{finished}/{}] trial {} ({}) {} in {:.1} s{}",
                    trials.len(),
                    t.index,
                    t.sets.join(" "),
                    if good { "done" } else { "FAILED" },
                    started.elapsed().as_secs_f64(),
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            } else {
                i += 1;
            }
        }
    }
    Ok((ok, failed))
}

/// A metric of a summary: its name, the JSON pointer, and whether lower is better.
pub struct Metric {
    /// Column name.
    pub name: &'static str,
    /// JSON pointer into summary.json.
    pub pointer: &'static str,
    /// Lower is better.
    pub lower: bool,
    /// JSON pointer of its chance level or baseline, if any.
    pub reference: Option<&'static str>,
}

/// The metrics reported for a task (`grammar` or `uint16`).
pub fn metrics_of(task: &str) -> Vec<Metric> {
    let mut m = vec![Metric {
        name: "best_val_loss",
        pointer: "/best_val_loss",
        lower: true,
        reference: None,
    }];
    match task {
        "grammar" => m.extend([
            Metric {
                name: "id_grammatical",
                pointer: "/metrics/id/grammatical",
                lower: false,
                reference: None,
            },
            Metric {
                name: "ood_r1",
                pointer: "/metrics/ood/rule1",
                lower: false,
                reference: Some("/metrics/chance_ood_r1"),
            },
            Metric {
                name: "ood_r2_completion",
                pointer: "/metrics/ood/rule2_completion",
                lower: false,
                reference: Some("/metrics/chance_ood_r2_completion"),
            },
        ]),
        "forecast" => m.extend([
            Metric {
                name: "test_mse",
                pointer: "/metrics/model/mse",
                lower: true,
                reference: Some("/metrics/seasonal_naive/mse"),
            },
            Metric {
                name: "test_mae",
                pointer: "/metrics/model/mae",
                lower: true,
                reference: Some("/metrics/seasonal_naive/mae"),
            },
        ]),
        "seq2seq" => m.extend([
            Metric {
                name: "exact_match",
                pointer: "/metrics/exact_match",
                lower: false,
                reference: None,
            },
            Metric {
                name: "token_accuracy",
                pointer: "/metrics/token_accuracy",
                lower: false,
                reference: Some("/metrics/chance_token_accuracy"),
            },
        ]),
        "uint16" => m.push(Metric {
            name: "top1",
            pointer: "/metrics/top/0/model",
            lower: false,
            reference: Some("/metrics/top/0/unigram"),
        }),
        _ => {}
    }
    m
}

/// Draw the sweep's PNG charts into `out`: `loss.png` (training loss per trial by step),
/// `val_loss.png` (validation loss per trial) and, for every swept key whose values are
/// numbers, `<metric>-vs-<key>.png` (each point's mean, one line per value of the other keys).
/// Returns the files written.
pub fn plots(dir: &Path, recs: &[Record], out: &Path) -> Result<Vec<PathBuf>, String> {
    use crate::plot::{line_chart, Chart, Series};
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create `{}`: {e}", out.display()))?;
    let mut written = Vec::new();
    let label = |t: &Trial| {
        let short: Vec<String> = t
            .sets
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!(
                    "{}={}",
                    k.rsplit('.').next().unwrap_or(k),
                    v.rsplit('/').next().unwrap_or(v).trim_end_matches(".yaml")
                ),
                None => kv.clone(),
            })
            .collect();
        format!("#{} {}", t.index, short.join(" "))
    };
    for (file, key, title) in [
        ("loss.png", "loss", "training loss"),
        ("val_loss.png", "val_loss", "validation loss"),
    ] {
        let series: Vec<Series> = recs
            .iter()
            .filter(|r| r.status == "ok")
            .map(|r| {
                let text =
                    std::fs::read_to_string(trial_dir(dir, r.trial.index).join("metrics.jsonl"))
                        .unwrap_or_default();
                let points = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
                    .collect();
                Series {
                    name: label(&r.trial),
                    points,
                }
            })
            .filter(|s: &Series| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let path = out.join(file);
        line_chart(
            &path,
            &Chart {
                title,
                x: "step",
                y: key,
                series: &series,
                dots: false,
            },
        )?;
        written.push(path);
    }
    // Metric vs each numeric swept key.
    let (_, metrics) = report(recs);
    let ok: Vec<&Record> = recs.iter().filter(|r| r.status == "ok").collect();
    let keys: std::collections::BTreeSet<String> = ok
        .iter()
        .flat_map(|r| r.trial.sets.iter())
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| k != "train.seed")
        .collect();
    for key in keys {
        let value = |r: &Record, k: &str| set_value(&r.trial.sets, k).map(str::to_string);
        if !ok
            .iter()
            .all(|r| value(r, &key).is_some_and(|v| v.parse::<f64>().is_ok()))
        {
            continue;
        }
        for m in &metrics {
            // One line per combination of the other keys; x the key's value, y the mean.
            let mut lines: std::collections::BTreeMap<
                String,
                std::collections::BTreeMap<String, Vec<f64>>,
            > = Default::default();
            for r in &ok {
                let Some(y) = r
                    .summary
                    .as_ref()
                    .and_then(|s| s.pointer(m.pointer))
                    .and_then(serde_json::Value::as_f64)
                else {
                    continue;
                };
                let others: Vec<&str> = r
                    .trial
                    .sets
                    .iter()
                    .filter(|kv| {
                        !kv.starts_with(&format!("{key}=")) && !kv.starts_with("train.seed=")
                    })
                    .map(String::as_str)
                    .collect();
                let x = value(r, &key).expect("checked above");
                lines
                    .entry(others.join(" "))
                    .or_default()
                    .entry(x)
                    .or_default()
                    .push(y);
            }
            let series: Vec<Series> = lines
                .into_iter()
                .map(|(name, pts)| {
                    let mut points: Vec<(f64, f64)> = pts
                        .into_iter()
                        .map(|(x, ys)| (x.parse().expect("numeric"), mean_std(&ys).0))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        name: if name.is_empty() {
                            m.name.to_string()
                        } else {
                            name
                        },
                        points,
                    }
                })
                .collect();
            let short = key.rsplit('.').next().unwrap_or(&key);
            let path = out.join(format!("{}-vs-{short}.png", m.name));
            let title = format!("{} (mean over seeds) vs {key}", m.name);
            line_chart(
                &path,
                &Chart {
                    title: &title,
                    x: &key,
                    y: m.name,
                    series: &series,
                    dots: true,
                },
            )?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// A metric of one point over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    /// Metric name.
    pub name: String,
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// 95 % confidence interval of the mean (Student t with n − 1 degrees of freedom);
    /// `None` with fewer than two seeds.
    pub ci95: Option<(f64, f64)>,
    /// The metric's reference level (chance or baseline), when it has one.
    pub reference: Option<f64>,
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

impl Stat {
    /// Whether two points' intervals overlap (no significant difference at about 5 %; a
    /// conservative test). Without intervals, the ±1 std ranges are compared.
    pub fn overlaps(&self, other: &Stat) -> bool {
        match (self.ci95, other.ci95) {
            (Some(a), Some(b)) => a.0 <= b.1 && b.0 <= a.1,
            _ => (self.mean - other.mean).abs() <= self.std + other.std,
        }
    }
}

/// One row of the report: a point with its metrics over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The point's overrides.
    pub point: String,
    /// Finished trials (seeds) of the point.
    pub n: usize,
    /// Failed trials of the point.
    pub failed: usize,
    /// Per metric.
    pub values: Vec<Stat>,
}

/// Group the records by point (in trial order) and average each metric over seeds.
pub fn report(recs: &[Record]) -> (Vec<Row>, Vec<Metric>) {
    let task = recs
        .iter()
        .find_map(|r| r.summary.as_ref()?.pointer("/metrics/task")?.as_str())
        .unwrap_or("")
        .to_string();
    let metrics = metrics_of(&task);
    let mut order: Vec<String> = Vec::new();
    for r in recs {
        if !order.contains(&r.trial.point) {
            order.push(r.trial.point.clone());
        }
    }
    let rows = order
        .into_iter()
        .map(|p| {
            let of: Vec<&Record> = recs.iter().filter(|r| r.trial.point == p).collect();
            let good: Vec<&serde_json::Value> =
                of.iter().filter_map(|r| r.summary.as_ref()).collect();
            let values = metrics
                .iter()
                .map(|m| {
                    let xs: Vec<f64> = good
                        .iter()
                        .filter_map(|s| s.pointer(m.pointer)?.as_f64())
                        .collect();
                    let refs: Vec<f64> = m
                        .reference
                        .map(|rp| {
                            good.iter()
                                .filter_map(|s| s.pointer(rp)?.as_f64())
                                .collect()
                        })
                        .unwrap_or_default();
                    let (mean, std) = mean_std(&xs);
                    let reference = (!refs.is_empty()).then(|| mean_std(&refs).0);
                    let ci95 = (xs.len() >= 2).then(|| {
                        let h = t975(xs.len() - 1) * std / (xs.len() as f64).sqrt();
                        (mean - h, mean + h)
                    });
                    Stat {
                        name: m.name.to_string(),
                        mean,
                        std,
                        ci95,
                        reference,
                    }
                })
                .collect();
            Row {
                point: if p.is_empty() { "(recipe)".into() } else { p },
                n: good.len(),
                failed: of.len() - good.len(),
                values,
            }
        })
        .collect();
    (rows, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::recipe::SweepValue as V;

    #[test]
    fn grid_zip_and_seeds_expand_in_a_stable_order() {
        let s = Sweep {
            grid: [
                ("b".to_string(), vec![V::Int(1), V::Int(2)]),
                (
                    "a".to_string(),
                    vec![V::Str("x".into()), V::Str("y".into())],
                ),
            ]
            .into_iter()
            .collect(),
            zip: [
                ("z1".to_string(), vec![V::Float(0.5), V::Float(1.5)]),
                ("z2".to_string(), vec![V::Bool(true), V::Bool(false)]),
            ]
            .into_iter()
            .collect(),
            random: None,
            seeds: vec![7, 8],
            when: Default::default(),
        };
        let t = plan(&s).unwrap();
        assert_eq!(t.len(), 2 * 2 * 2 * 2);
        assert_eq!(
            t[0].sets,
            ["a=x", "b=1", "z1=0.5", "z2=true", "train.seed=7"]
        );
        assert_eq!(
            t[1].sets,
            ["a=x", "b=1", "z1=0.5", "z2=true", "train.seed=8"]
        );
        assert_eq!(t[2].sets[2..4], ["z1=1.5", "z2=false"]);
        assert_eq!(t[4].sets[..2], ["a=x", "b=2"]);
        assert_eq!(t[8].sets[..2], ["a=y", "b=1"]);
        assert!(t.iter().enumerate().all(|(i, x)| x.index == i));
        assert_eq!(t[0].point, t[1].point);
        assert_eq!(plan(&s).unwrap(), t, "deterministic");
        let bad = Sweep {
            zip: [
                ("p".to_string(), vec![V::Int(1)]),
                ("q".to_string(), vec![V::Int(1), V::Int(2)]),
            ]
            .into_iter()
            .collect(),
            ..s
        };
        assert!(plan(&bad).unwrap_err().contains("one length"));
    }

    #[test]
    fn conditional_parameters_apply_only_where_their_condition_holds() {
        let s = Sweep {
            grid: [
                (
                    "model".to_string(),
                    vec![V::Str("t.yaml".into()), V::Str("lstm.yaml".into())],
                ),
                ("model.vars.heads".to_string(), vec![V::Int(2), V::Int(4)]),
            ]
            .into_iter()
            .collect(),
            when: [(
                "model.vars.heads".to_string(),
                [("model".to_string(), vec![V::Str("t.yaml".into())])]
                    .into_iter()
                    .collect(),
            )]
            .into_iter()
            .collect(),
            seeds: vec![0, 1],
            ..Sweep::default()
        };
        let t = plan(&s).unwrap();
        let sets: Vec<Vec<String>> = t.iter().step_by(2).map(|x| x.sets.clone()).collect();
        assert_eq!(
            sets,
            [
                vec!["model=t.yaml", "model.vars.heads=2", "train.seed=0"],
                vec!["model=t.yaml", "model.vars.heads=4", "train.seed=0"],
                vec!["model=lstm.yaml", "train.seed=0"],
            ]
        );
        assert_eq!(
            t.len(),
            6,
            "the LSTM point runs once per seed, not once per heads value"
        );
        let mut bad = s.clone();
        bad.when.insert(
            "train.lr".into(),
            [("model".to_string(), vec![V::Int(1)])]
                .into_iter()
                .collect(),
        );
        assert!(plan(&bad)
            .unwrap_err()
            .contains("`train.lr`, which is not swept"));
    }

    #[test]
    fn random_draws_stay_in_range_and_are_reproducible() {
        use crate::spec::recipe::{Distribution as D, RandomSearch};
        let s = Sweep {
            grid: [("g".to_string(), vec![V::Int(1), V::Int(2)])]
                .into_iter()
                .collect(),
            zip: Default::default(),
            random: Some(RandomSearch {
                count: 50,
                seed: 3,
                params: [
                    (
                        "lr".to_string(),
                        D::LogUniform {
                            low: 1e-4,
                            high: 1e-2,
                        },
                    ),
                    ("d".to_string(), D::Int { low: 2, high: 4 }),
                    (
                        "m".to_string(),
                        D::Choice {
                            values: vec![V::Str("a".into()), V::Str("b".into())],
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }),
            seeds: vec![],
            when: Default::default(),
        };
        let t = plan(&s).unwrap();
        assert_eq!(t.len(), 2 * 50);
        assert_eq!(plan(&s).unwrap(), t);
        // Draw k is the same under every grid point.
        assert_eq!(t[0].sets[1..], t[50].sets[1..]);
        let val = |x: &Trial, k: &str| {
            x.sets
                .iter()
                .find_map(|s| s.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let mut ds = std::collections::BTreeSet::new();
        for x in &t {
            let lr: f64 = val(x, "lr").parse().unwrap();
            assert!((1e-4..1e-2).contains(&lr));
            let d: i64 = val(x, "d").parse().unwrap();
            ds.insert(d);
            assert!(["a", "b"].contains(&val(x, "m").as_str()));
        }
        assert_eq!(ds.into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        let mut bad = s.clone();
        bad.random.as_mut().unwrap().params.insert(
            "x".into(),
            D::LogUniform {
                low: 0.0,
                high: 1.0,
            },
        );
        assert!(plan(&bad).unwrap_err().contains("0 < low < high"));
    }

    #[test]
    fn plots_draw_loss_curves_and_metrics_against_numeric_keys() {
        let dir = std::env::temp_dir().join(format!("kiln-plots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut recs = Vec::new();
        for (i, (lr, seed)) in [("0.001", 0), ("0.001", 1), ("0.003", 0), ("0.003", 1)]
            .into_iter()
            .enumerate()
        {
            let t = trial_dir(&dir, i);
            std::fs::create_dir_all(&t).unwrap();
            let lines: Vec<String> = (1..=20)
                .map(|s| {
                    format!(
                        "{{\"step\":{s},\"loss\":{}}}",
                        2.0 / f64::from(s + i as i32)
                    )
                })
                .chain(std::iter::once(
                    "{\"step\":20,\"val_loss\":0.5}".to_string(),
                ))
                .collect();
            std::fs::write(t.join("metrics.jsonl"), lines.join("\n")).unwrap();
            recs.push(Record {
                trial: Trial {
                    index: i,
                    sets: vec![
                        format!("train.optimizer.lr={lr}"),
                        format!("train.seed={seed}"),
                    ],
                    point: format!("train.optimizer.lr={lr}"),
                    seed: Some(seed),
                },
                status: "ok".into(),
                error: None,
                summary: Some(serde_json::json!({
                    "best_val_loss": 0.5 + i as f64 / 10.0,
                    "metrics": {"task": "uint16", "top": [{"model": 0.3, "unigram": 0.1}]}
                })),
                seconds: 1.0,
            });
        }
        let files = plots(&dir, &recs, &dir.join("plots")).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "loss.png",
                "val_loss.png",
                "best_val_loss-vs-lr.png",
                "top1-vs-lr.png"
            ]
        );
        for f in &files {
            assert_eq!(&std::fs::read(f).unwrap()[1..4], b"PNG");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(200), 1.96);
        let st = |mean, h| Stat {
            name: String::new(),
            mean,
            std: 0.0,
            ci95: Some((mean - h, mean + h)),
            reference: None,
        };
        assert!(st(1.0, 0.5).overlaps(&st(1.8, 0.4)));
        assert!(!st(1.0, 0.3).overlaps(&st(1.8, 0.4)));
    }
}
