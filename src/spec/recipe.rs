//! `kind: recipe` documents: a model, a task, and how to train and decode it.

use super::defaults::{default_one, default_one_f64, default_true};
use super::model::ModelSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `kind` of a recipe document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipeKind {
    /// An experiment recipe.
    Recipe,
}

/// A kiln recipe: which model to train on which task, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kiln recipe")]
pub struct RecipeSpec {
    /// Document kind; always `recipe`.
    pub kind: RecipeKind,
    /// Short name used in reports and run directories.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text describing the experiment.
    #[serde(default)]
    pub description: Option<String>,
    /// The model: a path to a `kind: model` file (relative to this recipe), or the model
    /// written inline.
    pub model: ModelRef,
    /// The task: data, loss and metrics.
    pub task: Task,
    /// Training settings.
    pub train: Train,
    /// How to generate sequences from the trained model.
    #[serde(default)]
    pub decode: Decode,
    /// Accept a model that lets position t see later positions although the task predicts the
    /// next token. kiln rejects such models unless this is `true`.
    #[serde(default)]
    pub allow_noncausal: bool,
    /// Trials that vary this recipe, run by `kiln sweep` (`kiln train` trains the recipe as
    /// written).
    #[serde(default)]
    pub sweep: Option<Sweep>,
    /// Train one model per seed and evaluate the average of their probabilities, reported
    /// beside the members' mean.
    #[serde(default)]
    pub ensemble: Option<Ensemble>,
}

/// An ensemble of identically configured models that differ in their seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    /// One member per seed (`train.seed`); at least two, all different.
    #[schemars(length(min = 2, max = 64))]
    pub seeds: Vec<u64>,
}

/// A sweep: every combination of the `grid` values, times the `zip` rows, times the `seeds`.
/// Keys are dotted paths as in `--set` (`train.optimizer.lr`, `model.vars.depth`, `model`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Cartesian product: each key takes each of its values with every value of the others.
    #[serde(default)]
    pub grid: std::collections::BTreeMap<String, Vec<SweepValue>>,
    /// Values that vary together: the i-th trial row takes the i-th value of every key (all
    /// lists of one length).
    #[serde(default)]
    pub zip: std::collections::BTreeMap<String, Vec<SweepValue>>,
    /// Random search: `count` draws of the listed keys, each combined with every grid × zip
    /// point.
    #[serde(default)]
    pub random: Option<RandomSearch>,
    /// Seeds (`train.seed`) replicating every point; leave it out for the recipe's seed.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Conditional parameters: `key: {other: [values]}` sets the swept `key` only in trials
    /// where every listed other swept key has one of the listed values (e.g. attention heads
    /// only for the Transformer). Points that then coincide run once.
    #[serde(default)]
    pub when:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<SweepValue>>>,
}

/// Random search over distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomSearch {
    /// Number of draws.
    #[schemars(range(min = 1, max = 100000))]
    pub count: u32,
    /// Seed of the draws (draw k is the same whatever the other settings).
    #[serde(default)]
    pub seed: u64,
    /// The distribution of each key.
    pub params: std::collections::BTreeMap<String, Distribution>,
}

/// A distribution of random search. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Uniform on [low, high).
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Log-uniform on [low, high) (both > 0), e.g. learning rates.
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// A uniform integer in [low, high].
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound (included).
        high: i64,
    },
    /// One of the values, uniformly.
    Choice {
        /// The values.
        values: Vec<SweepValue>,
    },
}

/// One value of a swept key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SweepValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A string (e.g. a model file path, an enum value).
    Str(String),
}

impl std::fmt::Display for SweepValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepValue::Bool(b) => write!(f, "{b}"),
            SweepValue::Int(i) => write!(f, "{i}"),
            SweepValue::Float(x) => write!(f, "{x:?}"),
            SweepValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// A model file path or an inline model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelRef {
    /// Path of a `kind: model` file, relative to the recipe.
    Path(String),
    /// The model itself.
    Inline(Box<ModelSpec>),
}

/// A formal language of the rule-extrapolation benchmark (Mészáros et al. 2024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Language {
    /// aⁿbⁿ (context-free). R1: #a = #b; R2: no a after the first b.
    #[serde(rename = "aNbN")]
    ANbN,
    /// aⁿbⁿcⁿ (context-sensitive). R1: #a = #b = #c; R2: a's before b's before c's.
    #[serde(rename = "aNbNcN")]
    ANbNcN,
    /// b a^even (regular). R1: even number of a; R2: starts with b.
    #[serde(rename = "baN")]
    BaN,
    /// bⁿ a^2m (regular). R1: even number of a after the last b; R2: b's before a's, ≥ 1 b.
    #[serde(rename = "bbaN")]
    BbaN,
    /// Dyck language with ( ) and [ ], nested (context-free).
    #[serde(rename = "dyck")]
    Dyck,
    /// Two bracket types matched independently, crossing allowed (context-sensitive Dyck).
    #[serde(rename = "cs_dyck")]
    CsDyck,
}

/// The task a model is trained on. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Next-token prediction on a formal language, evaluated by greedy completion of in- and
    /// out-of-distribution prompts (rule extrapolation).
    Grammar {
        /// Which language.
        language: Language,
        /// Longest word; sequences are `SOS word EOS` right-padded to max_length + 2.
        #[serde(default = "default_max_length")]
        #[schemars(range(min = 8, max = 4096))]
        max_length: u32,
        /// Number of training words for the sampled languages (baN, bbaN, both Dyck); the
        /// aNbN and aNbNcN sets are all words up to max_length. Leave it out for the paper's
        /// value (15000 for baN and bbaN, 512 for Dyck).
        #[serde(default)]
        #[schemars(range(min = 1, max = 10000000))]
        num_train: Option<u32>,
        /// Number of validation words for the sampled languages.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_val: u32,
        /// Number of test words for the sampled languages.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_test: u32,
    },
    /// Next-value prediction on a binary file of little-endian uint16 values.
    Uint16 {
        /// The data file, relative to the recipe.
        path: String,
        /// Number of distinct values (classes); every value in the file must be below it.
        #[serde(default = "default_u16_vocab")]
        #[schemars(range(min = 2, max = 65536))]
        vocab: u32,
        /// Length of the context window the model reads.
        #[schemars(range(min = 1, max = 1048576))]
        context: u32,
        /// Fraction of the stream (taken from its end, before the test part) used for
        /// validation.
        #[serde(default = "default_fraction")]
        #[schemars(range(min = 0.0, max = 0.5))]
        val_fraction: f64,
        /// Fraction of the stream (taken from its end) used for testing.
        #[serde(default = "default_fraction")]
        #[schemars(range(min = 0.0, max = 0.5))]
        test_fraction: f64,
        /// Most non-overlapping windows (spread evenly over the part) used for the validation
        /// loss and for the test metrics; every position of a window is scored.
        #[serde(default = "default_eval_windows")]
        #[schemars(range(min = 1, max = 1000000))]
        eval_windows: u32,
    },
    /// Multivariate time-series forecasting from a CSV file: from `lookback` steps of every
    /// channel, forecast the next `horizon` steps. Values are standardized per channel with
    /// the training part's mean and standard deviation; the loss is the MSE. Windows are cut
    /// chronologically: training windows lie in the training part, validation and test
    /// windows forecast targets inside their parts. Reported: MSE and MAE on the test part,
    /// beside the last-value and seasonal-naive baselines.
    Forecast(ForecastTask),
    /// Sequence-to-sequence transduction of random words over `symbols` symbols, for
    /// encoder-decoder models: the source is the word (padded to `max_length`), the target
    /// `BOS f(word) EOS` (padded). Ids: 0 PAD, 1 BOS, 2 EOS, then the symbols. Evaluated by
    /// greedy decoding of the test sources (exact match) and by teacher-forced token accuracy.
    Seq2seq {
        /// The transduction f.
        problem: Problem,
        /// Alphabet size.
        #[serde(default = "default_symbols")]
        #[schemars(range(min = 2, max = 1000))]
        symbols: u32,
        /// Shortest word.
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 4096))]
        min_length: u32,
        /// Longest word (the source length).
        #[serde(default = "default_s2s_length")]
        #[schemars(range(min = 1, max = 4096))]
        max_length: u32,
        /// Number of training pairs.
        #[serde(default = "default_s2s_train")]
        #[schemars(range(min = 1, max = 10000000))]
        num_train: u32,
        /// Number of validation pairs.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_val: u32,
        /// Number of test pairs.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_test: u32,
        /// Key-padding mask: the encoder's attention and the decoder's cross-attention ignore
        /// the source's PAD positions (as Hugging Face's `attention_mask` does). `false` lets
        /// them attend to PADs, which tell where a word ends.
        #[serde(default = "default_true")]
        mask_padding: bool,
    },
}

/// Settings of a forecasting task (see [`Task::Forecast`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForecastTask {
    /// The CSV file, relative to the recipe: a header row, one row per time step in order.
    pub path: String,
    /// The columns to forecast (the channels), by their header names.
    #[schemars(length(min = 1))]
    pub columns: Vec<String>,
    /// Time steps the model reads.
    #[schemars(range(min = 1, max = 100000))]
    pub lookback: u32,
    /// Time steps it forecasts.
    #[schemars(range(min = 1, max = 100000))]
    pub horizon: u32,
    /// Period of the seasonal-naive baseline (12 for monthly data with a yearly cycle); at
    /// most `lookback`.
    #[schemars(range(min = 1, max = 100000))]
    pub season: u32,
    /// Fraction of the time steps, before the test part, whose values are validation targets.
    #[serde(default = "default_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub val_fraction: f64,
    /// Fraction of the time steps, at the end, whose values are test targets.
    #[serde(default = "default_test_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub test_fraction: f64,
}

fn default_test_fraction() -> f64 {
    0.2
}

/// What a sequence-to-sequence task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The word unchanged.
    Copy,
    /// The word backwards.
    Reverse,
    /// The word's symbols in ascending order.
    Sort,
}

fn default_symbols() -> u32 {
    8
}
fn default_s2s_length() -> u32 {
    12
}
fn default_s2s_train() -> u32 {
    5000
}

fn default_max_length() -> u32 {
    256
}
fn default_num_eval() -> u32 {
    512
}
fn default_u16_vocab() -> u32 {
    65536
}
fn default_fraction() -> f64 {
    0.1
}
fn default_eval_windows() -> u32 {
    256
}

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

/// How sequences are generated, with the semantics of Hugging Face transformers'
/// `GenerationConfig` (4.46): the same parameter names, defaults and processor order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decode {
    /// The decoding strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Most tokens to generate after the prompt (takes precedence over `max_length`); leave
    /// both out for the task's own length.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_new_tokens: Option<u32>,
    /// Longest sequence, prompt included.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_length: Option<u32>,
    /// EOS cannot be generated while the sequence (prompt included) is shorter than this.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1048576))]
    pub min_length: u32,
    /// EOS cannot be generated before this many new tokens.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1048576))]
    pub min_new_tokens: u32,
    /// Beams of `beam`, `group_beam` and `beam_sample`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_beams: u32,
    /// Groups of diverse beam search (`group_beam`); must divide `num_beams`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_beam_groups: u32,
    /// Hamming diversity penalty of `group_beam`: subtracted from a token's score once per
    /// earlier group that chose it at this step.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1e6))]
    pub diversity_penalty: f64,
    /// Beam scores are sum_logprobs / generated_len^length_penalty: > 0 favours longer, < 0
    /// shorter sequences.
    #[serde(default = "default_length_penalty")]
    #[schemars(range(min = -100.0, max = 100.0))]
    pub length_penalty: f64,
    /// When beam search stops: `false` (heuristic: when no running beam can beat the worst
    /// finished one), `true` (as soon as `num_beams` hypotheses are finished), `never`
    /// (canonical: only when no better hypothesis is possible).
    #[serde(default)]
    pub early_stopping: EarlyStop,
    /// Sequences returned per prompt (at most `num_beams` for beam strategies).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_return_sequences: u32,
    /// Sampling temperature: logits are divided by it (sampling strategies only).
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub temperature: f64,
    /// Keep the k most probable tokens (ties at the threshold kept); 0 turns it off.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 0, max = 1048576))]
    pub top_k: u32,
    /// Nucleus sampling: keep the smallest set of most probable tokens whose mass reaches
    /// top_p; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub top_p: f64,
    /// Keep tokens whose probability is at least min_p times the largest; leave it out to
    /// turn it off.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_p: Option<f64>,
    /// Locally typical sampling mass; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub typical_p: f64,
    /// CTRL repetition penalty on every token already in the sequence (prompt included):
    /// positive scores are divided by it, negative ones multiplied; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub repetition_penalty: f64,
    /// Never repeat an n-gram of this size (prompt included); 0 turns it off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1024))]
    pub no_repeat_ngram_size: u32,
    /// Token sequences that must not be generated (the last token of each is banned after
    /// the others).
    #[serde(default)]
    pub bad_words_ids: Vec<Vec<u32>>,
    /// End-of-sequence token; leave it out for the task's (a grammar's EOS; none for streams).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Padding after a sequence has finished; leave it out for the task's (a grammar's PAD,
    /// else the EOS).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Seed of sampling.
    #[serde(default)]
    pub seed: u64,
    /// Decode incrementally with a KV cache (attention keys/values, recurrent state) when
    /// every layer allows it; the tokens are the same either way.
    #[serde(default = "default_true")]
    pub use_cache: bool,
}

fn default_length_penalty() -> f64 {
    1.0
}
fn default_top_k() -> u32 {
    50
}

impl Default for Decode {
    fn default() -> Self {
        Decode {
            strategy: Strategy::Greedy,
            max_new_tokens: None,
            max_length: None,
            min_length: 0,
            min_new_tokens: 0,
            num_beams: 1,
            num_beam_groups: 1,
            diversity_penalty: 0.0,
            length_penalty: 1.0,
            early_stopping: EarlyStop::default(),
            num_return_sequences: 1,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            bad_words_ids: Vec::new(),
            eos_token_id: None,
            pad_token_id: None,
            seed: 0,
            use_cache: true,
        }
    }
}

/// A decoding strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Always take the most probable next token.
    #[default]
    Greedy,
    /// Sample from the processed distribution (temperature, top-k, top-p, min-p, typical-p).
    Sample,
    /// Beam search with `num_beams` beams.
    Beam,
    /// Diverse beam search: `num_beam_groups` groups with a Hamming diversity penalty.
    GroupBeam,
    /// Beam search whose candidates are sampled instead of taken best-first.
    BeamSample,
}

/// `early_stopping` of beam search: `true`, `false` or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EarlyStop {
    /// `true`: stop once `num_beams` hypotheses are finished; `false`: the heuristic.
    Flag(bool),
    /// `never`: canonical beam search.
    Never(Never),
}

impl Default for EarlyStop {
    fn default() -> Self {
        EarlyStop::Flag(false)
    }
}

/// The word `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Never {
    /// Canonical beam search.
    Never,
}

impl Language {
    /// Vocabulary size: SOS, EOS, PAD and the language's symbols (reference §1.1).
    pub fn vocab(self) -> u64 {
        match self {
            Language::ANbN | Language::BaN | Language::BbaN => 5,
            Language::ANbNcN => 6,
            Language::Dyck | Language::CsDyck => 7,
        }
    }
}

impl Task {
    /// Vocabulary size the model must predict.
    pub fn vocab(&self) -> u64 {
        match self {
            Task::Grammar { language, .. } => language.vocab(),
            Task::Uint16 { vocab, .. } => u64::from(*vocab),
            Task::Seq2seq { symbols, .. } => u64::from(*symbols) + seq2seq_ids::FIRST as u64,
            Task::Forecast(_) => 0,
        }
    }

    /// The padding id that an encoder-decoder's attention should ignore: PAD for a
    /// sequence-to-sequence task with `mask_padding`, else `None`.
    pub fn source_pad(&self) -> Option<i64> {
        match self {
            Task::Seq2seq {
                mask_padding: true, ..
            } => Some(seq2seq_ids::PAD),
            _ => None,
        }
    }

    /// Source length of a sequence-to-sequence task (the encoder's input); `None` for
    /// language-model tasks.
    pub fn source_len(&self) -> Option<u64> {
        match self {
            Task::Seq2seq { max_length, .. } => Some(u64::from(*max_length)),
            _ => None,
        }
    }

    /// Longest sequence the model reads: `SOS w EOS` padded to max_length + 2, minus the last
    /// token (teacher forcing) for grammars; the context window for uint16 streams.
    pub fn max_seq(&self) -> u64 {
        match self {
            Task::Grammar { max_length, .. } => u64::from(*max_length) + 1,
            Task::Uint16 { context, .. } => u64::from(*context),
            Task::Seq2seq { max_length, .. } => u64::from(*max_length) + 1,
            Task::Forecast(f) => u64::from(f.lookback),
        }
    }
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

/// The vocabulary of a sequence-to-sequence task: three special ids, then the symbols (so its
/// vocabulary is `symbols + 3`).
pub mod seq2seq_ids {
    /// Padding id.
    pub const PAD: i64 = 0;
    /// Start of the target.
    pub const BOS: i64 = 1;
    /// End of the target.
    pub const EOS: i64 = 2;
    /// Id of the first symbol.
    pub const FIRST: i64 = 3;
}
