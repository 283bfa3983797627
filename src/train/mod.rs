//! Training: the loop, AdamW, schedules, global-norm clipping, checkpoints and resume.
//!
//! Everything random is derived from the recipe's seed (data order per epoch, dropout per
//! step), and a checkpoint holds weights, optimizer moments, the step and the data position,
//! so a run resumed from its last checkpoint ends exactly where an uninterrupted run ends.

pub mod schedule;

use crate::ir::Graph;
use crate::runtime::{from_safetensors, tokens_tensor, Runtime, Weights, V};
use crate::spec::recipe::{Optimizer, RecipeSpec, Task};
use crate::tasks::grammar::{self, Metrics};
use crate::util::Rng;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data of a grammar task, encoded as token ids.
pub struct GrammarData {
    /// The language.
    pub language: crate::spec::recipe::Language,
    /// `max_length` of the task.
    pub max_length: usize,
    /// Training sequences (`SOS w EOS PAD…`, length max_length + 2).
    pub train: Vec<Vec<i64>>,
    /// Validation sequences.
    pub val: Vec<Vec<i64>>,
    /// In-distribution prompts (starting with SOS).
    pub id_prompts: Vec<Vec<i64>>,
    /// Out-of-distribution prompts.
    pub ood_prompts: Vec<Vec<i64>>,
}

impl GrammarData {
    /// Generate the data of a grammar task from `seed`.
    pub fn new(task: &Task, seed: u64) -> Option<Self> {
        let Task::Grammar {
            language,
            max_length,
            num_train,
            num_val,
            ..
        } = task
        else {
            return None;
        };
        let ml = *max_length as usize;
        let default_train = match language {
            crate::spec::recipe::Language::BaN | crate::spec::recipe::Language::BbaN => 15000,
            _ => 512,
        };
        let mut rng = Rng::new(seed ^ 0x5EED_DA7A);
        let enc = |ws: Vec<Vec<u8>>| -> Vec<Vec<i64>> {
            ws.iter()
                .map(|w| grammar::encode(w, ml).into_iter().map(i64::from).collect())
                .collect()
        };
        let train = enc(grammar::words(
            *language,
            ml,
            num_train.map_or(default_train, |n| n as usize),
            &mut rng,
        ));
        let val = enc(grammar::words(*language, ml, *num_val as usize, &mut rng));
        let (id, ood) = grammar::prompts(*language, &mut rng);
        let ids = |v: Vec<Vec<u8>>| {
            v.into_iter()
                .map(|p| p.into_iter().map(i64::from).collect())
                .collect()
        };
        Some(GrammarData {
            language: *language,
            max_length: ml,
            train,
            val,
            id_prompts: ids(id),
            ood_prompts: ids(ood),
        })
    }
}

/// Mean cross-entropy over all positions, with label smoothing ε (PyTorch semantics: the
/// target is (1 − ε)·one-hot + ε/K).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, smoothing: f64) -> Tensor<1> {
    let logp = log_softmax(logits, 2);
    let nll = logp.clone().gather(2, targets.unsqueeze_dim::<3>(2)).neg();
    let loss = if smoothing > 0.0 {
        let smooth = logp.mean_dim(2).neg();
        nll.mul_scalar(1.0 - smoothing) + smooth.mul_scalar(smoothing)
    } else {
        nll
    };
    loss.mean()
}

fn split_xy(batch: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let x: Vec<Vec<i64>> = batch.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
    let y: Vec<Vec<i64>> = batch.iter().map(|s| s[1..].to_vec()).collect();
    (tokens_tensor(&x, device), tokens_tensor(&y, device))
}

/// Mean validation loss over `data` in chunks of `batch`.
pub fn eval_loss(rt: &Runtime, data: &[Vec<i64>], batch: usize) -> f64 {
    let inner = rt.device.clone().without_autodiff();
    let (mut total, mut n) = (0.0, 0usize);
    for chunk in data.chunks(batch.max(1)) {
        let (x, y) = split_xy(chunk, &inner);
        let l: f32 = cross_entropy(
            rt.forward(x.autodiff_if(&rt.device), false),
            y.autodiff_if(&rt.device),
            0.0,
        )
        .into_scalar();
        total += f64::from(l) * chunk.len() as f64;
        n += chunk.len();
    }
    total / n.max(1) as f64
}

trait AutodiffIf {
    fn autodiff_if(self, device: &Device) -> Self;
}
impl AutodiffIf for Tensor<2, Int> {
    fn autodiff_if(self, device: &Device) -> Self {
        if device.is_autodiff() {
            self.autodiff()
        } else {
            self
        }
    }
}

/// Greedy completion of prompts of equal length up to `total_len` tokens (prompt included);
/// stops early once every sequence holds an EOS (the metrics ignore what follows it).
pub fn greedy(rt: &Runtime, prompts: &[Vec<i64>], total_len: usize) -> Vec<Vec<i64>> {
    let mut seqs: Vec<Vec<i64>> = prompts.to_vec();
    let eos = i64::from(grammar::EOS);
    while seqs.first().is_some_and(|s| s.len() < total_len) {
        if seqs.iter().all(|s| s.contains(&eos)) {
            break;
        }
        let toks = tokens_tensor(&seqs, &rt.device);
        let logits = rt.forward(toks, false);
        let [b, s, v] = logits.dims();
        let last = logits.narrow(1, s - 1, 1).reshape([b, v]);
        let next: Vec<i64> = last
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("ids");
        for (seq, t) in seqs.iter_mut().zip(next) {
            seq.push(t);
        }
    }
    seqs
}

/// ID and OOD metrics of greedy completions, as the reference computes them.
pub fn grammar_metrics(rt: &Runtime, data: &GrammarData) -> (Metrics, Metrics) {
    let total = data.max_length;
    let run = |prompts: &[Vec<i64>]| {
        let mut out = Vec::new();
        for chunk in prompts.chunks(256) {
            out.extend(greedy(rt, chunk, total));
        }
        let seqs: Vec<Vec<u8>> = out
            .iter()
            .map(|s| s.iter().map(|&t| t as u8).collect())
            .collect();
        grammar::metrics(data.language, &seqs)
    };
    (run(&data.id_prompts), run(&data.ood_prompts))
}

/// Resumable training state besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Optimizer steps done.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Position (in sequences) within the epoch's order.
    pub pos: usize,
    /// Best validation loss so far (`f64::MAX` before the first evaluation: JSON has no infinity).
    pub best_val: f64,
    /// Evaluations since the best one.
    pub since_best: u32,
}

/// AdamW moments of every parameter, flat.
pub struct Moments {
    m: Vec<Tensor<1>>,
    v: Vec<Tensor<1>>,
}

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
    /// Task metrics of the final model (ID, OOD), when the task has them.
    pub metrics: Option<TaskMetrics>,
    /// Training time in seconds (this process only).
    pub seconds: f64,
}

/// Grammar metrics with chance levels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// In-distribution prompts.
    pub id: MetricsJson,
    /// Out-of-distribution prompts.
    pub ood: MetricsJson,
    /// The authors' chance levels (OOD R1, OOD R2-completion).
    pub chance_ood_r1: f64,
    /// Chance level of OOD R2 completion.
    pub chance_ood_r2_completion: f64,
}

/// Serializable [`Metrics`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsJson {
    /// Prompts.
    pub n: usize,
    /// Fraction finished.
    pub finished: f64,
    /// R1 among finished.
    pub rule1: f64,
    /// R2 among finished.
    pub rule2: f64,
    /// R2 of the completion among finished.
    pub rule2_completion: f64,
    /// Grammatical among finished.
    pub grammatical: f64,
}

impl From<Metrics> for MetricsJson {
    fn from(m: Metrics) -> Self {
        MetricsJson {
            n: m.n,
            finished: m.finished,
            rule1: m.rule1,
            rule2: m.rule2,
            rule2_completion: m.rule2_completion,
            grammatical: m.grammatical,
        }
    }
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
    /// A task kiln cannot train on yet.
    #[error("{0}")]
    Unsupported(String),
}

/// Options of a run.
pub struct RunOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Print progress lines.
    pub progress: bool,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// Which parameters get weight decay: matrices that are not embeddings or position tables.
fn decays(graph: &Graph, names: &[String], shapes: &[Vec<usize>], all: bool) -> Vec<bool> {
    use crate::ir::Op;
    let no_decay: std::collections::HashSet<String> = graph
        .g
        .node_indices()
        .filter(|&n| matches!(graph.g[n].op, Op::Embedding | Op::AddPositions))
        .filter_map(|n| match &graph.g[graph.inputs(n)[1]].op {
            Op::Param { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    names
        .iter()
        .zip(shapes)
        .map(|(n, s)| all || (s.len() >= 2 && !no_decay.contains(n)))
        .collect()
}

/// One checkpoint file: weights `w/<name>`, moments `m/<name>` and `v/<name>`, and the state
/// as JSON metadata; written atomically.
fn save_checkpoint(
    path: &Path,
    rt: &Runtime,
    mom: &Moments,
    state: &State,
) -> Result<(), TrainError> {
    let mut values = HashMap::new();
    for (i, name) in rt.names.iter().enumerate() {
        let shape = rt.shapes[i].clone();
        values.insert(format!("w/{name}"), (rt.params[i].to_vec(), shape.clone()));
        let flat = |t: &Tensor<1>| {
            t.to_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        values.insert(format!("m/{name}"), (flat(&mom.m[i]), shape.clone()));
        values.insert(format!("v/{name}"), (flat(&mom.v[i]), shape));
    }
    let meta = HashMap::from([(
        "kiln_state".to_string(),
        serde_json::to_string(state).expect("state serializes"),
    )]);
    let bytes = crate::runtime::to_safetensors_with(&values, Some(meta))
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    crate::util::write_atomic(path, &bytes)?;
    Ok(())
}

type Loaded = (Weights, Weights, State);

/// Read a checkpoint: (weights, moments, state).
pub fn load_checkpoint(path: &Path) -> Result<Loaded, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| {
        TrainError::Checkpoint(format!("cannot read checkpoint `{}`: {e}", path.display()))
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        TrainError::Checkpoint(format!(
            "`{}` is not a kiln checkpoint: {e}",
            path.display()
        ))
    })?;
    let state: State = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("kiln_state"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "`{}` is not a kiln checkpoint (no training state)",
                path.display()
            ))
        })?;
    let all = from_safetensors(&bytes).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let (mut w, mut m) = (HashMap::new(), HashMap::new());
    for (k, v) in all {
        if let Some(n) = k.strip_prefix("w/") {
            w.insert(n.to_string(), v);
        } else {
            m.insert(k, v);
        }
    }
    Ok((w, m, state))
}

/// Train `graph` on the recipe's task, writing into `opts.dir`; resumes from
/// `opts.dir/checkpoint.safetensors` when it exists.
pub fn train(recipe: &RecipeSpec, graph: Graph, opts: &RunOptions) -> Result<Summary, TrainError> {
    let t = &recipe.train;
    let data = GrammarData::new(&recipe.task, t.seed).ok_or_else(|| {
        TrainError::Unsupported(
            "kiln trains on grammar tasks so far; uint16 streams arrive next".into(),
        )
    })?;
    let device = crate::runtime::DeviceKind::Cpu.device(true);
    std::fs::create_dir_all(&opts.dir)?;
    let ckpt = opts.dir.join("checkpoint.safetensors");
    let (mut rt, mut mom, mut state) = if ckpt.exists() {
        let (w, m, state) = load_checkpoint(&ckpt)?;
        let rt = Runtime::with_values(graph.clone(), device.clone(), &w)
            .map_err(|e| TrainError::Checkpoint(format!("`{}`: {e}", ckpt.display())))?;
        let get = |k: String, shape: &[usize]| -> Result<Tensor<1>, TrainError> {
            let (d, s) = m
                .get(&k)
                .ok_or_else(|| TrainError::Checkpoint(format!("checkpoint lacks `{k}`")))?;
            if s != shape {
                return Err(TrainError::Checkpoint(format!("`{k}` has the wrong shape")));
            }
            Ok(Tensor::from_data(
                TensorData::new(d.clone(), [d.len()]),
                &device.clone().without_autodiff(),
            ))
        };
        let mut mom = Moments {
            m: Vec::new(),
            v: Vec::new(),
        };
        for (name, shape) in rt.names.iter().zip(&rt.shapes) {
            mom.m.push(get(format!("m/{name}"), shape)?);
            mom.v.push(get(format!("v/{name}"), shape)?);
        }
        (rt, mom, state)
    } else {
        let rt = Runtime::init(graph.clone(), device.clone(), t.seed);
        let inner = device.clone().without_autodiff();
        let zeros = |s: &Vec<usize>| Tensor::<1>::zeros([s.iter().product::<usize>()], &inner);
        let mom = Moments {
            m: rt.shapes.iter().map(zeros).collect(),
            v: rt.shapes.iter().map(zeros).collect(),
        };
        (
            rt,
            mom,
            State {
                step: 0,
                epoch: 0,
                pos: 0,
                best_val: f64::MAX,
                since_best: 0,
            },
        )
    };
    // Metrics of steps after the checkpoint would be written again: drop them.
    let metrics_path = opts.dir.join("metrics.jsonl");
    truncate_metrics(&metrics_path, state.step)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)?;

    let bs = (t.batch_size as usize).min(data.train.len()).max(1);
    let per_epoch = (data.train.len() / bs).max(1) as u64;
    let total = t.steps.unwrap_or_else(|| t.epochs.unwrap_or(1) * per_epoch);
    let Optimizer::Adamw {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decay_all,
    } = t.optimizer.clone();
    let decay = decays(&graph, &rt.names, &rt.shapes, decay_all);
    let inner = device.clone().without_autodiff();
    let started = std::time::Instant::now();
    let mut last_loss = f64::NAN;
    let mut val_loss = f64::NAN;
    let mut stopped = "finished all steps".to_string();
    let mut order = epoch_order(data.train.len(), t.seed, state.epoch);
    while state.step < total {
        let lr_now = schedule::lr_at(&t.schedule, lr, state.step, total);
        // Gradients summed over the accumulation micro-batches.
        let mut acc: Vec<Option<Tensor<1>>> = vec![None; rt.params.len()];
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum as u64 {
            if state.pos + bs > order.len() {
                state.epoch += 1;
                state.pos = 0;
                order = epoch_order(data.train.len(), t.seed, state.epoch);
            }
            let batch: Vec<Vec<i64>> = order[state.pos..state.pos + bs]
                .iter()
                .map(|&i| data.train[i].clone())
                .collect();
            state.pos += bs;
            device.seed(mix(t.seed, state.step, micro));
            let (x, y) = split_xy(&batch, &device);
            let loss = cross_entropy(rt.forward(x, true), y, t.label_smoothing)
                .div_scalar(f64::from(t.grad_accum));
            let value: f32 = loss.clone().into_scalar();
            loss_sum += f64::from(value);
            let grads = loss.backward();
            for (i, p) in rt.params.iter().enumerate() {
                if let Some(g) = p.grad(&grads) {
                    let g = g.flat();
                    acc[i] = Some(match acc[i].take() {
                        Some(a) => a + g,
                        None => g,
                    });
                }
            }
        }
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite {
                value: loss_sum,
                step: state.step + 1,
                kept: if ckpt.exists() {
                    load_checkpoint(&ckpt)?.2.step
                } else {
                    0
                },
            });
        }
        let grads: Vec<Tensor<1>> = acc
            .into_iter()
            .zip(&rt.shapes)
            .map(|(g, s)| g.unwrap_or_else(|| Tensor::zeros([s.iter().product::<usize>()], &inner)))
            .collect();
        // Global-norm clipping over all parameters together (PyTorch clip_grad_norm_).
        let norm2: f32 = grads
            .iter()
            .map(|g| g.clone().powi_scalar(2).sum())
            .reduce(|a, b| a + b)
            .map_or(0.0, |t| t.into_scalar());
        let norm = f64::from(norm2).sqrt();
        let clip = t
            .clip_grad_norm
            .map_or(1.0, |c| (c / (norm + 1e-6)).min(1.0));
        let step1 = state.step + 1;
        let (bc1, bc2) = (
            1.0 - beta1.powi(step1 as i32),
            1.0 - beta2.powi(step1 as i32),
        );
        for i in 0..rt.params.len() {
            let g = if clip < 1.0 {
                grads[i].clone().mul_scalar(clip)
            } else {
                grads[i].clone()
            };
            let mut p = rt.params[i].clone().detach().flat();
            if decay[i] && weight_decay > 0.0 {
                p = p.mul_scalar(1.0 - lr_now * weight_decay);
            }
            mom.m[i] = mom.m[i].clone().mul_scalar(beta1) + g.clone().mul_scalar(1.0 - beta1);
            mom.v[i] =
                mom.v[i].clone().mul_scalar(beta2) + g.powi_scalar(2).mul_scalar(1.0 - beta2);
            let update =
                mom.m[i].clone().div_scalar(bc1) / (mom.v[i].clone().div_scalar(bc2).sqrt() + eps);
            p = p - update.mul_scalar(lr_now);
            rt.params[i] = V::from_flat(p.autodiff(), &rt.shapes[i]).require_grad();
        }
        state.step = step1;
        last_loss = loss_sum;
        writeln!(
            metrics,
            "{}",
            serde_json::json!({"step": state.step, "loss": loss_sum, "lr": lr_now, "grad_norm": norm})
        )?;
        let last = state.step == total;
        if state.step % t.eval_every == 0 || last {
            val_loss = eval_loss(&rt, &data.val, bs.max(64));
            if val_loss < state.best_val - t.early_stopping.as_ref().map_or(0.0, |e| e.min_delta) {
                state.best_val = val_loss;
                state.since_best = 0;
                rt.save(&opts.dir.join("best.safetensors"))
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            } else {
                state.since_best += 1;
            }
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"step": state.step, "val_loss": val_loss})
            )?;
            if opts.progress {
                eprintln!("step {:>6}/{total}  loss {loss_sum:.4}  val {val_loss:.4}  lr {lr_now:.2e}  {:.1} steps/s", state.step, state.step as f64 / started.elapsed().as_secs_f64().max(1e-9));
            }
            if let Some(es) = &t.early_stopping {
                if state.since_best >= es.patience {
                    stopped = format!(
                        "early stopping: no improvement in {} evaluations",
                        es.patience
                    );
                    save_checkpoint(&ckpt, &rt, &mom, &state)?;
                    break;
                }
            }
        }
        if state.step % t.checkpoint_every == 0 || last {
            save_checkpoint(&ckpt, &rt, &mom, &state)?;
        }
    }
    let (id, ood) = grammar_metrics(&rt, &data);
    let (c1, c2) = grammar::chance(data.language);
    Ok(Summary {
        steps: state.step,
        final_loss: last_loss,
        val_loss,
        best_val_loss: state.best_val,
        stopped,
        metrics: Some(TaskMetrics {
            id: id.into(),
            ood: ood.into(),
            chance_ood_r1: c1,
            chance_ood_r2_completion: c2,
        }),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(mix(seed, 0xE90C, epoch));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
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
