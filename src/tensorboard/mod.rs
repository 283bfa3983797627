//! TensorBoard event files: what `kiln train` writes into a run directory so that
//! `tensorboard --logdir runs/` shows kiln's runs (scalars and text), and the reader that
//! checks them.
//!
//! A file is a sequence of TFRecord records (see [`record`]), each a protobuf `Event` (see
//! [`proto`]); the first holds the file version `brain.Event:2`. Every process that trains a
//! run starts a file of its own, `events.out.tfevents.<unix seconds>.<host>`, written record by
//! record (a run stopped by a signal, or killed, keeps what it wrote).

pub mod proto;
pub mod record;

pub use proto::{Event, Summary, Value, What};

use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The version the first event of a file records (TensorBoard reads it as version 2: restarts
/// are marked by `SessionLog START` events).
pub const FILE_VERSION: &str = "brain.Event:2";

/// Errors of event files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing (or creating, or listing the directory) failed.
    #[error("cannot write the TensorBoard events `{}`: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("cannot read the TensorBoard events `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record whose CRCs match holds no `Event`: not a file kiln (or TensorFlow) wrote.
    #[error("`{}`: record {index} is not a TensorBoard event: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The record's index.
        index: usize,
        /// Why.
        source: prost::DecodeError,
    },
}

/// An event file read back.
#[derive(Debug, Clone)]
pub struct EventFile {
    /// Its path.
    pub path: PathBuf,
    /// Its events, in order.
    pub events: Vec<Event>,
    /// Why the reading stopped before the end of the file (a torn last record), if it did.
    pub damage: Option<record::Damage>,
}

impl EventFile {
    /// The `(step, value)` of every scalar tagged `tag`, in order.
    pub fn scalars(&self, tag: &str) -> Vec<(i64, f32)> {
        self.values()
            .filter(|(_, v)| v.tag == tag)
            .filter_map(|(s, v)| Some((s, v.as_scalar()?)))
            .collect()
    }

    /// The `(step, text)` of every text summary tagged `tag`.
    pub fn texts(&self, tag: &str) -> Vec<(i64, String)> {
        self.values()
            .filter(|(_, v)| v.tag == tag)
            .filter_map(|(s, v)| Some((s, v.as_text()?.to_string())))
            .collect()
    }

    /// Every summary value with its step.
    pub fn values(&self) -> impl Iterator<Item = (i64, &Value)> {
        self.events.iter().flat_map(|e| match &e.what {
            Some(What::Summary(s)) => s.value.iter().map(|v| (e.step, v)).collect(),
            _ => Vec::new(),
        })
    }
}

/// Whether TensorBoard reads `name` as an event file (it reads every name with `tfevents`);
/// hidden names (a rewrite's temporary file) are not kiln's.
pub fn is_event_file(name: &str) -> bool {
    name.contains("tfevents") && !name.starts_with('.')
}

/// The event files directly in `dir`, in TensorBoard's order (by name); none if `dir` does not
/// exist.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| is_event_file(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Read an event file: its records (both CRCs checked) decoded as events, up to the first
/// damaged record.
pub fn read(path: &Path) -> Result<EventFile, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (records, damage) = record::unframe(&bytes);
    let events = records
        .iter()
        .enumerate()
        .map(|(index, r)| {
            Event::decode(*r).map_err(|source| Error::Decode {
                path: path.to_path_buf(),
                index,
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(EventFile {
        path: path.to_path_buf(),
        events,
        damage,
    })
}

/// Every numeric leaf of `json` as a scalar tagged by its path under `prefix`
/// (`metrics/ood/rule1`). An array's elements are named by their index, or `top-<k>` where they
/// are objects with a numeric `k` (top-k accuracies); booleans, strings and nulls (undefined
/// metrics) are left out.
pub fn flatten(prefix: &str, json: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    use serde_json::Value as J;
    match json {
        J::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_string(), x));
            }
        }
        J::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}/{k}"), v, out);
            }
        }
        J::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let name = match v.get("k").and_then(J::as_u64) {
                    Some(k) => format!("{prefix}-{k}"),
                    None => format!("{prefix}/{i}"),
                };
                flatten(&name, v, out);
            }
        }
        J::Null | J::Bool(_) | J::String(_) => {}
    }
}

/// `text` as a Markdown code block in language `lang` (TensorBoard's Text tab renders
/// Markdown; a block keeps the text verbatim, in a fixed-width font).
pub fn code_block(lang: &str, text: &str) -> String {
    let mut fence = "```".to_string();
    while text.contains(&fence) {
        fence.push('`');
    }
    format!("{fence}{lang}\n{}\n{fence}", text.trim_end())
}

/// The event file this process writes into a run directory.
#[derive(Debug)]
pub struct EventLog {
    file: std::fs::File,
    path: PathBuf,
    /// Per tag, the last step the directory's older files hold: those steps are not written
    /// again.
    covered: HashMap<String, i64>,
}

impl EventLog {
    /// Start a new event file in `dir` (created if needed) for a run that goes on after
    /// `step` (0 for a new run). Older event files there are cut back to `step`: the events
    /// of later steps were written after the checkpoint the run resumes from and are written
    /// again, so they are removed (as `metrics.jsonl` is cut back), and a torn last record
    /// too. The new file then starts with a `SessionLog START` at `step + 1`, which makes a
    /// TensorBoard that had already read the removed events drop them.
    pub fn create(dir: &Path, step: u64) -> Result<Self, Error> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let older = event_files(dir)?;
        let mut covered: HashMap<String, i64> = HashMap::new();
        for path in &older {
            cut_back(path, step, &mut covered)?;
        }
        let (file, path) = new_file(dir)?;
        let mut log = EventLog {
            file,
            path,
            covered,
        };
        log.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        if !older.is_empty() {
            log.write(&Event {
                wall_time: now(),
                step: step.saturating_add(1),
                what: Some(What::SessionLog(proto::SessionLog {
                    status: proto::SESSION_START,
                })),
            })?;
        }
        Ok(log)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars at `step`, as one event (values of tags the older files already hold at this
    /// step are left out).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), Error> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let value: Vec<Value> = values
            .iter()
            .filter(|(tag, _)| !self.is_covered(tag, step))
            .map(|(tag, v)| Value::scalar(tag, *v as f32))
            .collect();
        self.summary(step, value)
    }

    /// A text summary (Markdown, shown by TensorBoard's Text tab) at `step`.
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) -> Result<(), Error> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        if self.is_covered(tag, step) {
            return Ok(());
        }
        self.summary(step, vec![Value::text(tag, markdown)])
    }

    fn is_covered(&self, tag: &str, step: i64) -> bool {
        self.covered.get(tag).is_some_and(|&last| step <= last)
    }

    fn summary(&mut self, step: i64, value: Vec<Value>) -> Result<(), Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Append one record with a single write (no buffer: what is written stays written).
    fn write(&mut self, event: &Event) -> Result<(), Error> {
        self.file
            .write_all(&record::frame(&event.encode_to_vec()))
            .map_err(|source| Error::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name as a file-name part (TensorBoard's `<unix seconds>.<host>` naming).
fn host() -> String {
    let name: String = sysinfo::System::host_name()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Create `events.out.tfevents.<unix seconds>.<host>` in `dir`; where that name is taken (a
/// second process in the same second), `.1`, `.2`, ... are appended, which keeps the files in
/// the order they were started when sorted by name.
fn new_file(dir: &Path) -> Result<(std::fs::File, PathBuf), Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("events.out.tfevents.{secs:010}.{}", host());
    for n in 0u32.. {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {}
            Err(source) => return Err(Error::Write { path, source }),
        }
    }
    unreachable!("the loop returns by n = 1000")
}

/// Cut the event file `path` back to the events of steps up to `step` (the file version and
/// session events are kept) and drop a torn last record, rewriting it only when something is
/// removed; record in `covered` the last step of each tag kept.
fn cut_back(path: &Path, step: i64, covered: &mut HashMap<String, i64>) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (records, damage) = record::unframe(&bytes);
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = damage.is_some();
    for (index, r) in records.iter().enumerate() {
        let event = Event::decode(*r).map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            index,
            source,
        })?;
        let keep = match &event.what {
            Some(What::Summary(s)) => {
                if event.step <= step {
                    for v in &s.value {
                        let last = covered.entry(v.tag.clone()).or_insert(event.step);
                        *last = (*last).max(event.step);
                    }
                }
                event.step <= step
            }
            _ => true,
        };
        if keep {
            kept.extend(record::frame(r));
        } else {
            dropped = true;
        }
    }
    if dropped {
        crate::util::write_atomic(path, &kept).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
