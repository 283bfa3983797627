//! Task metrics over a run's evaluations. The rule-extrapolation paper reports, per run, the
//! maximum over its validation checkpoints of each rule metric; kiln's final metrics are those
//! of the last model. So a grammar task's metrics are also computed at every evaluation
//! (written to `metrics.jsonl` beside the validation loss), and the summary holds both the
//! metrics at the lowest validation loss and the maximum of each metric over the evaluations,
//! labelled as such.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtStep {
    /// The step.
    pub step: u64,
    /// Its validation loss.
    pub val_loss: f64,
    /// The task's metrics there (as in summary.json's `metrics`).
    pub metrics: Value,
}

/// Task metrics over the evaluations of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Evaluations with task metrics.
    pub evaluations: usize,
    /// The evaluation with the lowest validation loss (the first of equal ones).
    pub at_min_val_loss: AtStep,
    /// Each metric's maximum over the evaluations (null where no evaluation defined it).
    pub max_over_evaluations: Value,
}

/// The history in a run's `metrics.jsonl` (its lines with `task_metrics`), if it has any.
pub fn read(metrics_jsonl: &Path) -> Option<History> {
    let text = std::fs::read_to_string(metrics_jsonl).ok()?;
    let evals: Vec<AtStep> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some(AtStep {
                step: v.get("step")?.as_u64()?,
                val_loss: v.get("val_loss")?.as_f64().unwrap_or(f64::NAN),
                metrics: v.get("task_metrics")?.clone(),
            })
        })
        .collect();
    of(&evals)
}

/// The history of `evals` (in step order); `None` without evaluations.
pub fn of(evals: &[AtStep]) -> Option<History> {
    let mut best = evals.first()?;
    for e in evals {
        if e.val_loss < best.val_loss || (best.val_loss.is_nan() && !e.val_loss.is_nan()) {
            best = e;
        }
    }
    let max = evals
        .iter()
        .skip(1)
        .fold(evals[0].metrics.clone(), |m, e| max_json(&m, &e.metrics));
    Some(History {
        evaluations: evals.len(),
        at_min_val_loss: best.clone(),
        max_over_evaluations: max,
    })
}

/// Leaf by leaf, the larger number (a number beats null; non-numbers keep the first value).
fn max_json(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => Value::Object(
            x.iter()
                .map(|(k, v)| (k.clone(), y.get(k).map_or(v.clone(), |w| max_json(v, w))))
                .collect(),
        ),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            Value::Array(x.iter().zip(y).map(|(v, w)| max_json(v, w)).collect())
        }
        (Value::Number(_), Value::Number(_)) => {
            let (p, q) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            if q > p {
                b.clone()
            } else {
                a.clone()
            }
        }
        (Value::Null, Value::Number(_)) => b.clone(),
        _ => a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(step: u64, val_loss: f64, r1: Value, n: u64) -> AtStep {
        AtStep {
            step,
            val_loss,
            metrics: json!({"task": "grammar", "ood": {"n": 251, "finished_n": n, "rule1": r1}}),
        }
    }

    #[test]
    fn the_best_evaluation_and_the_maxima_are_kept_apart() {
        let h = of(&[
            at(100, 0.9, Value::Null, 0),
            at(200, 0.5, json!(0.25), 40),
            at(300, 0.6, json!(0.40), 30),
            at(400, 0.5, json!(0.10), 50),
        ])
        .unwrap();
        assert_eq!(h.evaluations, 4);
        // The first of the equal lowest losses; its own metrics, not the maxima.
        assert_eq!(h.at_min_val_loss.step, 200);
        assert_eq!(h.at_min_val_loss.metrics["ood"]["rule1"], json!(0.25));
        assert_eq!(h.max_over_evaluations["ood"]["rule1"], json!(0.40));
        assert_eq!(h.max_over_evaluations["ood"]["finished_n"], json!(50));
        assert_eq!(h.max_over_evaluations["task"], json!("grammar"));
        // Undefined everywhere stays undefined.
        let h = of(&[at(1, 1.0, Value::Null, 0), at(2, 2.0, Value::Null, 0)]).unwrap();
        assert_eq!(h.max_over_evaluations["ood"]["rule1"], Value::Null);
        assert!(of(&[]).is_none());
    }
}
