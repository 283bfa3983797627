//! Training: the loop, AdamW, schedules, global-norm clipping, checkpoints and resume.
//!
//! Everything random is derived from the recipe's seed (data order per epoch, dropout per
//! step), and a checkpoint holds weights, optimizer moments, the step and the data position,
//! so a run resumed from its last checkpoint ends exactly where an uninterrupted run ends.

pub mod checkpoint;
pub mod data;
pub mod memory;
pub mod schedule;

pub use checkpoint::{load_checkpoint, Moments, State};
pub use data::{Batch, Data, GrammarData, GrammarReport, StreamData, TaskReport};

use crate::ir::Graph;
use crate::runtime::fused::{self, AdamW};
use crate::runtime::{tokens_tensor, Aux, Runtime, Weights, V};
use crate::spec::recipe::{Optimizer, RecipeSpec};
use crate::util::Rng;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Mean cross-entropy over all positions, with label smoothing ε (PyTorch semantics: the
/// target is (1 − ε)·one-hot + ε/K).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, smoothing: f64) -> Tensor<1> {
    let targets = targets_of(&logits, targets);
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

/// The targets the logits predict. An encoder-decoder's logits cover only the target part of
/// each row: its last positions.
fn targets_of(logits: &Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2, Int> {
    let (s, t) = (logits.dims()[1], targets.dims()[1]);
    if t > s {
        targets.narrow(1, t - s, s)
    } else {
        targets
    }
}

/// The multi-scale distribution loss (see [`crate::spec::recipe::DistributionLoss`]): the
/// mean over `scales` of KL(target histogram ‖ mean predicted probability) with the classes
/// cut into that many contiguous bins (class c of V in bin ⌊c·s/V⌋).
pub fn distribution_loss(logits: Tensor<3>, targets: Tensor<2, Int>, scales: &[u32]) -> Tensor<1> {
    let v = logits.dims()[2];
    let targets = targets_of(&logits, targets);
    let device = logits.device();
    let p = softmax(logits, 2)
        .reshape([-1, v as i32])
        .mean_dim(0)
        .reshape([v]);
    // Bin masses as differences of a cumulative sum, in f64: in f32 a bin of mass ~1e-7 (a
    // large vocabulary at a fine scale) would drown in the sum's rounding.
    let cum = p.cast(burn::tensor::FloatDType::F64).cumsum(0);
    let ys: Vec<i64> = targets
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    let n = ys.len().max(1) as f64;
    let mut total: Option<Tensor<1>> = None;
    for &bins in scales {
        let bins = (bins as usize).clamp(1, v);
        // Bin b holds classes ⌈b·V/s⌉ ..= ⌈(b+1)·V/s⌉ − 1.
        let ends: Vec<i64> = (0..bins)
            .map(|b| ((b + 1) * v).div_ceil(bins) as i64 - 1)
            .collect();
        let at_end = cum
            .clone()
            .select(0, Tensor::<1, Int>::from_ints(ends.as_slice(), &device));
        let before = Tensor::cat(
            vec![
                Tensor::<1>::zeros([1], &device).cast(burn::tensor::FloatDType::F64),
                at_end.clone().narrow(0, 0, bins - 1),
            ],
            0,
        );
        let q = (at_end - before)
            .clamp_min(1e-12)
            .cast(burn::tensor::FloatDType::F32);
        let mut hist = vec![0f64; bins];
        for &y in &ys {
            hist[(y.max(0) as usize * bins / v).min(bins - 1)] += 1.0 / n;
        }
        // Σ t ln t is a constant; − Σ t ln q carries the gradient.
        let entropy: f64 = hist.iter().filter(|&&h| h > 0.0).map(|h| h * h.ln()).sum();
        let w = Tensor::<1>::from_data(
            TensorData::new(hist.iter().map(|&h| h as f32).collect::<Vec<_>>(), [bins]),
            &device,
        );
        let kl = (w * q.log()).sum().neg().add_scalar(entropy);
        total = Some(match total {
            Some(a) => a + kl,
            None => kl,
        });
    }
    total.map_or_else(
        || Tensor::zeros([1], &device),
        |t| t.div_scalar(scales.len() as f64),
    )
}

/// Add each parameter's gradient in `grads` to its running sum in `acc`.
fn accumulate(acc: &mut [Option<Tensor<1>>], rt: &Runtime, grads: &burn::tensor::Gradients) {
    for (i, p) in rt.params.iter().enumerate() {
        if let Some(g) = p.grad(grads) {
            let g = g.flat();
            acc[i] = Some(match acc[i].take() {
                Some(a) => a + g,
                None => g,
            });
        }
    }
}

pub(crate) fn split_xy(batch: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
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
            | TrainError::Forecast(_) => exit::UNUSABLE,
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
}

pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// Which parameters get weight decay: matrices that are not embeddings, position tables or
/// Mamba's A_log (which, like the reference, is never decayed).
fn decays(graph: &Graph, names: &[String], shapes: &[Vec<usize>], all: bool) -> Vec<bool> {
    use crate::ir::Op;
    let no_decay: std::collections::HashSet<String> = graph
        .g
        .node_indices()
        .filter_map(|n| match graph.g[n].op {
            Op::Embedding | Op::AddPositions => Some(graph.inputs(n)[1]),
            Op::Mamba { .. } => Some(graph.inputs(n)[7]),
            _ => None,
        })
        .filter_map(|p| match &graph.g[p].op {
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

/// The statistics of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Training loss (mean over the micro-batches).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean attention entropy (nats) when the attention-entropy regularizer is on.
    pub attention_entropy: Option<f64>,
    /// Mean harmonic-sparsity term when its regularizer is on.
    pub harmonic_sparsity: Option<f64>,
    /// Mean multi-scale distribution term (unweighted) when it is on.
    pub distribution: Option<f64>,
    /// The frequency curriculum's cutoff used, while it masks the spectral gates.
    pub freq_cutoff: Option<f64>,
}

/// The gradients of one step's micro-batches, between [`Trainer::gradients`] and
/// [`Trainer::apply`].
pub struct StepGradients {
    /// Per parameter, flat, summed over the micro-batches.
    pub grads: Vec<Tensor<1>>,
    /// The step's statistics (the gradient norm is filled in by `apply`).
    pub stats: StepStats,
}

/// A model being trained: runtime, AdamW moments and the resumable state.
pub struct Trainer {
    /// The model.
    pub rt: Runtime,
    mom: Moments,
    decay: Vec<bool>,
    cfg: crate::spec::recipe::Train,
    /// Steps, data position and early-stopping state.
    pub state: State,
}

impl Trainer {
    /// A fresh model initialised from the recipe's seed, on `device` (with autodiff).
    pub fn new(cfg: &crate::spec::recipe::Train, graph: Graph, device: Device) -> Self {
        let rt = Runtime::init(graph, device.clone(), cfg.seed);
        let inner = device.without_autodiff();
        let zeros = |s: &Vec<usize>| Tensor::<1>::zeros([s.iter().product::<usize>()], &inner);
        let mom = Moments {
            m: rt.shapes.iter().map(zeros).collect(),
            v: rt.shapes.iter().map(zeros).collect(),
        };
        Self::assemble(cfg, rt, mom, State::fresh())
    }

    /// Continue from a checkpoint written by [`Trainer::save`].
    pub fn resume(
        cfg: &crate::spec::recipe::Train,
        graph: Graph,
        device: Device,
        path: &Path,
    ) -> Result<Self, TrainError> {
        let (w, m, state) = load_checkpoint(path)?;
        let rt = Runtime::with_values(graph, device.clone(), &w)
            .map_err(|e| TrainError::Checkpoint(format!("`{}`: {e}", path.display())))?;
        let inner = device.without_autodiff();
        let get = |k: String, shape: &[usize]| -> Result<Tensor<1>, TrainError> {
            let (d, s) = m
                .get(&k)
                .ok_or_else(|| TrainError::Checkpoint(format!("checkpoint lacks `{k}`")))?;
            if s != shape {
                return Err(TrainError::Checkpoint(format!("`{k}` has the wrong shape")));
            }
            Ok(Tensor::from_data(
                TensorData::new(d.clone(), [d.len()]),
                &inner,
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
        Ok(Self::assemble(cfg, rt, mom, state))
    }

    fn assemble(cfg: &crate::spec::recipe::Train, rt: Runtime, mom: Moments, state: State) -> Self {
        let Optimizer::Adamw { decay_all, .. } = cfg.optimizer;
        let decay = decays(rt.graph(), &rt.names, &rt.shapes, decay_all);
        Trainer {
            rt,
            mom,
            decay,
            cfg: cfg.clone(),
            state,
        }
    }

    /// One optimizer step over `micro` batches (gradient accumulation: the loss of each is
    /// divided by their number), of a run of `total` steps. Sequences hold L + 1 ids. A
    /// non-finite loss leaves the model and the state untouched and is returned as `Err`.
    pub fn step(&mut self, micro: &[Vec<Vec<i64>>], total: u64) -> Result<StepStats, f64> {
        let batches: Vec<Batch> = micro.iter().cloned().map(Batch::Tokens).collect();
        self.step_batches(&batches, total)
    }

    /// [`Trainer::step`] over batches of any task (forecasting windows train on the MSE).
    pub fn step_batches(&mut self, micro: &[Batch], total: u64) -> Result<StepStats, f64> {
        let g = self.gradients(micro, total)?;
        Ok(self.apply(g))
    }

    /// The first phase of a step: the forward and backward passes over the micro-batches, with
    /// their loss and gradients (summed). A non-finite loss is returned as `Err`, with the
    /// model untouched.
    pub fn gradients(&mut self, micro: &[Batch], total: u64) -> Result<StepGradients, f64> {
        let t = &self.cfg;
        let Optimizer::Adamw { lr, .. } = t.optimizer;
        let rt = &mut self.rt;
        let device = rt.device.clone();
        let inner = device.clone().without_autodiff();
        let lr_now = schedule::lr_at(&t.schedule, lr, self.state.step, total);
        // Gradients summed over the accumulation micro-batches.
        let mut acc: Vec<Option<Tensor<1>>> = vec![None; rt.params.len()];
        let mut loss_sum = 0.0;
        // Mean attention entropy and harmonic sparsity over the micro-batches, when their
        // terms are on.
        let mut entropy: Option<f64> = None;
        let mut sparsity: Option<f64> = None;
        let mut distribution: Option<f64> = None;
        let reg = &t.regularizers;
        let aux_on = reg.attention_entropy != 0.0 || reg.harmonic_sparsity != 0.0;
        let fc = t.frequency_curriculum.as_ref();
        let cutoff = fc.and_then(|c| c.cutoff(self.state.freq_clock));
        rt.freq_mask = cutoff.map(|cutoff| crate::ir::FreqCutoff {
            cutoff,
            slope: fc.and_then(|c| c.slope),
        });
        let n_micro = micro.len() as f64;
        for (k, batch) in micro.iter().enumerate() {
            device.seed(mix(t.seed, self.state.step, k as u64));
            let forward = |input: V| {
                if aux_on {
                    rt.forward_aux(input, true)
                } else {
                    (rt.forward_value(input, true), Aux::default())
                }
            };
            let (mut loss, aux) = match batch {
                Batch::Tokens(b) => {
                    let (x, y) = split_xy(b, &device);
                    let (logits, aux) = forward(V::I2(x));
                    let mut loss = cross_entropy(logits.clone(), y.clone(), t.label_smoothing);
                    if let Some(d) = &reg.distribution {
                        let term = distribution_loss(logits, y, &d.scales);
                        let tv: f32 = term.clone().into_scalar();
                        *distribution.get_or_insert(0.0) += f64::from(tv) / n_micro;
                        loss = loss + term.mul_scalar(d.weight);
                    }
                    (loss, aux)
                }
                Batch::Series {
                    x,
                    y,
                    x_dims,
                    y_dims,
                } => {
                    let x = Tensor::<3>::from_data(TensorData::new(x.clone(), *x_dims), &inner);
                    let y = Tensor::<3>::from_data(TensorData::new(y.clone(), *y_dims), &inner);
                    let (pred, aux) = forward(V::F3(x.autodiff()));
                    ((pred - y.autodiff()).powi_scalar(2).mean(), aux)
                }
            };
            for (w, terms, mean) in [
                (reg.attention_entropy, aux.attention_entropy, &mut entropy),
                (reg.harmonic_sparsity, aux.harmonic_sparsity, &mut sparsity),
            ] {
                if w != 0.0 && !terms.is_empty() {
                    let h = Tensor::cat(terms, 0).mean();
                    let hv: f32 = h.clone().into_scalar();
                    *mean.get_or_insert(0.0) += f64::from(hv) / n_micro;
                    loss = loss + h.mul_scalar(w);
                }
            }
            let loss = loss.div_scalar(n_micro);
            let value: f32 = loss.clone().into_scalar();
            loss_sum += f64::from(value);
            accumulate(&mut acc, rt, &loss.backward());
        }
        rt.freq_mask = None;
        if !loss_sum.is_finite() {
            return Err(loss_sum);
        }
        let grads: Vec<Tensor<1>> = acc
            .into_iter()
            .zip(&rt.shapes)
            .map(|(g, s)| g.unwrap_or_else(|| Tensor::zeros([s.iter().product::<usize>()], &inner)))
            .collect();
        Ok(StepGradients {
            grads,
            stats: StepStats {
                loss: loss_sum,
                grad_norm: f64::NAN,
                lr: lr_now,
                attention_entropy: entropy,
                harmonic_sparsity: sparsity,
                distribution,
                freq_cutoff: cutoff,
            },
        })
    }

    /// The second phase of a step: global-norm clipping and the AdamW update of every
    /// parameter with the gradients of [`Trainer::gradients`]; the step counts as done.
    pub fn apply(&mut self, g: StepGradients) -> StepStats {
        let t = &self.cfg;
        let Optimizer::Adamw {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = t.optimizer;
        let fc = t.frequency_curriculum.as_ref();
        let rt = &mut self.rt;
        let (grads, mut stats) = (g.grads, g.stats);
        let lr_now = stats.lr;
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
        let step1 = self.state.step + 1;
        let (bc1, bc2) = (
            1.0 - beta1.powi(step1 as i32),
            1.0 - beta2.powi(step1 as i32),
        );
        let h = AdamW {
            lr: lr_now as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            decay: 1.0,
            clip: clip as f32,
        };
        // Parameters and moments move out of the runtime and `self.mom` so that the update can
        // reuse their buffers.
        let (ps, ms, vs) = (
            std::mem::take(&mut rt.params),
            std::mem::take(&mut self.mom.m),
            std::mem::take(&mut self.mom.v),
        );
        for (i, (((g, p), m), v)) in grads.into_iter().zip(ps).zip(ms).zip(vs).enumerate() {
            let p = p.detach().flat();
            let decay = if self.decay[i] && weight_decay > 0.0 {
                (1.0 - lr_now * weight_decay) as f32
            } else {
                1.0
            };
            let [p, m, v] = fused::adamw(p, g, m, v, &AdamW { decay, ..h });
            self.mom.m.push(m);
            self.mom.v.push(v);
            rt.params
                .push(V::from_flat(p.autodiff(), &rt.shapes[i]).require_grad());
        }
        self.state.step = step1;
        if let Some(c) = fc {
            self.state.freq_clock += c.advance(self.state.since_best);
        }
        stats.grad_norm = norm;
        stats
    }

    /// Write the checkpoint (weights, moments, state) atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        checkpoint::save_checkpoint(path, &self.rt, &self.mom, &self.state)
    }
}

/// Progress of a run on stderr: an indicatif bar (loss, throughput, ETA) on a terminal,
/// plain lines at each evaluation otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    started: std::time::Instant,
    first_step: u64,
    total: u64,
}

impl Progress {
    fn new(enabled: bool, step: u64, total: u64) -> Self {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:20} {pos}/{len} {msg} {per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_position(step);
            bar.reset_eta();
            bar
        });
        Progress {
            lines: enabled && bar.is_none(),
            bar,
            started: std::time::Instant::now(),
            first_step: step,
            total,
        }
    }

    fn step(&self, step: u64, loss: f64, val: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            let val = if val.is_finite() {
                format!("{val:.4}")
            } else {
                "-".into()
            };
            bar.set_message(format!("loss {loss:.4} val {val}"));
        }
    }

    fn eval(&self, step: u64, loss: f64, val: f64, lr: f64) {
        if self.lines {
            let rate =
                (step - self.first_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "step {step:>6}/{}  loss {loss:.4}  val {val:.4}  lr {lr:.2e}  {rate:.1} steps/s",
                self.total
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
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
    // Metrics of steps after the checkpoint would be written again: drop them.
    let metrics_path = opts.dir.join("metrics.jsonl");
    truncate_metrics(&metrics_path, tr.state.step).map_err(io_at(&metrics_path))?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_at(&metrics_path))?;

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
            let result = tr.step_batches(&micro, total);
            let next = prefetch.map(|h| h.join().expect("the batch thread does not panic"));
            (result, next)
        });
        (tr.state.epoch, tr.state.pos) = after;
        if let Some((m, a)) = next {
            micro = m;
            after = a;
        }
        let stats = match result {
            Ok(s) => s,
            Err(value) => {
                progress.finish();
                return Err(TrainError::NonFinite {
                    value,
                    step: tr.state.step + 1,
                    kept: if ckpt.exists() {
                        load_checkpoint(&ckpt)?.2.step
                    } else {
                        0
                    },
                });
            }
        };
        let step = tr.state.step;
        last_loss = stats.loss;
        tr.state.last_loss = Some(stats.loss);
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
        writeln!(metrics, "{line}").map_err(io_at(&metrics_path))?;
        let last = step == total;
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
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"step": step, "val_loss": val_loss})
            )
            .map_err(io_at(&metrics_path))?;
            progress.eval(step, stats.loss, val_loss, stats.lr);
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
        progress.step(step, stats.loss, val_loss);
        let signal = crate::os::interrupt::received();
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
    let metrics = data.report(&tr.rt);
    let soft_attention_metrics = soft_attention_report(&data, &mut tr.rt);
    Ok(Summary {
        steps: tr.state.step,
        final_loss: last_loss,
        val_loss,
        best_val_loss: tr.state.best_val,
        stopped,
        metrics: Some(metrics),
        soft_attention_metrics,
        ensemble: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The members of an ensemble run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsembleSummary {
    /// The members' seeds.
    pub seeds: Vec<u64>,
    /// Their summaries, in seed order.
    pub members: Vec<Summary>,
}

/// An ensemble run's model: one graph of `seeds.len()` copies of `graph` (see
/// [`Graph::ensemble`]) and the weights of the members in `dir/member-<seed>/`, read by `load`
/// (last checkpoint or best weights) and renamed `member<i>.*`.
pub fn ensemble_model(
    graph: &Graph,
    dir: &Path,
    seeds: &[u64],
    load: impl Fn(&Path) -> Result<Weights, String>,
) -> Result<(Graph, Weights), String> {
    let mut weights = Weights::new();
    for (i, seed) in seeds.iter().enumerate() {
        let w = load(&dir.join(format!("member-{seed}")))?;
        weights.extend(w.into_iter().map(|(k, v)| (format!("member{i}.{k}"), v)));
    }
    Ok((Graph::ensemble(&vec![graph.clone(); seeds.len()])?, weights))
}

/// For a model with hard attention: the task report with its attention evaluated soft
/// (softmax weights); `None` for other models.
pub fn soft_attention_report(data: &Data, rt: &mut Runtime) -> Option<TaskReport> {
    rt.has_hard_attention().then(|| {
        rt.soft_attention = true;
        let m = data.report(rt);
        rt.soft_attention = false;
        m
    })
}

/// Train one member per seed in `opts.dir/member-<seed>` (a member with a summary is done
/// and kept; an interrupted one resumes from its checkpoint), then evaluate the ensemble: one
/// graph whose output is the log of the members' average probabilities, with their last
/// weights.
pub fn train_ensemble(
    recipe: &RecipeSpec,
    graph: &Graph,
    seeds: &[u64],
    opts: &RunOptions,
) -> Result<Summary, TrainError> {
    let mut members = Vec::with_capacity(seeds.len());
    for (k, &seed) in seeds.iter().enumerate() {
        let dir = opts.dir.join(format!("member-{seed}"));
        let done = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Summary>(&t).ok());
        let summary = match done {
            Some(s) => s,
            None => {
                if opts.progress {
                    eprintln!(
                        "kiln: ensemble member {}/{} (seed {seed}) in {}",
                        k + 1,
                        seeds.len(),
                        dir.display()
                    );
                }
                let mut r = recipe.clone();
                r.train.seed = seed;
                r.ensemble = None;
                let s = train(
                    &r,
                    graph.clone(),
                    &RunOptions {
                        dir: dir.clone(),
                        ..opts.clone()
                    },
                )
                .map_err(|e| match e {
                    // The ensemble resumes as a whole, from its own directory.
                    TrainError::Interrupted {
                        signal,
                        step,
                        total,
                        ..
                    } => TrainError::Interrupted {
                        signal,
                        step,
                        total,
                        dir: opts.dir.clone(),
                    },
                    e => e,
                })?;
                let text = serde_json::to_string_pretty(&s).expect("summary serializes");
                let path = dir.join("summary.json");
                crate::util::write_atomic(&path, text.as_bytes()).map_err(io_at(&path))?;
                s
            }
        };
        members.push(summary);
    }
    let started = std::time::Instant::now();
    let (eg, weights) = ensemble_model(graph, &opts.dir, seeds, |d| {
        load_checkpoint(&d.join("checkpoint.safetensors"))
            .map(|(w, _, _)| w)
            .map_err(|e| e.to_string())
    })
    .map_err(TrainError::Checkpoint)?;
    let mut rt = Runtime::with_values(eg, opts.device.device(false), &weights)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    rt.matmul_dtype = opts.matmul_dtype;
    let data = Data::new(&recipe.task, recipe.train.seed)?;
    let bs = data.batch_size(recipe.train.batch_size as usize);
    let val_loss = data.val_loss(&rt, bs.max(64));
    let metrics = data.report(&rt);
    let n = members.len() as f64;
    Ok(Summary {
        steps: members.iter().map(|m| m.steps).sum(),
        final_loss: members.iter().map(|m| m.final_loss).sum::<f64>() / n,
        val_loss,
        best_val_loss: val_loss,
        stopped: format!("ensemble of {} members", members.len()),
        metrics: Some(metrics),
        soft_attention_metrics: None,
        seconds: members.iter().map(|m| m.seconds).sum::<f64>() + started.elapsed().as_secs_f64(),
        ensemble: Some(EnsembleSummary {
            seeds: seeds.to_vec(),
            members,
        }),
    })
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
