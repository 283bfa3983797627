//! Reports: the metrics of each configuration over its seeds (mean ± std, a 95 % interval),
//! beside their reference levels, and the best configuration.
//!
//! Rows group trials by their configuration key, so runs of different configurations are
//! never averaged together, and a metric a trial could not define (a rule metric over no
//! finished sequence) is counted as undefined, never as a zero.

use super::store::{Plan, Record, Status, Store};
use serde::Serialize;

/// A metric of a summary: its name, the JSON pointer, and whether lower is better.
#[derive(Debug, Clone)]
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
            // Over the run's evaluations: at the lowest validation loss, and the maximum (the
            // rule-extrapolation paper's per-run numbers).
            Metric {
                name: "ood_r1_at_min_val",
                pointer: "/evaluations/at_min_val_loss/metrics/ood/rule1",
                lower: false,
                reference: Some("/metrics/chance_ood_r1"),
            },
            Metric {
                name: "ood_r1_max",
                pointer: "/evaluations/max_over_evaluations/ood/rule1",
                lower: false,
                reference: Some("/metrics/chance_ood_r1"),
            },
            Metric {
                name: "ood_r2_completion_max",
                pointer: "/evaluations/max_over_evaluations/ood/rule2_completion",
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
        "text" => m.extend([
            Metric {
                name: "test_nats_per_token",
                pointer: "/metrics/model/nats_per_token",
                lower: true,
                reference: Some("/metrics/ngram/nats_per_token"),
            },
            Metric {
                name: "test_bits_per_unit",
                pointer: "/metrics/model/bits_per_unit",
                lower: true,
                reference: Some("/metrics/ngram/bits_per_unit"),
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

/// A metric of one configuration over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    /// Metric name.
    pub name: String,
    /// Trials in which the metric is defined: the mean and the interval are over these.
    pub n: usize,
    /// Finished trials in which it is undefined (null in their summaries).
    pub undefined: usize,
    /// Mean over the trials that define it (`None` when none does).
    pub mean: Option<f64>,
    /// Sample standard deviation.
    pub std: f64,
    /// 95 % confidence interval of the mean (Student t with n − 1 degrees of freedom);
    /// `None` with fewer than two values.
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
            _ => match (self.mean, other.mean) {
                (Some(a), Some(b)) => (a - b).abs() <= self.std + other.std,
                _ => true,
            },
        }
    }
}

/// One row of the report: a configuration with its metrics over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The point's overrides.
    pub point: String,
    /// The configuration key.
    pub config: String,
    /// Finished trials (seeds) of the configuration.
    pub n: usize,
    /// Failed trials.
    pub failed: usize,
    /// Trials stopped by a signal (they resume on the next run).
    pub interrupted: usize,
    /// Trials of the plan not run yet.
    pub pending: usize,
    /// Per metric.
    pub values: Vec<Stat>,
}

/// Which records a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The trials of the current plan (`plan.json`); every record where there is no plan.
    Current,
    /// The records of other configurations (earlier plans).
    Stale,
}

/// A sweep's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// One row per configuration, in plan order.
    pub rows: Vec<Row>,
    /// The task's metrics.
    pub metrics: Vec<Metric>,
    /// Records of other configurations left out (in the `Current` scope).
    pub stale: usize,
    /// Records written before trials were keyed by content (their configuration is unknown).
    pub unkeyed: usize,
}

/// The report of `store` for the trials of `plan` (or, in the `Stale` scope, of the records
/// outside it).
pub fn report(store: &Store, plan: Option<&Plan>, scope: Scope) -> Report {
    let planned = plan.map(Plan::keys).unwrap_or_default();
    let in_plan = |r: &Record| plan.is_none() || planned.contains(r.trial.key.as_str());
    // (trial, its record): the plan's trials in order, or the records themselves.
    let entries: Vec<(&super::Trial, Option<&Record>)> = match (plan, scope) {
        (Some(p), Scope::Current) => p.trials.iter().map(|t| (t, store.get(&t.key))).collect(),
        (_, Scope::Stale) => store
            .records
            .iter()
            .filter(|r| plan.is_some() && !in_plan(r))
            .map(|r| (&r.trial, Some(r)))
            .collect(),
        (None, Scope::Current) => store.records.iter().map(|r| (&r.trial, Some(r))).collect(),
    };
    let task = entries
        .iter()
        .filter_map(|(_, r)| r.and_then(|r| r.summary.as_ref()))
        .find_map(|s| s.pointer("/metrics/task")?.as_str())
        .unwrap_or("")
        .to_string();
    let metrics = metrics_of(&task);
    // Group by configuration (records without a key: by point), in order of appearance.
    let group = |t: &super::Trial| {
        if t.config.is_empty() {
            format!("point {}", t.point)
        } else {
            t.config.clone()
        }
    };
    let mut order: Vec<String> = Vec::new();
    for (t, _) in &entries {
        let g = group(t);
        if !order.contains(&g) {
            order.push(g);
        }
    }
    let rows = order
        .into_iter()
        .map(|g| {
            let of: Vec<&(&super::Trial, Option<&Record>)> =
                entries.iter().filter(|(t, _)| group(t) == g).collect();
            let count = |s: Status| {
                of.iter()
                    .filter(|(_, r)| r.is_some_and(|r| r.status == s))
                    .count()
            };
            let good: Vec<&serde_json::Value> = of
                .iter()
                .filter_map(|(_, r)| r.filter(|r| r.status == Status::Ok)?.summary.as_ref())
                .collect();
            let values = metrics.iter().map(|m| stat(m, &good)).collect();
            let t = of[0].0;
            let mut point = if t.point.is_empty() {
                "(recipe)".to_string()
            } else {
                t.point.clone()
            };
            if scope == Scope::Stale {
                point.push_str(&format!(
                    " [config {}]",
                    if t.config.is_empty() {
                        "unknown"
                    } else {
                        &t.config
                    }
                ));
            }
            Row {
                point,
                config: t.config.clone(),
                n: good.len(),
                failed: count(Status::Failed),
                interrupted: count(Status::Interrupted),
                pending: of.iter().filter(|(_, r)| r.is_none()).count(),
                values,
            }
        })
        .collect();
    Report {
        rows,
        metrics,
        stale: store.records.iter().filter(|r| !in_plan(r)).count(),
        unkeyed: store
            .records
            .iter()
            .filter(|r| r.trial.key.is_empty())
            .count(),
    }
}

/// Metric `m` over the summaries of finished trials.
fn stat(m: &Metric, good: &[&serde_json::Value]) -> Stat {
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
    let ci95 = (xs.len() >= 2).then(|| {
        let h = t975(xs.len() - 1) * std / (xs.len() as f64).sqrt();
        (mean - h, mean + h)
    });
    Stat {
        name: m.name.to_string(),
        n: xs.len(),
        undefined: good.len() - xs.len(),
        mean: (!xs.is_empty()).then_some(mean),
        std,
        ci95,
        reference: (!refs.is_empty()).then(|| mean_std(&refs).0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(200), 1.96);
        let st = |mean: f64, h| Stat {
            name: String::new(),
            n: 2,
            undefined: 0,
            mean: Some(mean),
            std: 0.0,
            ci95: Some((mean - h, mean + h)),
            reference: None,
        };
        assert!(st(1.0, 0.5).overlaps(&st(1.8, 0.4)));
        assert!(!st(1.0, 0.3).overlaps(&st(1.8, 0.4)));
    }
}
