//! A run's TensorBoard events (see [`crate::tensorboard`]): every number of `metrics.jsonl` as
//! a scalar at its step (`train/loss`, `train/lr`, `train/grad_norm`, ..., `val/loss`, a
//! grammar task's `metrics/...` at each evaluation), the final model's task metrics
//! (`metrics/...`, `soft_attention/...`), and the run's texts at step 0 (the resolved recipe
//! and the graph).
//!
//! They are a view of the run, not part of it: a file that cannot be written is a warning,
//! after which the run goes on without events.

use crate::tensorboard::{self, EventLog};
use serde_json::Value;
use std::path::Path;

/// The event log of a running process.
pub(super) struct Events {
    log: Option<EventLog>,
}

impl Events {
    /// Start this process's event file in `dir`, for a run that goes on after `step`, with
    /// `texts` (tag, Markdown) at step 0 unless the directory's older files hold them.
    pub(super) fn open(dir: &Path, step: u64, texts: &[(String, String)]) -> Self {
        let mut ev = Events { log: None };
        ev.log = ev.check(EventLog::create(dir, step));
        for (tag, markdown) in texts {
            if let Some(log) = &mut ev.log {
                let r = log.text(0, tag, markdown);
                ev.check(r);
            }
        }
        ev
    }

    /// The numbers of `json` (a `metrics.jsonl` line, its `step` left out, or a report) as
    /// scalars `prefix/...` at `step`.
    pub(super) fn json(&mut self, step: u64, prefix: &str, json: &Value) {
        let mut values = Vec::new();
        match json {
            Value::Object(m) => {
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "step") {
                    tensorboard::flatten(&format!("{prefix}/{k}"), v, &mut values);
                }
            }
            v => tensorboard::flatten(prefix, v, &mut values),
        }
        self.scalars(step, &values);
    }

    /// Scalars at `step`.
    pub(super) fn scalars(&mut self, step: u64, values: &[(String, f64)]) {
        if let Some(log) = &mut self.log {
            let r = log.scalars(step, values);
            self.check(r);
        }
    }

    fn check<T>(&mut self, r: Result<T, tensorboard::Error>) -> Option<T> {
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("kiln: warning: {e}; the run goes on without TensorBoard events");
                self.log = None;
                None
            }
        }
    }

    /// Whether events are being written.
    #[cfg(test)]
    pub(super) fn is_on(&self) -> bool {
        self.log.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_directory_is_a_warning_not_an_error() {
        let dir = std::env::temp_dir().join(format!("kiln-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the run directory should be: nothing can be created under it.
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let mut ev = Events::open(&file, 0, &[("recipe".into(), "r".into())]);
        assert!(!ev.is_on());
        ev.json(1, "train", &serde_json::json!({"loss": 1.0}));
        assert!(!ev.is_on());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        // A writable one: the line's numbers, without its step.
        let run = dir.join("run");
        let mut ev = Events::open(&run, 0, &[]);
        assert!(ev.is_on());
        ev.json(
            3,
            "train",
            &serde_json::json!({"step": 3, "loss": 0.5, "lr": 1e-3, "note": "x"}),
        );
        let files = tensorboard::event_files(&run).unwrap();
        let f = tensorboard::read(&files[0]).unwrap();
        assert_eq!(f.scalars("train/loss"), [(3, 0.5)]);
        assert_eq!(f.scalars("train/lr"), [(3, 1e-3)]);
        assert!(f.scalars("train/step").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
