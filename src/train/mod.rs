//! Training: the loop, AdamW, schedules, global-norm clipping, checkpoints and resume.
//!
//! Everything random is derived from the recipe's seed (data order per epoch, dropout per
//! step), and a checkpoint holds weights, optimizer moments, the step and the data position,
//! so a run resumed from its last checkpoint ends exactly where an uninterrupted run ends.

pub mod checkpoint;
pub mod data;
mod ensemble;
mod events;
pub mod grouped;
pub mod history;
mod loss;
pub mod memory;
pub mod pending;
mod progress;
pub mod schedule;
mod trainer;

pub use checkpoint::{load_checkpoint, stored_state, Moments, State};
pub use data::{Batch, Data, GrammarData, GrammarReport, StreamData, TaskReport};
pub use ensemble::{ensemble_model, soft_attention_report, train_ensemble, EnsembleSummary};
pub(crate) use loss::split_xy;
pub use loss::{cross_entropy, distribution_loss, eval_loss};
pub use pending::Pending;
pub(crate) use trainer::mix;
pub use trainer::{default_pad_to, StepGradients, StepStats, Trainer, GPU_PAD_TO};

use crate::ir::Graph;
use crate::spec::recipe::RecipeSpec;
use progress::Progress;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a training run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Steps done.
    pub steps: u64,
    /// Last training loss.
    pub final_loss: f64,
    /// Last validation loss.
    pub val_loss: f64,
    /// Best validation loss.
    pub best_val_loss: f64,
    /// Why training stopped.
    pub stopped: String,
    /// Task metrics of the final model.
    pub metrics: Option<TaskReport>,
    /// For an ensemble: its seeds and the summaries of its members (the fields above then
    /// describe the ensemble: its validation loss and metrics, the members' summed steps
    /// and time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSummary>,
    /// A grammar task's metrics over the evaluations: at the lowest validation loss, and each
    /// metric's maximum (what the rule-extrapolation paper reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<history::History>,
    /// For a model with hard attention: the same metrics with its attention evaluated soft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_attention_metrics: Option<TaskReport>,
    /// Training time in seconds (this process only).
    pub seconds: f64,
}

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// I/O on the run directory.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A checkpoint that cannot be used.
    #[error("{0}")]
    Checkpoint(String),
    /// The loss became NaN or infinite.
    #[error("the training loss became {value} at step {step}; stopped, and kept the last good checkpoint (step {kept}). Lower the learning rate, add `clip_grad_norm`, or check the data")]
    NonFinite {
        /// The loss.
        value: f64,
        /// The step.
        step: u64,
        /// The step of the kept checkpoint.
        kept: u64,
    },
    /// A weight became NaN or infinite (the loss may still have been finite).
    #[error("the weight `{name}` became non-finite at step {step}; stopped, and kept the last good checkpoint (step {kept}). Lower the learning rate, add `clip_grad_norm`, or check the data")]
    NonFiniteWeight {
        /// The parameter.
        name: String,
        /// The step.
        step: u64,
        /// The step of the kept checkpoint.
        kept: u64,
    },
    /// The task's data cannot be used.
    #[error("{0}")]
    Data(#[from] crate::tasks::uint16::DataError),
    /// A text task's corpus, tokenizer or token files cannot be used.
    #[error("{0}")]
    Text(#[from] crate::tasks::text::TextError),
    /// A forecasting task's data cannot be used.
    #[error("{0}")]
    Forecast(#[from] crate::tasks::forecast::ForecastError),
    /// Stopped by SIGINT or SIGTERM after writing a checkpoint.
    #[error("stopped by {} at step {step} of {total}; the checkpoint is written: continue with `kiln train --resume {}`", crate::os::interrupt::name(*.signal), .dir.display())]
    Interrupted {
        /// The signal's number.
        signal: i32,
        /// Steps done (all saved).
        step: u64,
        /// Steps of the run.
        total: u64,
        /// The run directory.
        dir: PathBuf,
    },
}

impl TrainError {
    /// The exit status this error stops `kiln train` with (see [`crate::cli::exit`]).
    pub fn exit_code(&self) -> i32 {
        use crate::cli::exit;
        match self {
            TrainError::NonFinite { .. } | TrainError::NonFiniteWeight { .. } => exit::FAILED,
            TrainError::Interrupted { signal, .. } => crate::os::interrupt::exit_code(*signal),
            TrainError::Io(_)
            | TrainError::Checkpoint(_)
            | TrainError::Data(_)
            | TrainError::Forecast(_)
            | TrainError::Text(_) => exit::UNUSABLE,
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Print progress lines.
    pub progress: bool,
    /// Where to train.
    pub device: crate::runtime::DeviceKind,
    /// Mixed precision: the dtype of matrix products (`None`: f32 throughout).
    pub matmul_dtype: Option<burn::tensor::FloatDType>,
    /// Texts for TensorBoard, written at step 0 of the run's events (tag, Markdown): the
    /// resolved recipe and the graph.
    pub texts: Vec<(String, String)>,
    /// Steps between reads of the training statistics back to the host (1: every step). The
    /// losses and gradient norms of the steps between stay on the device and are read all at
    /// once, also at every evaluation, checkpoint, signal and at the end; the metrics and
    /// checkpoints are the same whatever the value. A non-finite loss stops the run at the
    /// next read (naming the step where it happened), before anything is saved.
    pub read_every: u64,
    /// Pad token inputs to a multiple of this many positions where the model allows it
    /// ([`crate::runtime::Runtime::padded_len`]); `None`: the device's default (16 on a GPU,
    /// 1, no padding, on the CPU).
    pub pad_to: Option<usize>,
}

/// Train `graph` on the recipe's task, writing into `opts.dir`; resumes from
/// `opts.dir/checkpoint.safetensors` when it exists.
pub fn train(recipe: &RecipeSpec, graph: Graph, opts: &RunOptions) -> Result<Summary, TrainError> {
    let t = &recipe.train;
    let mut data = Data::new(&recipe.task, t.seed)?;
    let device = opts.device.device(true);
    std::fs::create_dir_all(&opts.dir).map_err(io_at(&opts.dir))?;
    let ckpt = opts.dir.join("checkpoint.safetensors");
    let mut tr = if ckpt.exists() {
        Trainer::resume(t, graph, device, &ckpt)?
    } else {
        Trainer::new(t, graph, device)
    };
    tr.rt.matmul_dtype = opts.matmul_dtype;
    if let Some(p) = opts.pad_to {
        tr.rt.pad_to = p;
        if let Some(note) = tr.rt.pad_note().filter(|_| opts.progress) {
            eprintln!("{note}");
        }
    }
    // Metrics of steps after the checkpoint would be written again: drop them.
    let metrics_path = opts.dir.join("metrics.jsonl");
    truncate_metrics(&metrics_path, tr.state.step).map_err(io_at(&metrics_path))?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_at(&metrics_path))?;
    let mut events = events::Events::open(&opts.dir, tr.state.step, &opts.texts);
    // The step whose task metrics this process wrote last (the final ones are not repeated).
    let mut metrics_step = None;

    let bs = data.batch_size(t.batch_size as usize);
    let total = t
        .steps
        .unwrap_or_else(|| t.epochs.unwrap_or(1) * data.per_epoch(bs));
    let started = std::time::Instant::now();
    let progress = Progress::new(opts.progress, tr.state.step, total);
    // A resumed run reports the losses its checkpoint recorded until it computes new ones; a
    // run that had already stopped (early stopping) trains no further.
    let mut last_loss = tr.state.last_loss.unwrap_or(f64::NAN);
    let mut val_loss = tr.state.last_val_loss.unwrap_or(f64::NAN);
    let mut stopped = tr
        .state
        .stopped
        .clone()
        .unwrap_or_else(|| "finished all steps".to_string());
    let resumed_done = tr.state.stopped.is_some() || tr.state.step >= total;
    let mut final_report = None;
    // The batches of the next step are drawn on a second thread while this step runs; `ds` is
    // the data position as drawn so far, `after` the position the checkpoint records.
    let full = recipe.task.max_seq();
    let per_epoch = data.per_epoch(bs);
    let draw = |data: &mut Data, ds: &mut State| -> Vec<Batch> {
        // The curriculum's length at this step: inputs and targets of its first L positions.
        let keep = t
            .curriculum
            .as_ref()
            .map(|c| c.length(ds.step, full, per_epoch) as usize + 1);
        (0..u64::from(t.grad_accum))
            .map(|k| {
                let mut b = data.train_batch(ds, t.seed, k, bs);
                if let (Some(keep), Batch::Tokens(rows)) = (keep, &mut b) {
                    for s in rows {
                        s.truncate(keep);
                    }
                }
                b
            })
            .collect()
    };
    let mut ds = tr.state.clone();
    let mut micro = draw(&mut data, &mut ds);
    let read_every = opts.read_every.max(1);
    // Steps whose statistics are still on the device, and steps read but not yet written.
    let mut pending: Vec<(u64, Pending)> = Vec::new();
    let mut ready: Vec<(u64, StepStats)> = Vec::new();
    let mut last_lr = f64::NAN;
    let mut after = (ds.epoch, ds.pos);
    while !resumed_done && tr.state.step < total {
        let (result, next) = std::thread::scope(|sc| {
            let prefetch = (tr.state.step + 1 < total).then(|| {
                let (data, ds) = (&mut data, &mut ds);
                sc.spawn(move || {
                    ds.step += 1;
                    let m = draw(data, ds);
                    (m, (ds.epoch, ds.pos))
                })
            });
            let result = if read_every == 1 {
                Outcome::Read(tr.step_batches(&micro, total))
            } else {
                Outcome::Deferred(Box::new(tr.step_deferred(&micro, total)))
            };
            let next = prefetch.map(|h| h.join().expect("the batch thread does not panic"));
            (result, next)
        });
        (tr.state.epoch, tr.state.pos) = after;
        if let Some((m, a)) = next {
            micro = m;
            after = a;
        }
        let step = tr.state.step;
        match result {
            Outcome::Read(Ok(s)) => ready.push((step, s)),
            Outcome::Read(Err(value)) => {
                progress.finish();
                return Err(non_finite(value, step + 1, &ckpt)?);
            }
            Outcome::Deferred(p) => pending.push((step, *p)),
        }
        let last = step == total;
        // Read before the evaluation: a signal that arrives during it is seen at the next step.
        let signal = crate::os::interrupt::received();
        let due = signal.is_some()
            || step % read_every == 0
            || step % t.eval_every == 0
            || step % t.checkpoint_every == 0
            || last;
        // A non-finite loss stops the run once the steps before it are recorded.
        let settled = if due {
            settle(&mut pending, &mut ready, &ckpt)
        } else {
            Ok(())
        };
        for (s, stats) in ready.drain(..) {
            let line = train_line(t, s, &stats, full, per_epoch);
            writeln!(metrics, "{line}").map_err(io_at(&metrics_path))?;
            events.json(s, "train", &line);
            last_loss = stats.loss;
            tr.state.last_loss = Some(stats.loss);
            last_lr = stats.lr;
        }
        settled.inspect_err(|_| progress.finish())?;
        if step % t.eval_every == 0 || last {
            val_loss = data.val_loss(&tr.rt, bs.max(64));
            let st = &mut tr.state;
            st.last_val_loss = val_loss.is_finite().then_some(val_loss);
            if val_loss < st.best_val - t.early_stopping.as_ref().map_or(0.0, |e| e.min_delta) {
                st.best_val = val_loss;
                st.since_best = 0;
                tr.rt
                    .save(&opts.dir.join("best.safetensors"))
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            } else {
                st.since_best += 1;
            }
            let mut line = serde_json::json!({"step": step, "val_loss": val_loss});
            events.scalars(step, &[("val/loss".into(), val_loss)]);
            // A grammar task's metrics at every evaluation (the paper's maxima need them).
            if let Some(r) = data.evaluation_report(&tr.rt) {
                line["task_metrics"] = serde_json::to_value(&r).expect("report serializes");
                events.json(step, "metrics", &line["task_metrics"]);
                metrics_step = Some(step);
                if last {
                    final_report = Some(r);
                }
            }
            writeln!(metrics, "{line}").map_err(io_at(&metrics_path))?;
            progress.eval(step, last_loss, val_loss, last_lr);
            if let Some(es) = &t.early_stopping {
                if tr.state.since_best >= es.patience {
                    stopped = format!(
                        "early stopping: no improvement in {} evaluations",
                        es.patience
                    );
                    tr.state.stopped = Some(stopped.clone());
                    tr.save(&ckpt)?;
                    break;
                }
            }
        }
        progress.step(step, last_loss, val_loss);
        if step % t.checkpoint_every == 0 || last || signal.is_some() {
            tr.save(&ckpt)?;
        }
        if let Some(signal) = signal {
            progress.finish();
            return Err(TrainError::Interrupted {
                signal,
                step,
                total,
                dir: opts.dir.clone(),
            });
        }
    }
    progress.finish();
    if let Some(signal) = crate::os::interrupt::received() {
        // Every step is saved; a resumed run only evaluates.
        return Err(TrainError::Interrupted {
            signal,
            step: tr.state.step,
            total,
            dir: opts.dir.clone(),
        });
    }
    // The last evaluation's report is the final model's when it was at the last step.
    let metrics = final_report
        .filter(|_| tr.state.stopped.is_none())
        .unwrap_or_else(|| data.report(&tr.rt));
    let soft_attention_metrics = soft_attention_report(&data, &mut tr.rt);
    let json = |r: &TaskReport| serde_json::to_value(r).expect("report serializes");
    if metrics_step != Some(tr.state.step) {
        events.json(tr.state.step, "metrics", &json(&metrics));
    }
    if let Some(m) = &soft_attention_metrics {
        events.json(tr.state.step, "soft_attention", &json(m));
    }
    let evaluations = history::read(&metrics_path);
    Ok(Summary {
        steps: tr.state.step,
        final_loss: last_loss,
        val_loss,
        best_val_loss: tr.state.best_val,
        stopped,
        metrics: Some(metrics),
        soft_attention_metrics,
        evaluations,
        ensemble: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A step's result: read back at once, or still on the device.
enum Outcome {
    Read(Result<StepStats, f64>),
    Deferred(Box<Pending>),
}

/// Read the `pending` steps back (one transfer) into `ready`; the first non-finite loss stops
/// the run.
fn settle(
    pending: &mut Vec<(u64, Pending)>,
    ready: &mut Vec<(u64, StepStats)>,
    ckpt: &Path,
) -> Result<(), TrainError> {
    if pending.is_empty() {
        return Ok(());
    }
    let (steps, ps): (Vec<u64>, Vec<Pending>) = pending.drain(..).unzip();
    for (step, stats) in steps.into_iter().zip(pending::read(&ps)) {
        if !stats.loss.is_finite() {
            return Err(non_finite(stats.loss, step, ckpt)?);
        }
        ready.push((step, stats));
    }
    Ok(())
}

/// The error of a loss that became `value` at `step`, with the step of the checkpoint kept.
fn non_finite(value: f64, step: u64, ckpt: &Path) -> Result<TrainError, TrainError> {
    let kept = if ckpt.exists() {
        load_checkpoint(ckpt)?.2.step
    } else {
        0
    };
    Ok(TrainError::NonFinite { value, step, kept })
}

/// The metrics line of a training step.
fn train_line(
    t: &crate::spec::recipe::Train,
    step: u64,
    stats: &StepStats,
    full: u64,
    per_epoch: u64,
) -> serde_json::Value {
    let mut line = serde_json::json!({"step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm});
    if let Some(c) = &t.curriculum {
        line["seq_len"] = c.length(step - 1, full, per_epoch).into();
    }
    if let Some(h) = stats.attention_entropy {
        line["attention_entropy"] = h.into();
    }
    if let Some(h) = stats.harmonic_sparsity {
        line["harmonic_sparsity"] = h.into();
    }
    if let Some(h) = stats.distribution {
        line["distribution"] = h.into();
    }
    if t.frequency_curriculum.is_some() {
        // 1 once the mask is lifted.
        line["freq_cutoff"] = stats.freq_cutoff.unwrap_or(1.0).into();
    }
    line
}

/// An I/O error with the path it happened on in its message (a full disk or a read-only
/// folder says which file it could not write).
pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| {
        TrainError::Io(std::io::Error::new(
            e.kind(),
            format!("`{}`: {e}", path.display()),
        ))
    }
}

fn truncate_metrics(path: &Path, step: u64) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::util::write_atomic(path, out.as_bytes())
}
