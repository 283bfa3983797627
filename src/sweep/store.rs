//! The results store of a sweep directory: `results.jsonl`, one record per finished attempt,
//! appended under a lock and flushed to disk, and `plan.json`, the trials of the plan last run
//! into the directory (what `kiln sweep report` calls current).
//!
//! A record cut short by a crash mid-write is detected on reading (reported, and its trial
//! runs again) and cut off before the next append, so that a new record never glues onto it.

use super::Trial;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The store's file.
pub const RESULTS: &str = "results.jsonl";
/// Where the bytes of a torn record are kept when the next append cuts them off.
pub const TORN: &str = "results.torn";
/// The current plan.
pub const PLAN: &str = "plan.json";

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Finished, with a summary.
    Ok,
    /// Failed (its error says why); runs again next time.
    Failed,
    /// Stopped by a signal after writing a checkpoint; resumes next time.
    Interrupted,
}

/// One line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The trial.
    pub trial: Trial,
    /// How it ended.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// The run's summary.json.
    pub summary: Option<serde_json::Value>,
    /// Wall time of this attempt, seconds.
    pub seconds: f64,
    /// The kiln version that ran it.
    #[serde(default)]
    pub kiln: String,
}

impl Record {
    /// What identifies the trial: its content key (its index for records without one).
    pub fn identity(&self) -> String {
        if self.trial.key.is_empty() {
            format!("index {}", self.trial.index)
        } else {
            self.trial.key.clone()
        }
    }
}

/// The records of a sweep directory: the last one of each trial, in the order of their
/// first appearance, and what was wrong with the file.
#[derive(Debug, Default)]
pub struct Store {
    /// Records, one per trial.
    pub records: Vec<Record>,
    /// Lines that could not be read, described for the user.
    pub problems: Vec<String>,
}

impl Store {
    /// Read `dir/results.jsonl` (a missing file is an empty store).
    pub fn load(dir: &Path) -> std::io::Result<Store> {
        let path = dir.join(RESULTS);
        let at = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot read `{}`: {e}", path.display()))
        };
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(e) => return Err(at(e)),
        };
        // Appends hold the lock exclusively: a line being written is never read half done.
        f.lock_shared().map_err(at)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(at)?;
        drop(f);
        let mut store = Store::default();
        let torn = !bytes.is_empty() && bytes.last() != Some(&b'\n');
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The piece after the last newline: empty, or a torn record.
        let complete = lines.len() - 1;
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        let read = |mut r: Record| {
            r.summary = r.summary.map(current_metrics);
            r
        };
        for (i, line) in lines.iter().enumerate().take(complete) {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => {
                    let r = read(r);
                    match index.get(&r.identity()) {
                        Some(&k) => store.records[k] = r,
                        None => {
                            index.insert(r.identity(), store.records.len());
                            store.records.push(r);
                        }
                    }
                }
                Err(e) => store.problems.push(format!(
                    "line {} of `{}` is not a record ({e}); it is ignored",
                    i + 1,
                    path.display()
                )),
            }
        }
        if torn {
            store.problems.push(format!(
                "the last line of `{}` is incomplete (a write was cut off, e.g. by a crash); it is ignored, its trial runs again, and the next record is written after it is cut off (kept in {TORN})",
                path.display()
            ));
        }
        Ok(store)
    }

    /// The keys of the trials that finished.
    pub fn done(&self) -> HashSet<&str> {
        self.records
            .iter()
            .filter(|r| r.status == Status::Ok && !r.trial.key.is_empty())
            .map(|r| r.trial.key.as_str())
            .collect()
    }

    /// The record of the trial with `key`.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.trial.key == key)
    }
}

/// A summary's task metrics as this kiln writes them: a summary of an older kiln read through
/// the current types (its grammar rates over zero finished sequences, stored as 0, become
/// undefined), so that a report never averages a 0 that was never measured.
fn current_metrics(mut summary: serde_json::Value) -> serde_json::Value {
    for key in ["metrics", "soft_attention_metrics"] {
        let Some(m) = summary.get(key) else { continue };
        if let Ok(r) = serde_json::from_value::<crate::train::TaskReport>(m.clone()) {
            summary[key] = serde_json::to_value(r).expect("report serializes");
        }
    }
    summary
}

/// Append a record to `dir/results.jsonl`: under an exclusive lock of the file (so that the
/// `kiln run` tasks of a cluster job, each appending its trial, never interleave), after
/// cutting off a torn last line, as one write, flushed to disk.
pub fn append(dir: &Path, r: &Record) -> std::io::Result<()> {
    let path = dir.join(RESULTS);
    let at =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("`{}`: {e}", path.display()));
    let mut line = serde_json::to_string(r).expect("record serializes");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(at)?;
    f.lock().map_err(at)?;
    let len = f.metadata().map_err(at)?.len();
    if len > 0 {
        let mut last = [0u8];
        f.seek(SeekFrom::Start(len - 1)).map_err(at)?;
        f.read_exact(&mut last).map_err(at)?;
        if last[0] != b'\n' {
            cut_torn_tail(&mut f, len, &dir.join(TORN)).map_err(at)?;
        }
    }
    f.write_all(line.as_bytes()).map_err(at)?;
    f.sync_all().map_err(at)
}

/// Move the bytes after the last newline of `f` (of length `len`) to `torn`, and cut them.
fn cut_torn_tail(f: &mut std::fs::File, len: u64, torn: &Path) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(len as usize);
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut kept = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(torn)?;
    kept.write_all(&bytes[keep..])?;
    kept.write_all(b"\n")?;
    kept.sync_all()?;
    f.set_len(keep as u64)?;
    f.sync_all()
}

/// The plan last run into a sweep directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The recipe file, as given.
    pub recipe: String,
    /// The `--set` overrides of every trial.
    pub sets: Vec<String>,
    /// The trials, with their keys.
    pub trials: Vec<Trial>,
}

impl Plan {
    /// Write `dir/plan.json` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("plan serializes");
        crate::util::write_atomic(&dir.join(PLAN), text.as_bytes())
    }

    /// Read `dir/plan.json`, if there is one that reads.
    pub fn load(dir: &Path) -> Option<Plan> {
        let text = std::fs::read_to_string(dir.join(PLAN)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The keys of its trials.
    pub fn keys(&self) -> HashSet<&str> {
        self.trials.iter().map(|t| t.key.as_str()).collect()
    }
}

/// Remove from `dir` the records (and the run directories and logs) of trials that are not
/// in `keep`. Returns the records removed. The caller holds the sweep directory's lock.
pub fn prune(dir: &Path, store: &Store, keep: &HashSet<&str>) -> std::io::Result<usize> {
    let (kept, gone): (Vec<&Record>, Vec<&Record>) = store
        .records
        .iter()
        .partition(|r| keep.contains(r.trial.key.as_str()));
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r).expect("record serializes"));
        text.push('\n');
    }
    crate::util::write_atomic(&dir.join(RESULTS), text.as_bytes())?;
    for r in &gone {
        let _ = std::fs::remove_dir_all(r.trial.dir(dir));
        let _ = std::fs::remove_file(log_path(dir, &r.trial));
    }
    Ok(gone.len())
}

/// A trial's log file (every attempt's output, appended).
pub fn log_path(dir: &Path, t: &Trial) -> PathBuf {
    dir.join(format!("{}.log", t.dir_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, status: Status) -> Record {
        Record {
            trial: Trial {
                index: 0,
                sets: vec![],
                point: String::new(),
                seed: None,
                key: key.into(),
                config: "c".into(),
            },
            status,
            error: None,
            summary: None,
            seconds: 1.0,
            kiln: String::new(),
        }
    }

    #[test]
    fn an_older_kilns_zero_over_no_finished_sequence_reads_as_undefined() {
        let dir = std::env::temp_dir().join(format!("kiln-store-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let set = |finished: f64| {
            format!(
                r#"{{"n":251,"finished":{finished},"rule1":0.0,"rule2":0.0,"rule2_completion":0.0,"grammatical":0.0}}"#
            )
        };
        let line = format!(
            r#"{{"trial":{{"index":0,"sets":[],"point":"","seed":null}},"status":"ok","error":null,"summary":{{"best_val_loss":0.5,"metrics":{{"task":"grammar","id":{},"ood":{},"chance_ood_r1":0.154,"chance_ood_r2_completion":0.445}}}},"seconds":1.0}}"#,
            set(0.5),
            set(0.0)
        );
        std::fs::write(dir.join(RESULTS), line + "\n").unwrap();
        let s = Store::load(&dir).unwrap();
        let m = &s.records[0].summary.as_ref().unwrap()["metrics"];
        assert_eq!(m["ood"]["rule1"], serde_json::Value::Null, "{m}");
        assert_eq!(m["id"]["rule1"], serde_json::json!(0.0), "{m}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_is_reported_and_cut_before_the_next_append() {
        let dir = std::env::temp_dir().join(format!("kiln-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        append(&dir, &record("a", Status::Ok)).unwrap();
        append(&dir, &record("b", Status::Failed)).unwrap();
        // A crash in the middle of the third record's write.
        let whole = serde_json::to_string(&record("c", Status::Ok)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(RESULTS))
            .unwrap();
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        drop(f);
        let s = Store::load(&dir).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.problems[0].contains("incomplete"), "{:?}", s.problems);
        assert_eq!(s.done(), HashSet::from(["a"]));
        // The trial runs again and its record lands on a line of its own.
        append(&dir, &record("c", Status::Ok)).unwrap();
        append(&dir, &record("b", Status::Ok)).unwrap();
        let s = Store::load(&dir).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.done(), HashSet::from(["a", "b", "c"]));
        assert_eq!(s.records.len(), 3, "the last record of a trial wins");
        let torn = std::fs::read_to_string(dir.join(TORN)).unwrap();
        assert_eq!(torn.trim_end(), &whole[..whole.len() / 2]);
        // A garbled line in the middle is reported, not silently skipped.
        let mut text = std::fs::read_to_string(dir.join(RESULTS)).unwrap();
        text.insert_str(0, "{\"trial\": garbage\n");
        std::fs::write(dir.join(RESULTS), text).unwrap();
        let s = Store::load(&dir).unwrap();
        assert_eq!(s.records.len(), 3);
        assert!(s.problems[0].starts_with("line 1 of"), "{:?}", s.problems);
        let _ = std::fs::remove_dir_all(dir);
    }
}
