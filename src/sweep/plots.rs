//! The sweep's PNG charts: loss curves per trial and each metric against every numeric
//! swept key.

use super::report::{mean_std, Metric};
use super::store::{Record, Status};
use super::{set_value, Trial};
use std::path::{Path, PathBuf};

/// Draw the sweep's PNG charts into `out`: `loss.png` (training loss per trial by step),
/// `val_loss.png` (validation loss per trial) and, for every swept key whose values are
/// numbers, `<metric>-vs-<key>.png` (each point's mean, one line per value of the other keys).
/// Returns the files written.
pub fn plots(
    dir: &Path,
    recs: &[&Record],
    metrics: &[Metric],
    out: &Path,
) -> Result<Vec<PathBuf>, String> {
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
            .filter(|r| r.status == Status::Ok)
            .map(|r| {
                let text = std::fs::read_to_string(r.trial.dir(dir).join("metrics.jsonl"))
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
    let ok: Vec<&Record> = recs
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok)
        .collect();
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
        for m in metrics {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_draw_loss_curves_and_metrics_against_numeric_keys() {
        let dir = std::env::temp_dir().join(format!("kiln-plots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut recs = Vec::new();
        for (i, (lr, seed)) in [("0.001", 0), ("0.001", 1), ("0.003", 0), ("0.003", 1)]
            .into_iter()
            .enumerate()
        {
            let trial = Trial {
                index: i,
                sets: vec![
                    format!("train.optimizer.lr={lr}"),
                    format!("train.seed={seed}"),
                ],
                point: format!("train.optimizer.lr={lr}"),
                seed: Some(seed),
                key: format!("k{i}"),
                config: format!("c{lr}"),
            };
            let t = trial.dir(&dir);
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
                trial,
                status: Status::Ok,
                error: None,
                summary: Some(serde_json::json!({
                    "best_val_loss": 0.5 + i as f64 / 10.0,
                    "metrics": {"task": "uint16", "top": [{"model": 0.3, "unigram": 0.1}]}
                })),
                seconds: 1.0,
                kiln: String::new(),
            });
        }
        let recs: Vec<&Record> = recs.iter().collect();
        let metrics = crate::sweep::metrics_of("uint16");
        let files = plots(&dir, &recs, &metrics, &dir.join("plots")).unwrap();
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
}
