//! A recipe's `train` section: optimizer, schedule, regularizers, curricula, early stopping.

use super::super::defaults::default_one;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// The optimizer.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// The learning-rate schedule (a factor on the optimizer's `lr`).
    #[serde(default)]
    pub schedule: Schedule,
    /// Number of optimizer steps. Give `steps` or `epochs`, not both.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000000))]
    pub steps: Option<u64>,
    /// Number of passes over the training set. Give `steps` or `epochs`, not both.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000000))]
    pub epochs: Option<u64>,
    /// Sequences per optimizer step (before gradient accumulation).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1048576))]
    pub batch_size: u32,
    /// Accumulate gradients over this many batches per optimizer step.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 4096))]
    pub grad_accum: u32,
    /// Clip the global gradient norm (over all parameters together, as PyTorch's
    /// `clip_grad_norm_`) to this value; leave it out for no clipping.
    #[serde(default)]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub clip_grad_norm: Option<f64>,
    /// Label smoothing ε: the target is (1 − ε)·one-hot + ε/K over all K classes.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 0.99))]
    pub label_smoothing: f64,
    /// Seed of every random choice (initialisation, data order, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Evaluate on the validation set every this many steps.
    #[serde(default = "default_eval_every")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub eval_every: u64,
    /// Stop when the validation loss has not improved for a while; leave it out to always
    /// train for the full duration.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Write a checkpoint every this many steps (and at the end).
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub checkpoint_every: u64,
    /// Sequence-length curriculum: train on short prefixes first. Leave it out to train on
    /// whole sequences from the first step.
    #[serde(default)]
    pub curriculum: Option<Curriculum>,
    /// Frequency curriculum: the model's spectral gates pass only low frequencies at first.
    /// Leave it out to train every gate on its whole band from the first step.
    #[serde(default)]
    pub frequency_curriculum: Option<FrequencyCurriculum>,
    /// Extra loss terms added to the cross-entropy, each with its weight.
    #[serde(default)]
    pub regularizers: Regularizers,
}

/// Weighted loss terms added to the training objective (validation loss and metrics stay the
/// plain cross-entropy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Regularizers {
    /// Weight w of the attention-entropy term: w · (mean over attention layers of the mean
    /// entropy −Σ_j p_ij ln p_ij of each query's attention row, in nats). Positive weights
    /// sharpen attention, negative ones spread it; 0 (the default) leaves it out.
    #[serde(default)]
    #[schemars(range(min = -100.0, max = 100.0))]
    pub attention_entropy: f64,
    /// Weight w of the harmonic-sparsity term: w · (mean over `harmonic_select` layers of the
    /// mean probability mass, softmax(scores/τ), that each position's scorer puts on harmonics
    /// outside its top k). It is 0 when every scorer is sure of its k harmonics, so positive
    /// weights make the soft selection agree with the hard one. 0 (the default) leaves it out;
    /// a model without `harmonic_select` layers cannot use it.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub harmonic_sparsity: f64,
    /// The multi-scale distribution term for token tasks; leave it out for none.
    #[serde(default)]
    pub distribution: Option<DistributionLoss>,
}

/// Multi-scale distribution loss: at each scale s the classes 0..V are cut into s contiguous
/// bins (class c in bin ⌊c·s/V⌋), and the batch's histogram of targets t_s is compared with
/// the model's mean predicted probability per bin p_s by KL(t_s ‖ p_s) = Σ_b t_b ln(t_b/p_b).
/// The term is `weight` times the mean over the scales. It pulls the model's marginal
/// distribution towards the data's at coarse and fine resolutions (a differentiable version
/// of the seed notes' binned-histogram regularizer, whose `bincount` has no gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributionLoss {
    /// Weight of the term.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub weight: f64,
    /// Numbers of bins, each from 2 to the vocabulary size.
    #[schemars(length(min = 1, max = 16))]
    pub scales: Vec<u32>,
}

/// A sequence-length curriculum: at step t every training sequence is cut to its first
/// L(t) + 1 tokens (L(t) inputs, each with its next-token target), L growing from `start` to
/// the task's full length over `steps` optimizer steps (or `epochs` passes over the training
/// set) and staying there. Validation and evaluation always use whole sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// Input tokens per training sequence at the first step.
    #[schemars(range(min = 1, max = 1048576))]
    pub start: u32,
    /// Steps until the full length is reached. Give `steps` or `epochs`, not both.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000000))]
    pub steps: Option<u64>,
    /// Epochs (passes over the training set, in steps of the run's batch size) until the full
    /// length is reached. Give `steps` or `epochs`, not both.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000000))]
    pub epochs: Option<u64>,
    /// How the length grows with u = t / steps: `linear` (start + (full − start)·u),
    /// `exponential` (start·(full/start)^u, doubling at equal intervals) or `cosine`
    /// (start + (full − start)·(1 − cos πu)/2). Lengths are rounded down.
    #[serde(default)]
    pub growth: Growth,
}

/// Growth of a curriculum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Growth {
    /// Linear in the step.
    #[default]
    Linear,
    /// Geometric in the step.
    Exponential,
    /// Half a cosine: slow, fast, slow.
    Cosine,
}

impl Curriculum {
    /// Steps until the full length, for `per_epoch` steps per epoch.
    pub fn span(&self, per_epoch: u64) -> u64 {
        self.steps
            .unwrap_or_else(|| self.epochs.unwrap_or(1) * per_epoch)
            .max(1)
    }

    /// The input length at step `t` (0-based) for a task whose full length is `full`, with
    /// `per_epoch` steps per epoch.
    pub fn length(&self, t: u64, full: u64, per_epoch: u64) -> u64 {
        let start = u64::from(self.start).min(full);
        let span = self.span(per_epoch);
        if t >= span {
            return full;
        }
        let u = t as f64 / span as f64;
        let (a, b) = (start as f64, full as f64);
        let l = match self.growth {
            Growth::Linear => a + (b - a) * u,
            Growth::Exponential => a * (b / a).powf(u),
            Growth::Cosine => a + (b - a) * (1.0 - (std::f64::consts::PI * u).cos()) / 2.0,
        };
        (l.floor() as u64).clamp(start, full)
    }
}

/// A frequency curriculum over the model's `spectral_gate` layers. At training step t each
/// gate's parameter is low-passed to a cutoff c(t), a fraction of its band: frequency bin k of
/// F has normalized frequency f_k = k/(F − 1) and is multiplied by m_k = 1 if f_k ≤ c else 0
/// (hard mask), or by m_k = sigmoid(slope · (c − f_k)) (soft mask, when `slope` is given). A
/// circular gate's complex gains are masked per rfft bin; a causal gate's kernel h (its taps
/// 0..l) is masked in the DCT-II basis, h' = Cᵀ·diag(m)·C·h with C orthonormal, so the kernel
/// stays causal and an all-ones mask leaves it unchanged.
///
/// The cutoff follows a clock τ that starts at 0 and advances by 1 per optimizer step: c = start
/// while τ < warmup, then grows from `start` to `end` over `steps` more steps (`growth`). Once
/// τ ≥ warmup + steps the mask is lifted: later steps, validation and evaluation always use the
/// unmasked gates. With `adaptive`, while the validation loss has not improved for `patience`
/// evaluations the clock advances by only `rate` per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCurriculum {
    /// Cutoff at the first step, as a fraction of each gate's band (0 < start ≤ end).
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub start: f64,
    /// Cutoff reached at the end of the growth, just before the mask is lifted.
    #[serde(default = "default_cutoff_end")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub end: f64,
    /// Steps held at `start` before the cutoff grows.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000000))]
    pub warmup: u64,
    /// Steps over which the cutoff grows from `start` to `end`.
    #[schemars(range(min = 1, max = 1000000000))]
    pub steps: u64,
    /// How the cutoff grows with u = (τ − warmup)/steps: `linear`, `exponential`
    /// (start·(end/start)^u) or `cosine` (start + (end − start)·(1 − cos πu)/2).
    #[serde(default)]
    pub growth: Growth,
    /// Slope of the soft mask sigmoid(slope · (c − f)); leave it out for a hard mask.
    #[serde(default)]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub slope: Option<f64>,
    /// Slow the curriculum down while the validation loss stalls; leave it out for a fixed
    /// schedule.
    #[serde(default)]
    pub adaptive: Option<AdaptiveSlowDown>,
}

/// The adaptive part of a frequency curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSlowDown {
    /// Evaluations (every `train.eval_every` steps) without an improvement of the validation
    /// loss after which the curriculum slows down (an improvement is a decrease by more than
    /// `early_stopping.min_delta`, 0 without early stopping).
    #[schemars(range(min = 1, max = 100000))]
    pub patience: u32,
    /// What the clock advances per step while slowed down (1 would be no slow-down).
    #[serde(default = "default_slow_rate")]
    #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
    pub rate: f64,
}

fn default_cutoff_end() -> f64 {
    1.0
}
fn default_slow_rate() -> f64 {
    0.5
}

impl FrequencyCurriculum {
    /// The cutoff at clock `tau`, or `None` once the mask is lifted (τ ≥ warmup + steps).
    pub fn cutoff(&self, tau: f64) -> Option<f64> {
        let (w, n) = (self.warmup as f64, self.steps as f64);
        if tau >= w + n {
            return None;
        }
        let u = ((tau - w) / n).clamp(0.0, 1.0);
        let (a, b) = (self.start, self.end.max(self.start));
        Some(match self.growth {
            Growth::Linear => a + (b - a) * u,
            Growth::Exponential => a * (b / a).powf(u),
            Growth::Cosine => a + (b - a) * (1.0 - (std::f64::consts::PI * u).cos()) / 2.0,
        })
    }

    /// How far the clock moves in one step, given the evaluations since the best one.
    pub fn advance(&self, evals_since_best: u32) -> f64 {
        match &self.adaptive {
            Some(a) if evals_since_best >= a.patience => a.rate,
            _ => 1.0,
        }
    }
}

fn default_batch() -> u32 {
    32
}
fn default_eval_every() -> u64 {
    100
}
fn default_checkpoint_every() -> u64 {
    500
}

/// Early stopping on the validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Number of evaluations without improvement before stopping.
    #[serde(default = "default_patience")]
    #[schemars(range(min = 1, max = 100000))]
    pub patience: u32,
    /// Smallest decrease of the validation loss that counts as an improvement.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1e6))]
    pub min_delta: f64,
}

fn default_patience() -> u32 {
    10
}

/// The optimizer. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Adam with decoupled weight decay (Loshchilov & Hutter 2019).
    Adamw {
        /// Peak learning rate.
        #[serde(default = "default_lr")]
        #[schemars(range(max = 10.0), extend("exclusiveMinimum" = 0.0))]
        lr: f64,
        /// Decay rate of the first-moment estimate.
        #[serde(default = "default_beta1")]
        #[schemars(range(min = 0.0, max = 0.9999))]
        beta1: f64,
        /// Decay rate of the second-moment estimate.
        #[serde(default = "default_beta2")]
        #[schemars(range(min = 0.0, max = 0.99999))]
        beta2: f64,
        /// Added to the denominator for numerical stability.
        #[serde(default = "default_adam_eps")]
        #[schemars(range(min = 0.0, max = 1.0))]
        eps: f64,
        /// Decoupled weight decay λ: θ ← θ − lr·λ·θ each step.
        #[serde(default = "default_wd")]
        #[schemars(range(min = 0.0, max = 10.0))]
        weight_decay: f64,
        /// Also decay norm gains, biases and embeddings (usually left false).
        #[serde(default)]
        decay_all: bool,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Adamw {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_adam_eps(),
            weight_decay: default_wd(),
            decay_all: false,
        }
    }
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    0.01
}

/// A learning-rate schedule. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The optimizer's `lr` throughout.
    Constant {},
    /// Linear warm-up from 0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at the
    /// last step.
    WarmupCosine {
        /// Steps of linear warm-up.
        #[serde(default)]
        #[schemars(range(min = 0, max = 1000000000))]
        warmup_steps: u64,
        /// Learning rate at the last step.
        #[serde(default)]
        #[schemars(range(min = 0.0, max = 10.0))]
        min_lr: f64,
    },
    /// Linear warm-up over `warmup_steps`, then lr · 1/√((t + timescale − warmup)/timescale)
    /// (Hugging Face `get_inverse_sqrt_schedule`; used by the rule-extrapolation paper).
    InverseSqrt {
        /// Steps of linear warm-up.
        #[schemars(range(min = 1, max = 1000000000))]
        warmup_steps: u64,
        /// Time scale of the decay; leave it out for `warmup_steps`.
        #[serde(default)]
        #[schemars(range(min = 1, max = 1000000000))]
        timescale: Option<u64>,
    },
    /// One-cycle policy (PyTorch `OneCycleLR`, cosine): up from lr/div_factor to lr over
    /// pct_start of the run, then down to lr/(div_factor·final_div_factor).
    OneCycle {
        /// Fraction of the run spent increasing the learning rate.
        #[serde(default = "default_pct_start")]
        #[schemars(range(min = 0.0, max = 1.0))]
        pct_start: f64,
        /// The initial learning rate is lr / div_factor.
        #[serde(default = "default_div_factor")]
        #[schemars(range(min = 1.0, max = 1e9))]
        div_factor: f64,
        /// The final learning rate is lr / (div_factor · final_div_factor).
        #[serde(default = "default_final_div_factor")]
        #[schemars(range(min = 1.0, max = 1e12))]
        final_div_factor: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant {}
    }
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}

#[cfg(test)]
mod curriculum_tests {
    use super::{AdaptiveSlowDown, Curriculum, FrequencyCurriculum, Growth};

    #[test]
    fn frequency_cutoff_holds_grows_and_lifts() {
        let c = |growth| FrequencyCurriculum {
            start: 0.25,
            end: 1.0,
            warmup: 10,
            steps: 100,
            growth,
            slope: None,
            adaptive: None,
        };
        let lin = c(Growth::Linear);
        assert_eq!(lin.cutoff(0.0), Some(0.25));
        assert_eq!(lin.cutoff(9.0), Some(0.25), "held during warm-up");
        assert_eq!(lin.cutoff(60.0), Some(0.625));
        assert!((lin.cutoff(109.0).unwrap() - 0.9925).abs() < 1e-12);
        assert_eq!(lin.cutoff(110.0), None, "lifted after warmup + steps");
        let exp = c(Growth::Exponential);
        assert!(
            (exp.cutoff(60.0).unwrap() - 0.5).abs() < 1e-12,
            "geometric mean"
        );
        let cos = c(Growth::Cosine);
        assert!((cos.cutoff(60.0).unwrap() - 0.625).abs() < 1e-12);
        assert!(
            cos.cutoff(20.0).unwrap() < lin.cutoff(20.0).unwrap(),
            "slow start"
        );
        assert_eq!(lin.advance(100), 1.0, "no slow-down without `adaptive`");
        let ad = FrequencyCurriculum {
            adaptive: Some(AdaptiveSlowDown {
                patience: 3,
                rate: 0.25,
            }),
            ..lin
        };
        assert_eq!(ad.advance(2), 1.0);
        assert_eq!(ad.advance(3), 0.25);
    }

    #[test]
    fn lengths_grow_from_start_to_full_as_declared() {
        let c = |growth| Curriculum {
            start: 8,
            steps: Some(100),
            epochs: None,
            growth,
        };
        let lin = c(Growth::Linear);
        assert_eq!(lin.length(0, 64, 1), 8);
        assert_eq!(lin.length(50, 64, 1), 36);
        assert_eq!(lin.length(99, 64, 1), 63);
        assert_eq!(lin.length(100, 64, 1), 64);
        assert_eq!(lin.length(5000, 64, 1), 64);
        let exp = c(Growth::Exponential);
        assert_eq!(exp.length(50, 32, 1), 16, "halfway is the geometric mean");
        let cos = c(Growth::Cosine);
        assert_eq!(cos.length(50, 64, 1), 36);
        assert!(cos.length(10, 64, 1) < lin.length(10, 64, 1), "slow start");
        assert_eq!(
            lin.length(0, 4, 1),
            4,
            "a start beyond the task is the full length"
        );
        for g in [Growth::Linear, Growth::Exponential, Growth::Cosine] {
            let v: Vec<u64> = (0..120).map(|t| c(g).length(t, 64, 1)).collect();
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{g:?} never shrinks");
        }
        let by_epochs = Curriculum {
            steps: None,
            epochs: Some(2),
            ..c(Growth::Linear)
        };
        assert_eq!(by_epochs.span(50), 100, "2 epochs of 50 steps");
        assert_eq!(by_epochs.length(50, 64, 50), 36);
    }
}
