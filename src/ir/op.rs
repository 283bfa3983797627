//! Operations of the IR: their attributes, shape inference, and how they mix positions.

use super::{DType, Dim, TensorType};
use crate::ops::{shapes, InferError, OpDef};
use std::fmt;
use std::hash::{Hash, Hasher};

/// An `f64` attribute with bitwise `Eq`/`Hash` (so ops can be compared and hashed for CSE).
#[derive(Debug, Clone, Copy, PartialOrd)]
pub struct Real(pub f64);

impl PartialEq for Real {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Real {}
impl Hash for Real {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}
impl fmt::Display for Real {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::util::fmt_f64(self.0))
    }
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every entry equal to the value.
    Const(Real),
    /// Normal with mean 0 and this standard deviation.
    Normal(Real),
    /// Uniform on (−bound, bound).
    Uniform(Real),
    /// ln(1 + j) at index j of the last axis (Mamba's `A_log`, so that A = −(1, 2, …, n)).
    LogRange,
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => write!(f, "zeros"),
            Init::Ones => write!(f, "ones"),
            Init::Const(c) => write!(f, "const {c}"),
            Init::Normal(s) => write!(f, "normal {:.4}", s.0),
            Init::Uniform(b) => write!(f, "uniform ±{:.4}", b.0),
            Init::LogRange => write!(f, "ln(1..n)"),
        }
    }
}

/// How attention logits are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttnScale {
    /// q·k / √head_dim.
    InvSqrtDim,
    /// q̂·k̂ · g with a learned scalar g (QK-norm); g is the fourth input.
    Learned,
}

/// Which positions an op lets an output position depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mixing {
    /// Output t depends on input t only (or on no position at all).
    Pointwise,
    /// Output t depends on inputs ≤ t.
    Causal,
    /// Output t may depend on any input position, later ones included.
    Full,
}

/// An elementwise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit (exact, erf form).
    Gelu,
    /// x · sigmoid(x) (swish).
    Silu,
    /// Hyperbolic tangent.
    Tanh,
    /// ln(1 + eˣ).
    Softplus,
}

/// One operation. Inputs are numbered ports; every op has one output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Token ids `i64[batch, seq]`.
    Input,
    /// A learned tensor.
    Param {
        /// Stable name, e.g. `layers.1.3.attention.q.weight`.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its initialisation.
        init: Init,
    },
    /// Token embedding (see [`crate::ops::embedding`]).
    Embedding(crate::ops::embedding::Embedding),
    /// `x · weight (+ bias)` over the last axis (see [`crate::ops::linear`]).
    Linear(crate::ops::linear::Linear),
    /// LayerNorm, RMSNorm and L2 normalization over the last axis (see [`crate::ops::norm`]).
    Norm(crate::ops::norm::Norm),
    /// Sums, products, a constant factor, activations, dropout (see
    /// [`crate::ops::elementwise`]).
    Elementwise(crate::ops::elementwise::Elementwise),
    /// Splitting into attention heads and merging them (see [`crate::ops::heads`]).
    Heads(crate::ops::heads::Heads),
    /// The FFT and its inverse, complex products and features, the fused spectral filter,
    /// the frequency-curriculum mask and the windowed spectral gate (see
    /// [`crate::ops::spectral`]).
    Spectral(crate::ops::spectral::Spectral),
    /// `(tokens) → [seq, dim]`: sinusoidal position table.
    SinusoidalTable {
        /// Width.
        dim: u64,
    },
    /// `(x [b, s, d], table [s or more, d]) → x + table[..s]`.
    AddPositions,
    /// `(tokens) → [seq, d/2, 2]`: cos and sin of RoPE angles.
    RopeTable {
        /// Head width (even).
        head_dim: u64,
        /// Frequency base.
        base: Real,
        /// YaRN scaling: (factor, original length, β_fast, β_slow).
        yarn: Option<(Real, u64, Real, Real)>,
    },
    /// `(x [b, h, s, d], table) → x` rotated (half-split pairs i, i + d/2).
    ApplyRope,
    /// `[b, hkv, s, d] → [b, hkv·g, s, d]`: repeat each KV head g times (head h of the result is
    /// head ⌊h/g⌋ of the input).
    RepeatKv {
        /// Repeats.
        groups: u64,
    },
    /// `(q [b, hq, s, d], k [b, hkv, s, d], v [b, hkv, s, d], g?) → [b, hq, s, d]` with
    /// hq = hkv · kv_groups; query head h reads KV head ⌊h / kv_groups⌋.
    Attention {
        /// Mask later positions.
        causal: bool,
        /// Query heads per KV head (1: ordinary attention).
        kv_groups: u64,
        /// Logit scaling.
        scale: AttnScale,
        /// Dropout on the attention weights.
        dropout: Real,
        /// Hard (argmax) attention, trained straight-through.
        hard: bool,
        /// Entropy-adaptive temperature at inference.
        adaptive: bool,
        /// A last input `[b, t]` is added to every query's logits over the t keys (a
        /// key-padding mask from [`Op::PadBias`]).
        key_mask: bool,
    },
    /// The stacked LSTM (see [`crate::ops::lstm`]).
    Lstm(crate::ops::lstm::Lstm),
    /// The position-wise linear model (see [`crate::ops::position_linear`]).
    PositionLinear(crate::ops::position_linear::PositionLinear),
    /// The Mamba block, a selective state-space model (see [`crate::ops::mamba`]).
    Mamba(crate::ops::mamba::Mamba),
    /// Exponential smoothing attention (see [`crate::ops::ets`]).
    Ets(crate::ops::ets::Ets),
    /// xLSTM's mLSTM and sLSTM layers (see [`crate::ops::xlstm`]).
    Xlstm(crate::ops::xlstm::Xlstm),
    /// A forecasting model's input: `lookback` steps of `channels` values, `[b, L, C]`.
    Series {
        /// Steps L.
        lookback: u64,
        /// Channels C.
        channels: u64,
    },
    /// RevIN normalization and its inverse, channel-independent patching and the flatten
    /// head of a forecaster (see [`crate::ops::forecast`]).
    Forecast(crate::ops::forecast::Forecast),
    /// The wave encoding's ranges and the harmonic selection (see [`crate::ops::wave`]).
    Wave(crate::ops::wave::Wave),
    /// Phase-coherent attention (see [`crate::ops::phase_attention`]).
    PhaseAttention(crate::ops::phase_attention::PhaseAttention),
    /// `[.., d] → [.., len]`: features start..start+len.
    SliceFeatures {
        /// First feature.
        start: u64,
        /// Number of features.
        len: u64,
    },
    /// `(x_1 [.., d_1], …, x_n [.., d_n]) → [.., Σ d_i]`: features side by side.
    ConcatFeatures {
        /// Number of inputs n.
        parts: u64,
    },
    /// Cross-band attention (see [`crate::ops::band_attention`]).
    BandAttention(crate::ops::band_attention::BandAttention),
    /// An encoder-decoder model's source: the first `len` token ids of each row, `[b, len]`
    /// (the decoder's [`Op::Input`] is the rest of the row).
    Source {
        /// Source length.
        len: u64,
    },
    /// Cross-attention `(q [b, H, s, d], k [b, H, S, d], v [b, H, S, d], bias? [b, S]) →
    /// [b, H, s, d]`: softmax(q kᵀ/√d + bias) v over all S source positions.
    CrossAttention {
        /// The fourth input (a key-padding mask from [`Op::PadBias`]) is present.
        key_mask: bool,
    },
    /// Key-padding mask of an encoder-decoder's source `ids [b, S] → [b, S]`: −1e9 where the
    /// id is the padding id, else 0; added to attention logits, it removes padded keys.
    PadBias {
        /// The padding id.
        pad: i64,
    },
    /// Memory tokens `(x [b, s, d], memory [m, d]) → [b, m + s, d]`: the m learned vectors
    /// prepended to every sequence.
    PrependMemory,
    /// `[b, m + s, d] → [b, s, d]`: the outputs of the memory tokens dropped.
    DropMemory {
        /// Number of memory tokens m.
        count: u64,
    },
    /// `[.., s, d] → [.., len, d]`, zero-padding the second-to-last axis (s ≤ len).
    PadSeq {
        /// Padded length.
        len: u64,
    },
    /// `(x [b, len, d], like [b, s, ..]) → [b, s, d]`: the first s positions.
    CropSeq,
    /// An ensemble's output from its members' outputs: the log of their average
    /// probabilities, or the mean of their forecasts (see [`crate::ops::ensemble`]).
    Ensemble(crate::ops::ensemble::Ensemble),
    /// The model's result.
    Output,
}

impl Op {
    /// The op's family, for the ops that have moved to [`crate::ops`].
    pub fn def(&self) -> Option<&dyn OpDef> {
        match self {
            Op::Embedding(o) => Some(o),
            Op::Linear(o) => Some(o),
            Op::Norm(o) => Some(o),
            Op::Elementwise(o) => Some(o),
            Op::Heads(o) => Some(o),
            Op::Forecast(o) => Some(o),
            Op::Ensemble(o) => Some(o),
            Op::Ets(o) => Some(o),
            Op::Xlstm(o) => Some(o),
            Op::Wave(o) => Some(o),
            Op::PhaseAttention(o) => Some(o),
            Op::BandAttention(o) => Some(o),
            Op::Lstm(o) => Some(o),
            Op::PositionLinear(o) => Some(o),
            Op::Spectral(o) => Some(o),
            Op::Mamba(o) => Some(o),
            Op::Input
            | Op::Param { .. }
            | Op::SinusoidalTable { .. }
            | Op::AddPositions
            | Op::RopeTable { .. }
            | Op::ApplyRope
            | Op::RepeatKv { .. }
            | Op::Attention { .. }
            | Op::Series { .. }
            | Op::SliceFeatures { .. }
            | Op::ConcatFeatures { .. }
            | Op::Source { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::PrependMemory
            | Op::DropMemory { .. }
            | Op::PadSeq { .. }
            | Op::CropSeq
            | Op::Output => None,
        }
    }

    /// The positions a sequence through this op can hold (see
    /// [`OpDef::position_limit`]).
    pub fn position_limit(&self, ins: &[&TensorType]) -> Option<usize> {
        let seq_input = || {
            ins.first()
                .and_then(|t| t.shape.iter().rev().nth(1))
                .is_some_and(|d| matches!(d, Dim::Seq | Dim::SeqPlus(_)))
        };
        match self {
            Op::Spectral(o) => o.position_limit(ins),
            Op::Embedding(o) => o.position_limit(ins),
            Op::Linear(o) => o.position_limit(ins),
            Op::Norm(o) => o.position_limit(ins),
            Op::Elementwise(o) => o.position_limit(ins),
            Op::Heads(o) => o.position_limit(ins),
            Op::Forecast(o) => o.position_limit(ins),
            Op::Ensemble(o) => o.position_limit(ins),
            Op::Ets(o) => o.position_limit(ins),
            Op::Xlstm(o) => o.position_limit(ins),
            Op::Wave(o) => o.position_limit(ins),
            Op::PhaseAttention(o) => o.position_limit(ins),
            Op::BandAttention(o) => o.position_limit(ins),
            Op::Lstm(o) => o.position_limit(ins),
            Op::PositionLinear(o) => o.position_limit(ins),
            Op::Mamba(o) => o.position_limit(ins),
            // Padding a kernel parameter does not limit the input.
            Op::PadSeq { len } => seq_input().then_some(*len as usize),
            // A learned table has its rows; a sinusoidal one is computed for any length.
            Op::AddPositions => match ins.get(1).map(|t| t.shape.as_slice()) {
                Some([Dim::Fixed(n), _]) => Some(*n as usize),
                _ => None,
            },
            // No limit: a RoPE table is computed for any length.
            Op::Input
            | Op::Param { .. }
            | Op::SinusoidalTable { .. }
            | Op::RopeTable { .. }
            | Op::ApplyRope
            | Op::RepeatKv { .. }
            | Op::Attention { .. }
            | Op::Series { .. }
            | Op::SliceFeatures { .. }
            | Op::ConcatFeatures { .. }
            | Op::Source { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::PrependMemory
            | Op::DropMemory { .. }
            | Op::CropSeq
            | Op::Output => None,
        }
    }

    /// Short name used in printing.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Param { .. } => "param",
            Op::Embedding(o) => o.name(),
            Op::Linear(o) => o.name(),
            Op::Elementwise(o) => o.name(),
            Op::Norm(o) => o.name(),
            Op::SinusoidalTable { .. } => "sinusoidal_table",
            Op::AddPositions => "add_positions",
            Op::Heads(o) => o.name(),
            Op::Spectral(o) => o.name(),
            Op::RopeTable { .. } => "rope_table",
            Op::ApplyRope => "apply_rope",
            Op::RepeatKv { .. } => "repeat_kv",
            Op::Attention { .. } => "attention",
            Op::Lstm(o) => o.name(),
            Op::Mamba(o) => o.name(),
            Op::Xlstm(o) => o.name(),
            Op::Ets(o) => o.name(),
            Op::PositionLinear(o) => o.name(),
            Op::PadSeq { .. } => "pad_seq",
            Op::CropSeq => "crop_seq",
            Op::PrependMemory => "prepend_memory",
            Op::Source { .. } => "source",
            Op::Series { .. } => "series",
            Op::Forecast(o) => o.name(),
            Op::Wave(o) => o.name(),
            Op::PhaseAttention(o) => o.name(),
            Op::SliceFeatures { .. } => "slice_features",
            Op::ConcatFeatures { .. } => "concat_features",
            Op::BandAttention(o) => o.name(),
            Op::CrossAttention { .. } => "cross_attention",
            Op::PadBias { .. } => "pad_bias",
            Op::DropMemory { .. } => "drop_memory",
            Op::Ensemble(o) => o.name(),
            Op::Output => "output",
        }
    }

    /// Attributes as text, e.g. `heads=4`.
    pub fn attrs(&self) -> String {
        match self {
            Op::Param { name, init, .. } => format!("{name} ({init})"),
            Op::Linear(o) => o.attrs(),
            Op::Elementwise(o) => o.attrs(),
            Op::Embedding(o) => o.attrs(),
            Op::Norm(o) => o.attrs(),
            Op::SinusoidalTable { dim } => format!("dim={dim}"),
            Op::Heads(o) => o.attrs(),
            Op::Spectral(o) => o.attrs(),
            Op::RopeTable {
                head_dim,
                base,
                yarn,
            } => match yarn {
                None => format!("head_dim={head_dim} base={base}"),
                Some((f, l, bf, bs)) => format!(
                    "head_dim={head_dim} base={base} yarn(factor={f} original={l} beta_fast={bf} beta_slow={bs})"
                ),
            },
            Op::RepeatKv { groups } => format!("groups={groups}"),
            Op::Attention {
                causal,
                kv_groups,
                scale,
                dropout,
                hard,
                adaptive,
                key_mask,
            } => format!(
                "causal={causal} kv_groups={kv_groups} scale={} dropout={dropout}{}{}{}",
                match scale {
                    AttnScale::InvSqrtDim => "1/sqrt(d)",
                    AttnScale::Learned => "learned",
                },
                if *hard { " hard" } else { "" },
                if *adaptive {
                    " adaptive_temperature"
                } else {
                    ""
                },
                if *key_mask { " key_mask" } else { "" }
            ),
            Op::CrossAttention { key_mask: true } => "key_mask".into(),
            Op::PadBias { pad } => format!("pad={pad}"),
            Op::Lstm(o) => o.attrs(),
            Op::PadSeq { len } => format!("len={len}"),
            Op::DropMemory { count } => format!("count={count}"),
            Op::Source { len } => format!("len={len}"),
            Op::Series { lookback, channels } => format!("lookback={lookback} channels={channels}"),
            Op::Forecast(o) => o.attrs(),
            Op::Xlstm(o) => o.attrs(),
            Op::Ets(o) => o.attrs(),
            Op::Ensemble(o) => o.attrs(),
            Op::Wave(o) => o.attrs(),
            Op::PhaseAttention(o) => o.attrs(),
            Op::SliceFeatures { start, len } => format!("start={start} len={len}"),
            Op::ConcatFeatures { parts } => format!("parts={parts}"),
            Op::BandAttention(o) => o.attrs(),
            Op::Mamba(o) => o.attrs(),
            Op::PositionLinear(o) => o.attrs(),
            Op::CrossAttention { key_mask: false }
            | Op::Input
            | Op::AddPositions
            | Op::ApplyRope
            | Op::CropSeq
            | Op::PrependMemory
            | Op::Output => String::new(),
        }
    }

    /// `false` for ops whose result is random (two of them on the same input differ), so CSE
    /// must not merge them; parameters are distinct by name anyway.
    pub fn is_pure(&self) -> bool {
        if let Some(d) = self.def() {
            return d.is_pure();
        }
        if let Op::Spectral(o) = self {
            return o.is_pure();
        }
        !matches!(
            self,
            Op::Param { .. } | Op::Input | Op::Source { .. } | Op::Series { .. } | Op::Output
        ) && !matches!(self, Op::Attention { dropout, .. } if dropout.0 > 0.0)
    }

    /// How the op mixes sequence positions.
    pub fn mixing(&self) -> Mixing {
        match self {
            Op::Spectral(o) => o.mixing(),
            Op::Attention { causal: true, .. }
            | Op::PrependMemory
            | Op::DropMemory { .. } => Mixing::Causal,
            Op::Attention { causal: false, .. } => {
                Mixing::Full
            }
            Op::Norm(o) => o.mixing(),
            Op::Elementwise(o) => o.mixing(),
            Op::Embedding(o) => o.mixing(),
            Op::Linear(o) => o.mixing(),
            Op::Heads(o) => o.mixing(),
            Op::Forecast(o) => o.mixing(),
            Op::Ensemble(o) => o.mixing(),
            Op::Xlstm(o) => o.mixing(),
            Op::Ets(o) => o.mixing(),
            Op::Wave(o) => o.mixing(),
            Op::PhaseAttention(o) => o.mixing(),
            Op::BandAttention(o) => o.mixing(),
            Op::Lstm(o) => o.mixing(),
            Op::Mamba(o) => o.mixing(),
            Op::PositionLinear(o) => o.mixing(),
            // Output t reads input t only (or nothing of the sequence: tables, parameters;
            // cross-attention reads the source, not later decoder positions; the ops after an
            // FFT work on frequencies, mixed already by the FFT).
            Op::Input
            | Op::Param { .. }
            | Op::SinusoidalTable { .. }
            | Op::AddPositions
            | Op::RopeTable { .. }
            | Op::ApplyRope
            | Op::RepeatKv { .. }
            | Op::PadSeq { .. }
            | Op::CropSeq
            | Op::Source { .. }
            | Op::Series { .. }
            | Op::SliceFeatures { .. }
            | Op::ConcatFeatures { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::Output => Mixing::Pointwise,
        }
    }

    /// Number of inputs the op takes, given whether optional inputs are present.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input | Op::Param { .. } | Op::Source { .. } | Op::Series { .. } => 0,
            Op::Spectral(o) => o.ports().len(),
            Op::Forecast(o) => o.ports().len(),
            Op::Ensemble(o) => o.ports().len(),
            Op::CrossAttention { key_mask } => 3 + usize::from(*key_mask),
            Op::AddPositions
            | Op::ApplyRope
            | Op::CropSeq
            | Op::PrependMemory
 => 2,
            Op::Linear(o) => o.ports().len(),
            Op::PositionLinear(o) => o.ports().len(),
            Op::Norm(o) => o.ports().len(),
            Op::Elementwise(o) => o.ports().len(),
            Op::Embedding(o) => o.ports().len(),
            Op::Heads(o) => o.ports().len(),
            Op::Attention {
                scale, key_mask, ..
            } => 3 + usize::from(*scale == AttnScale::Learned) + usize::from(*key_mask),
            Op::Lstm(o) => o.ports().len(),
            Op::Mamba(o) => o.ports().len(),
            Op::Xlstm(o) => o.ports().len(),
            Op::Ets(o) => o.ports().len(),
            Op::Wave(o) => o.ports().len(),
            Op::PhaseAttention(o) => o.ports().len(),
            Op::BandAttention(o) => o.ports().len(),
            Op::ConcatFeatures { parts } => *parts as usize,
            Op::SinusoidalTable { .. }
            | Op::RopeTable { .. }
            | Op::RepeatKv { .. }
            | Op::PadSeq { .. }
            | Op::SliceFeatures { .. }
            | Op::PadBias { .. }
            | Op::DropMemory { .. }
            | Op::Output => 1,
        }
    }

    /// Infer the output type from the input types, or explain why they do not fit.
    pub fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        if ins.len() != self.arity() {
            return Err(shapes(format!(
                "{} takes {} inputs, got {}",
                self.name(),
                self.arity(),
                ins.len()
            )));
        }
        if let Some(d) = self.def() {
            return d.infer(ins);
        }
        // The ops not yet moved to their family modules (issue 20).
        self.infer_legacy(ins).map_err(|e| {
            if e == InferError::TokenIds.to_string() {
                InferError::TokenIds
            } else {
                InferError::Shapes(e)
            }
        })
    }

    fn infer_legacy(&self, ins: &[TensorType]) -> Result<TensorType, String> {
        let f32 = |shape: Vec<Dim>| {
            Ok(TensorType {
                dtype: DType::F32,
                shape,
            })
        };
        let float = |i: usize| crate::ops::float_input(&ins[i]).map_err(|e| e.to_string());
        match self {
            Op::Input => Ok(TensorType {
                dtype: DType::I64,
                shape: vec![Dim::Batch, Dim::Seq],
            }),
            Op::Param { shape, .. } => f32(shape.iter().map(|&d| Dim::Fixed(d)).collect()),
            Op::Embedding(_)
            | Op::Linear(_)
            | Op::Norm(_)
            | Op::Elementwise(_)
            | Op::Heads(_)
            | Op::Forecast(_)
            | Op::Ensemble(_)
            | Op::Xlstm(_)
            | Op::Ets(_)
            | Op::Wave(_)
            | Op::PhaseAttention(_)
            | Op::BandAttention(_)
            | Op::Lstm(_)
            | Op::Mamba(_)
            | Op::PositionLinear(_)
            | Op::Spectral(_) => unreachable!("families infer through `def`"),
            // Tables have the positions of their input ([batch, seq] ids or [batch, seq, d]).
            Op::SinusoidalTable { dim } => f32(vec![ins[0].shape[1], Dim::Fixed(*dim)]),
            Op::AddPositions => {
                let x = float(0)?;
                if x.shape.len() != 3 || ins[1].shape.len() != 2 || ins[1].shape[1] != x.shape[2] {
                    return Err(format!(
                        "position table {} does not fit input {}",
                        ins[1], x
                    ));
                }
                f32(x.shape.clone())
            }
            Op::RopeTable { head_dim, .. } => {
                if head_dim % 2 != 0 {
                    return Err(format!(
                        "rotary embeddings need an even head width, got {head_dim}"
                    ));
                }
                f32(vec![
                    ins[0].shape[1],
                    Dim::Fixed(head_dim / 2),
                    Dim::Fixed(2),
                ])
            }
            Op::ApplyRope => {
                let x = float(0)?;
                match (x.shape.as_slice(), ins[1].shape.as_slice()) {
                    ([_, _, _, Dim::Fixed(d)], [_, Dim::Fixed(h), _]) if *d == 2 * h => {
                        f32(x.shape.clone())
                    }
                    _ => Err(format!("rope table {} does not fit {}", ins[1], x)),
                }
            }
            Op::RepeatKv { groups } => match float(0)?.shape.as_slice() {
                [b, Dim::Fixed(h), s, d] => f32(vec![*b, Dim::Fixed(h * groups), *s, *d]),
                _ => Err(format!(
                    "expects [batch, heads, seq, head_dim], got {}",
                    ins[0]
                )),
            },
            Op::Attention {
                kv_groups,
                key_mask,
                ..
            } => {
                let (q, k, v) = (float(0)?, float(1)?, float(2)?);
                if *key_mask {
                    key_bias_fits(float(ins.len() - 1)?, k)?;
                }
                match (q.shape.as_slice(), k.shape.as_slice()) {
                    ([b, Dim::Fixed(hq), s, d], [_, Dim::Fixed(hk), _, dk]) => {
                        if hq != &(hk * kv_groups) {
                            return Err(format!("{hq} query heads cannot share {hk} key/value heads in groups of {kv_groups}"));
                        }
                        if d != dk || k.shape != v.shape {
                            return Err(format!("query {q}, key {k} and value {v} do not fit"));
                        }
                        f32(vec![*b, Dim::Fixed(*hq), *s, *d])
                    }
                    _ => Err(format!(
                        "expects [batch, heads, seq, head_dim] inputs, got {q} and {k}"
                    )),
                }
            }
            Op::PadSeq { len } => {
                let x = float(0)?;
                let r = x.shape.len();
                if r < 2 {
                    return Err(format!("expects [.., seq, width], got {x}"));
                }
                if let Dim::Fixed(s) = x.shape[r - 2] {
                    if s > *len {
                        return Err(format!("cannot pad a sequence of {s} positions to {len}"));
                    }
                }
                let mut s = x.shape.clone();
                s[r - 2] = Dim::Fixed(*len);
                f32(s)
            }
            Op::CropSeq => match (float(0)?.shape.as_slice(), ins[1].shape.as_slice()) {
                ([b, _, d], [_, s, ..]) => f32(vec![*b, *s, *d]),
                _ => Err("crop expects [batch, len, width]".into()),
            },
            Op::Series { lookback, channels } => f32(vec![
                Dim::Batch,
                Dim::Fixed(*lookback),
                Dim::Fixed(*channels),
            ]),
            Op::SliceFeatures { start, len } => {
                let x = float(0)?;
                match x.shape.split_last() {
                    Some((Dim::Fixed(d), lead))
                        if lead.len() == 2 && start + len <= *d && *len > 0 =>
                    {
                        let mut shape = lead.to_vec();
                        shape.push(Dim::Fixed(*len));
                        f32(shape)
                    }
                    _ => Err(format!(
                        "cannot take features {start}..{} of {x}",
                        start + len
                    )),
                }
            }
            Op::ConcatFeatures { .. } => {
                if ins.is_empty() || ins[0].shape.len() != 3 {
                    return Err("expects one or more [batch, seq, width] inputs".into());
                }
                let mut total = 0;
                let mut lead: Option<Vec<Dim>> = None;
                for i in 0..ins.len() {
                    let x = float(i)?;
                    let Some((Dim::Fixed(d), l)) = x.shape.split_last() else {
                        return Err(format!("expects a fixed feature width, got {x}"));
                    };
                    if lead.as_ref().is_some_and(|p| p.as_slice() != l) {
                        return Err(format!("inputs of different shapes: {} and {x}", ins[0]));
                    }
                    lead = Some(l.to_vec());
                    total += d;
                }
                let mut shape = lead.unwrap_or_default();
                shape.push(Dim::Fixed(total));
                f32(shape)
            }
            Op::Source { len } => Ok(TensorType {
                dtype: DType::I64,
                shape: vec![Dim::Batch, Dim::Fixed(*len)],
            }),
            Op::PadBias { .. } => match ins[0].shape.as_slice() {
                [b, s] if ins[0].dtype == DType::I64 => f32(vec![*b, *s]),
                _ => Err(format!("expects source ids [batch, len], got {}", ins[0])),
            },
            Op::CrossAttention { key_mask } => {
                let q = float(0)?;
                if *key_mask {
                    key_bias_fits(float(3)?, &ins[1])?;
                }
                match (q.shape.as_slice(), ins[1].shape.as_slice()) {
                    ([b, h, _, d], [b2, h2, _, d2])
                        if b == b2 && h == h2 && d == d2 && ins[1] == ins[2] =>
                    {
                        f32(q.shape.clone())
                    }
                    _ => Err(format!(
                        "keys {} and values {} do not fit queries {q}",
                        ins[1], ins[2]
                    )),
                }
            }
            Op::PrependMemory => {
                let x = float(0)?;
                match (x.shape.as_slice(), ins[1].shape.as_slice()) {
                    ([b, s, d], [Dim::Fixed(m), w]) if w == d => {
                        let s = match s {
                            Dim::Seq => Dim::SeqPlus(*m),
                            Dim::SeqPlus(k) => Dim::SeqPlus(k + m),
                            Dim::Fixed(n) => Dim::Fixed(n + m),
                            Dim::Batch | Dim::BatchTimes(_) => {
                                return Err(format!("expects [batch, seq, width], got {x}"))
                            }
                        };
                        f32(vec![*b, s, *d])
                    }
                    _ => Err(format!("memory {} does not fit input {x}", ins[1])),
                }
            }
            Op::DropMemory { count } => {
                let x = float(0)?;
                let s = match x.shape.as_slice() {
                    [_, Dim::SeqPlus(k), _] if k == count => Dim::Seq,
                    [_, Dim::SeqPlus(k), _] if k > count => Dim::SeqPlus(k - count),
                    [_, Dim::Fixed(n), _] if n >= count => Dim::Fixed(n - count),
                    _ => return Err(format!("cannot drop {count} memory tokens from {x}")),
                };
                f32(vec![x.shape[0], s, x.shape[2]])
            }
            Op::Output => Ok(ins[0].clone()),
        }
    }
}

/// Rotary frequencies θ_i (i < head_dim/2) and the factor cos and sin are scaled by: plain RoPE
/// θ_i = base^(−2i/d), or YaRN as Hugging Face computes it (`_compute_yarn_parameters`).
pub fn rope_frequencies(
    head_dim: u64,
    base: f64,
    yarn: Option<(Real, u64, Real, Real)>,
) -> (Vec<f64>, f64) {
    let d = head_dim as f64;
    let half = (head_dim / 2) as usize;
    let plain: Vec<f64> = (0..half).map(|i| base.powf(-2.0 * i as f64 / d)).collect();
    let Some((factor, original, beta_fast, beta_slow)) = yarn else {
        return (plain, 1.0);
    };
    let (s, l) = (factor.0, original as f64);
    let correction = |rotations: f64| {
        d * (l / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let low = correction(beta_fast.0).floor().max(0.0);
    let high = correction(beta_slow.0).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let freqs = plain
        .iter()
        .enumerate()
        .map(|(i, &theta)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            theta / s * (1.0 - keep) + theta * keep
        })
        .collect();
    let attention = if s <= 1.0 { 1.0 } else { 0.1 * s.ln() + 1.0 };
    (freqs, attention)
}

/// A key-padding bias `[b, t]` fits keys `[b, h, t, d]`.
fn key_bias_fits(bias: &TensorType, k: &TensorType) -> Result<(), String> {
    match (bias.shape.as_slice(), k.shape.as_slice()) {
        ([b, t], [b2, _, t2, _]) if b == b2 && t == t2 => Ok(()),
        _ => Err(format!("key mask {bias} does not fit keys {k}")),
    }
}
