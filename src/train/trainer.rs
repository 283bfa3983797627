//! The [`Trainer`]: one optimizer step (forward, loss and backward; global-norm clipping and
//! the fused AdamW update) and its checkpoint.

use super::grouped::adamw_grouped;
use super::pending::{self, Pending};
use super::{
    checkpoint, cross_entropy, distribution_loss, load_checkpoint, schedule, split_xy, Batch,
    Moments, State, TrainError,
};
use crate::ir::Graph;
use crate::runtime::fused::{self, AdamW};
use crate::runtime::{Aux, AuxWants, Runtime, V};
use crate::spec::recipe::Optimizer;
use crate::util::Rng;
use burn::prelude::*;
use burn::tensor::FloatDType;
use std::path::Path;

/// The multiple of positions a GPU pads token inputs to ([`Runtime::pad_to`]).
pub const GPU_PAD_TO: usize = 16;

/// The multiple of positions a run pads token inputs to unless asked otherwise: what the run it
/// resumes padded to (`stored`, from its checkpoint), else the device's default (16 on a GPU,
/// none on the CPU).
pub fn default_pad_to(gpu: bool, stored: Option<usize>) -> usize {
    stored.unwrap_or(if gpu { GPU_PAD_TO } else { 1 })
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

/// The squared global norm of `grads` (f32, one element; zero without parameters), on the device.
fn norm2(grads: &[Tensor<1>], inner: &Device) -> Tensor<1> {
    grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum())
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([1], inner))
}

/// PyTorch's clip factor `min(1, c / (norm + 1e-6))` from the squared norm, on the device. In
/// f64 where the device has it, so that it equals, bit for bit, the factor computed on the host
/// from the norm read back (f64 square root, sum and quotient are correctly rounded).
fn clip_factor(norm2: Tensor<1>, c: f64) -> Tensor<1> {
    let f64_ok = norm2.device().supports_dtype(FloatDType::F64);
    let dtype = if f64_ok {
        FloatDType::F64
    } else {
        FloatDType::F32
    };
    let norm = norm2.cast(dtype).sqrt();
    (norm.full_like(c) / norm.add_scalar(1e-6))
        .clamp_max(1.0)
        .cast(FloatDType::F32)
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
    use crate::ops::{port, OpDef};
    let no_decay: std::collections::HashSet<String> = graph
        .g
        .node_indices()
        .filter_map(|n| match graph.g[n].op {
            Op::Embedding(_) | Op::Positions(crate::ops::positions::Positions::Add) => {
                Some(graph.inputs(n)[1])
            }
            Op::Mamba(o) => Some(*port(o.ports(), &graph.inputs(n), "a_log")),
            _ => None,
        })
        .filter_map(|p| match &graph.g[p].op {
            Op::Param(crate::ir::Param { name, .. }) => Some(name.clone()),
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
    /// Update all parameters at once over grouped buffers ([`super::grouped`]), as a GPU
    /// does, rather than per parameter with the CPU's fused kernel.
    pub grouped_adamw: bool,
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

    fn assemble(
        cfg: &crate::spec::recipe::Train,
        mut rt: Runtime,
        mom: Moments,
        state: State,
    ) -> Self {
        // A GPU draws dropout keys on the host (no read inside a step), updates the
        // parameters over grouped buffers (a few kernels, not ~10 per parameter) and runs
        // token inputs padded to a multiple of 16 positions (static shapes that vectorise).
        let gpu = !crate::runtime::is_cpu(&rt.device);
        rt.host_dropout_keys = gpu;
        // A resumed run pads as the run it continues did.
        rt.pad_to = default_pad_to(gpu, state.pad_to);
        let Optimizer::Adamw { decay_all, .. } = cfg.optimizer;
        let decay = decays(rt.graph(), &rt.names, &rt.shapes, decay_all);
        Trainer {
            rt,
            mom,
            decay,
            cfg: cfg.clone(),
            state,
            grouped_adamw: gpu,
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
        let (grads, pending) = self.forward_backward(micro, total);
        let stats = pending::read(std::slice::from_ref(&pending))[0];
        if !stats.loss.is_finite() {
            return Err(stats.loss);
        }
        Ok(StepGradients { grads, stats })
    }

    /// A whole step that reads nothing back from the device: the losses and the gradient norm
    /// stay there (read them with [`pending::read`], which gives what [`Trainer::step_batches`]
    /// gives), and global-norm clipping scales the gradients on the device. The update is
    /// applied whatever the loss: a caller must read the loss before it saves the model.
    pub fn step_deferred(&mut self, micro: &[Batch], total: u64) -> Pending {
        let (grads, mut pending) = self.forward_backward(micro, total);
        let norm2 = norm2(&grads, &self.rt.device.clone().without_autodiff());
        let grads = match self.cfg.clip_grad_norm {
            Some(c) => {
                let clip = clip_factor(norm2.clone(), c);
                grads
                    .into_iter()
                    .map(|g| {
                        let n = g.dims()[0];
                        g * clip.clone().expand([n])
                    })
                    .collect()
            }
            None => grads,
        };
        self.update(grads, pending.lr, 1.0);
        pending.norm2 = Some(norm2);
        pending
    }

    /// The forward and backward passes over the micro-batches: the gradients (per parameter,
    /// flat, summed) and the step's statistics on the device. Reads nothing back.
    fn forward_backward(&mut self, micro: &[Batch], total: u64) -> (Vec<Tensor<1>>, Pending) {
        let t = &self.cfg;
        let Optimizer::Adamw { lr, .. } = t.optimizer;
        let rt = &mut self.rt;
        let device = rt.device.clone();
        let inner = device.clone().without_autodiff();
        let lr_now = schedule::lr_at(&t.schedule, lr, self.state.step, total);
        // Gradients summed over the accumulation micro-batches.
        let mut acc: Vec<Option<Tensor<1>>> = vec![None; rt.params.len()];
        let reg = &t.regularizers;
        let wants = AuxWants {
            attention_entropy: reg.attention_entropy != 0.0,
            harmonic_sparsity: reg.harmonic_sparsity != 0.0,
        };
        let aux_on = wants.attention_entropy || wants.harmonic_sparsity;
        let fc = t.frequency_curriculum.as_ref();
        let cutoff = fc.and_then(|c| c.cutoff(self.state.freq_clock));
        rt.freq_mask = cutoff.map(|cutoff| crate::ops::spectral::FreqCutoff {
            cutoff,
            slope: fc.and_then(|c| c.slope),
        });
        let n_micro = micro.len() as f64;
        let mut p = Pending {
            loss: Vec::with_capacity(micro.len()),
            entropy: Vec::new(),
            sparsity: Vec::new(),
            distribution: Vec::new(),
            n_micro,
            norm2: None,
            lr: lr_now,
            freq_cutoff: cutoff,
        };
        for (k, batch) in micro.iter().enumerate() {
            let seed = mix(t.seed, self.state.step, k as u64);
            device.seed(seed);
            rt.seed_dropout(seed);
            let forward = |input: V| {
                if aux_on {
                    rt.forward_aux(input, true, wants)
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
                        p.distribution.push(term.clone().detach());
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
            for (w, terms, means) in [
                (reg.attention_entropy, aux.attention_entropy, &mut p.entropy),
                (
                    reg.harmonic_sparsity,
                    aux.harmonic_sparsity,
                    &mut p.sparsity,
                ),
            ] {
                if w != 0.0 && !terms.is_empty() {
                    let h = Tensor::cat(terms, 0).mean();
                    means.push(h.clone().detach());
                    loss = loss + h.mul_scalar(w);
                }
            }
            let loss = loss.div_scalar(n_micro);
            p.loss.push(loss.clone().detach());
            accumulate(&mut acc, rt, &loss.backward());
        }
        rt.freq_mask = None;
        let grads: Vec<Tensor<1>> = acc
            .into_iter()
            .zip(&rt.shapes)
            .map(|(g, s)| g.unwrap_or_else(|| Tensor::zeros([s.iter().product::<usize>()], &inner)))
            .collect();
        (grads, p)
    }

    /// The second phase of a step: global-norm clipping and the AdamW update of every
    /// parameter with the gradients of [`Trainer::gradients`]; the step counts as done.
    pub fn apply(&mut self, g: StepGradients) -> StepStats {
        let (grads, mut stats) = (g.grads, g.stats);
        // Global-norm clipping over all parameters together (PyTorch clip_grad_norm_).
        let inner = self.rt.device.clone().without_autodiff();
        let norm2: f32 = norm2(&grads, &inner).into_scalar();
        let norm = f64::from(norm2).sqrt();
        let clip = self
            .cfg
            .clip_grad_norm
            .map_or(1.0, |c| (c / (norm + 1e-6)).min(1.0));
        self.update(grads, stats.lr, clip as f32);
        stats.grad_norm = norm;
        stats
    }

    /// The AdamW update of every parameter with `grads` (scaled by `clip` first); the step
    /// counts as done.
    fn update(&mut self, grads: Vec<Tensor<1>>, lr_now: f64, clip: f32) {
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
            clip,
        };
        // Parameters and moments move out of the runtime and `self.mom` so that the update can
        // reuse their buffers.
        let (ps, ms, vs) = (
            std::mem::take(&mut rt.params),
            std::mem::take(&mut self.mom.m),
            std::mem::take(&mut self.mom.v),
        );
        let decays: Vec<f32> = self
            .decay
            .iter()
            .map(|&d| {
                if d && weight_decay > 0.0 {
                    (1.0 - lr_now * weight_decay) as f32
                } else {
                    1.0
                }
            })
            .collect();
        let ps: Vec<Tensor<1>> = ps.into_iter().map(|p| p.detach().flat()).collect();
        let [ps, ms, vs] = if self.grouped_adamw {
            adamw_grouped(ps, grads, (ms, vs), &decays, &h)
        } else {
            let mut out: [Vec<Tensor<1>>; 3] = Default::default();
            for ((((g, p), m), v), &decay) in grads.into_iter().zip(ps).zip(ms).zip(vs).zip(&decays)
            {
                for (o, x) in out
                    .iter_mut()
                    .zip(fused::adamw(p, g, m, v, &AdamW { decay, ..h }))
                {
                    o.push(x);
                }
            }
            out
        };
        self.mom.m = ms;
        self.mom.v = vs;
        rt.params = ps
            .into_iter()
            .zip(&rt.shapes)
            .map(|(p, s)| V::from_flat(p.autodiff(), s).require_grad())
            .collect();
        self.state.step = step1;
        if let Some(c) = fc {
            self.state.freq_clock += c.advance(self.state.since_best);
        }
    }

    /// Write the checkpoint (weights, moments, state) atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let state = State {
            pad_to: Some(self.rt.pad_to),
            ..self.state.clone()
        };
        checkpoint::save_checkpoint(path, &self.rt, &self.mom, &state)
    }
}
