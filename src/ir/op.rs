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

/// Which algorithm a fused spectral filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpectralAlgo {
    /// rfft → multiply → irfft, O(n log n).
    Fft,
    /// The equivalent (circular or causal) convolution as a dense matrix product, O(n²), faster
    /// for short sequences.
    Dense,
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
    /// Position tables (sinusoidal, RoPE) and their use (see [`crate::ops::positions`]).
    Positions(crate::ops::positions::Positions),
    /// Padding and cropping positions, slicing and concatenating features (see
    /// [`crate::ops::sequence`]).
    Sequence(crate::ops::sequence::Sequence),
    /// Memory tokens prepended to the sequence and dropped after the body (see
    /// [`crate::ops::memory`]).
    Memory(crate::ops::memory::Memory),
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
    /// `(x [b, s, i], then per layer w_ih [i, 4h], w_hh [h, 4h], b_ih [4h], b_hh [4h]) → [b, s, h]`.
    Lstm {
        /// Stacked layers.
        layers: u64,
        /// Hidden width.
        hidden: u64,
        /// Dropout between layers.
        dropout: Real,
    },
    /// `(x [b, s, i], w [L, i, L, o], bias [L, o]?) → [b, s, o]`:
    /// y[t] = Σ_{s'≤t} x[s'] · w[s', :, t, :] + bias[t] (position-wise linear model).
    PositionLinear {
        /// Longest sequence L.
        max_len: u64,
        /// Whether the third input (bias) is present.
        bias: bool,
    },
    /// Mamba block (selective SSM): `(x [b, s, d], in_proj [d, 2e], conv_w [e, k], conv_b [e],
    /// x_proj [e, r + 2n], dt_w [r, e], dt_b [e], a_log [e, n], d_skip [e], out_proj [e, d])
    /// → [b, s, d]`, with e = expand · d inner channels, n states, r the rank of Δ and k the
    /// width of the causal depthwise convolution.
    Mamba {
        /// State size n.
        d_state: u64,
        /// Convolution width k.
        d_conv: u64,
        /// Rank r of Δ's projection.
        dt_rank: u64,
    },
    /// Exponential smoothing attention `(x [b, s, d], v.weight [d, d], v.bias [d], alpha [H]
    /// (logits), v0 [d], out.weight [d, d]) → [b, s, d]` (see the `ets_attention` layer).
    Ets {
        /// Heads H.
        heads: u64,
    },
    /// xLSTM mLSTM layer `(x [b, s, d], qkvo.weight [d, 4d], qkvo.bias [4d], igate.weight
    /// [d, H], igate.bias [H], fgate.weight [d, H], fgate.bias [H], out.weight [d, d]) →
    /// [b, s, d]` (see the `mlstm` layer).
    Mlstm {
        /// Heads H.
        heads: u64,
    },
    /// xLSTM sLSTM layer `(x [b, s, d], weight [d, 4d], recurrent [H, d/H, 4d/H], bias [4d])
    /// → [b, s, d]`, gates in the order z, i, f, o (see the `slstm` layer).
    Slstm {
        /// Heads H.
        heads: u64,
    },
    /// A forecasting model's input: `lookback` steps of `channels` values, `[b, L, C]`.
    Series {
        /// Steps L.
        lookback: u64,
        /// Channels C.
        channels: u64,
    },
    /// RevIN normalization `(x [b, L, C], gamma [C], beta [C]) → [b, L, C]`: each series
    /// (per example and channel) minus its mean over L, divided by its standard deviation
    /// (√(var + 1e-5)), then · gamma + beta.
    RevinNorm,
    /// RevIN's inverse `(y [b, H, C], x [b, L, C], gamma [C], beta [C]) → [b, H, C]`:
    /// (y − beta) / gamma · std + mean, with x's statistics.
    RevinDenorm,
    /// Channel-independent patching `[b, L, C] → [b·C, N, len]`: each channel's series,
    /// padded with `stride` copies of its last value, cut into N = ⌊(L − len)/stride⌋ + 2
    /// patches of `len` steps, `stride` apart.
    Patch {
        /// Patch length P.
        len: u64,
        /// Stride S.
        stride: u64,
    },
    /// Complex values to features `[.., f, d, 2] → [.., f, 2d]`: real parts, then imaginary.
    ComplexFeatures,
    /// Windowed spectral gate `(x [b, s, d], mix [3], gate [w/2+1, d, 2]) → [b, s, d]` (see
    /// the `windowed_spectral_gate` layer): frames of `window` steps `hop` apart, windowed by
    /// softmax(mix)·(Hann, Hamming, rectangular), rfft, gated, irfft, windowed again,
    /// overlap-added and divided by Σ window².
    WindowedGate {
        /// Frame length w.
        window: u64,
        /// Hop between frame starts.
        hop: u64,
    },
    /// Wave encoding's ranges `[.., 3H] → [.., 3H]`: per harmonic h, feature 3h is a frequency
    /// softplus(·), 3h+1 an amplitude softplus(·), 3h+2 a phase π·tanh(·).
    Wave {
        /// Harmonics H.
        harmonics: u64,
    },
    /// Harmonic selection `(x [b, s, H·g], scores [b, s, H]) → [b, s, H·g]`: each position
    /// keeps the g features of its k best-scoring harmonics and zeroes the rest. In training
    /// the scores get Gumbel noise and the hard top-k mask passes the gradient of the relaxed
    /// top-k (straight-through).
    HarmonicSelect {
        /// Harmonics kept per position.
        k: u64,
        /// Temperature τ of the relaxed top-k.
        temperature: Real,
    },
    /// Phase-coherent attention `(q [b, h, s, e], k, v, phase [b, h, s, P], amp?, blend [2])
    /// → [b, h, s, e]`: softmax over keys of blend₀·q·k/√e + blend₁·C, with C the phase
    /// coherence of the two positions (see the `phase_attention` layer); `amp` only in the
    /// complex mode.
    PhaseAttention {
        /// Mask later positions.
        causal: bool,
        /// Complex (amplitude-weighted) coherence instead of the cosine one.
        complex: bool,
    },
    /// Cross-band attention `(q_1..q_n, k_1..k_n, v_1..v_n, each [b, s, c]) → [b, s, n·c]`:
    /// at every position, band i attends over the n bands: Σ_j softmax_j(q_i·k_j/√c) v_j.
    BandAttention {
        /// Bands n.
        bands: u64,
    },
    /// Flatten head `(x [b·C, N, D], weight [N·D, H], bias [H]) → [b, H, C]`.
    ForecastHead {
        /// Channels C.
        channels: u64,
    },
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
    /// Real FFT along the second-to-last axis (length n): `[.., n, d] → [.., n/2+1, d, 2]`
    /// (real and imaginary parts last).
    Rfft {
        /// Transform length.
        n: u64,
    },
    /// Inverse of [`Op::Rfft`] (with the 1/n factor): `[.., n/2+1, d, 2] → [.., n, d]`.
    Irfft {
        /// Output length.
        n: u64,
    },
    /// Complex product `([b, f, d, 2], [f, d, 2]) → [b, f, d, 2]`.
    ComplexMul,
    /// Fused spectral filter `(x [b, s, d], p) → [b, s, d]`. Circular form: p is the complex
    /// gate `[n/2+1, d, 2]` and y = irfft(rfft(pad(x, n)) · p)[..s]. Causal form: p is a kernel
    /// `[n/2, d]` and y = (p * x) a causal linear convolution, computed with padding to n.
    SpectralFilter {
        /// Transform length.
        n: u64,
        /// Causal (kernel) form.
        causal: bool,
        /// Algorithm.
        algo: SpectralAlgo,
    },
    /// Frequency-curriculum mask of a spectral gate's parameter (identity outside a frequency
    /// curriculum; see [`FreqCutoff`]). `dct: false`: a complex gate `[f, d, 2]`, each rfft
    /// bin scaled by its weight. `dct: true`: a causal kernel `[l, d]`, low-passed in the
    /// orthonormal DCT-II basis over its l taps.
    FreqMask {
        /// The parameter is a time-domain kernel (DCT basis).
        dct: bool,
    },
    /// Ensemble output `(logits_1, …, logits_n [b, s, v]) → [b, s, v]`:
    /// ln(mean_i softmax(logits_i)), the log of the members' average probabilities.
    MeanProbs {
        /// Number of members.
        members: u64,
    },
    /// Forecasting ensemble output `(y_1, …, y_n [b, H, C]) → [b, H, C]`: the mean of the
    /// members' point forecasts.
    MeanForecasts {
        /// Number of members.
        members: u64,
    },
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
            Op::Positions(o) => Some(o),
            Op::Sequence(o) => Some(o),
            Op::Memory(o) => Some(o),
            Op::Input
            | Op::Param { .. }
            | Op::RepeatKv { .. }
            | Op::Attention { .. }
            | Op::Lstm { .. }
            | Op::PositionLinear { .. }
            | Op::Mamba { .. }
            | Op::Ets { .. }
            | Op::Mlstm { .. }
            | Op::Slstm { .. }
            | Op::Series { .. }
            | Op::RevinNorm
            | Op::RevinDenorm
            | Op::Patch { .. }
            | Op::ComplexFeatures
            | Op::WindowedGate { .. }
            | Op::Wave { .. }
            | Op::HarmonicSelect { .. }
            | Op::PhaseAttention { .. }
            | Op::BandAttention { .. }
            | Op::ForecastHead { .. }
            | Op::Source { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::Rfft { .. }
            | Op::Irfft { .. }
            | Op::ComplexMul
            | Op::SpectralFilter { .. }
            | Op::FreqMask { .. }
            | Op::MeanProbs { .. }
            | Op::MeanForecasts { .. }
            | Op::Output => None,
        }
    }

    /// The positions a sequence through this op can hold (see
    /// [`OpDef::position_limit`]).
    pub fn position_limit(&self, ins: &[&TensorType]) -> Option<usize> {
        match self {
            Op::Embedding(o) => o.position_limit(ins),
            Op::Linear(o) => o.position_limit(ins),
            Op::Norm(o) => o.position_limit(ins),
            Op::Elementwise(o) => o.position_limit(ins),
            Op::Heads(o) => o.position_limit(ins),
            Op::Positions(o) => o.position_limit(ins),
            Op::Sequence(o) => o.position_limit(ins),
            Op::Memory(o) => o.position_limit(ins),
            Op::PositionLinear { max_len, .. } => Some(*max_len as usize),
            Op::SpectralFilter { n, causal, .. } => Some(if *causal {
                *n as usize / 2
            } else {
                *n as usize
            }),
            Op::Input
            | Op::Param { .. }
            | Op::RepeatKv { .. }
            | Op::Attention { .. }
            | Op::Lstm { .. }
            | Op::Mamba { .. }
            | Op::Ets { .. }
            | Op::Mlstm { .. }
            | Op::Slstm { .. }
            | Op::Series { .. }
            | Op::RevinNorm
            | Op::RevinDenorm
            | Op::Patch { .. }
            | Op::ComplexFeatures
            | Op::WindowedGate { .. }
            | Op::Wave { .. }
            | Op::HarmonicSelect { .. }
            | Op::PhaseAttention { .. }
            | Op::BandAttention { .. }
            | Op::ForecastHead { .. }
            | Op::Source { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::Rfft { .. }
            | Op::Irfft { .. }
            | Op::ComplexMul
            | Op::FreqMask { .. }
            | Op::MeanProbs { .. }
            | Op::MeanForecasts { .. }
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
            Op::Positions(o) => o.name(),
            Op::Sequence(o) => o.name(),
            Op::Memory(o) => o.name(),
            Op::Heads(o) => o.name(),
            Op::RepeatKv { .. } => "repeat_kv",
            Op::Attention { .. } => "attention",
            Op::Lstm { .. } => "lstm",
            Op::Mamba { .. } => "mamba",
            Op::Mlstm { .. } => "mlstm",
            Op::Ets { .. } => "ets",
            Op::Slstm { .. } => "slstm",
            Op::PositionLinear { .. } => "position_linear",
            Op::Rfft { .. } => "rfft",
            Op::Irfft { .. } => "irfft",
            Op::ComplexMul => "complex_mul",
            Op::SpectralFilter { .. } => "spectral_filter",
            Op::FreqMask { .. } => "freq_mask",
            Op::Source { .. } => "source",
            Op::Series { .. } => "series",
            Op::RevinNorm => "revin_norm",
            Op::RevinDenorm => "revin_denorm",
            Op::Patch { .. } => "patch",
            Op::ForecastHead { .. } => "forecast_head",
            Op::ComplexFeatures => "complex_features",
            Op::WindowedGate { .. } => "windowed_gate",
            Op::Wave { .. } => "wave",
            Op::HarmonicSelect { .. } => "harmonic_select",
            Op::PhaseAttention { .. } => "phase_attention",
            Op::BandAttention { .. } => "band_attention",
            Op::CrossAttention { .. } => "cross_attention",
            Op::PadBias { .. } => "pad_bias",
            Op::MeanProbs { .. } => "mean_probs",
            Op::MeanForecasts { .. } => "mean_forecasts",
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
            Op::Heads(o) => o.attrs(),
            Op::Positions(o) => o.attrs(),
            Op::Sequence(o) => o.attrs(),
            Op::Memory(o) => o.attrs(),
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
            Op::Lstm {
                layers,
                hidden,
                dropout,
            } => format!("layers={layers} hidden={hidden} dropout={dropout}"),
            Op::Source { len } => format!("len={len}"),
            Op::Series { lookback, channels } => format!("lookback={lookback} channels={channels}"),
            Op::Patch { len, stride } => format!("len={len} stride={stride}"),
            Op::ForecastHead { channels } => format!("channels={channels}"),
            Op::Mlstm { heads } | Op::Slstm { heads } | Op::Ets { heads } => {
                format!("heads={heads}")
            }
            Op::FreqMask { dct } => format!("basis={}", if *dct { "dct" } else { "rfft" }),
            Op::MeanProbs { members } | Op::MeanForecasts { members } => {
                format!("members={members}")
            }
            Op::WindowedGate { window, hop } => format!("window={window} hop={hop}"),
            Op::Wave { harmonics } => format!("harmonics={harmonics}"),
            Op::HarmonicSelect { k, temperature } => format!("k={k} temperature={}", temperature.0),
            Op::PhaseAttention { causal, complex } => format!(
                "causal={causal} mode={}",
                if *complex { "complex" } else { "cosine" }
            ),
            Op::BandAttention { bands } => format!("bands={bands}"),
            Op::Mamba {
                d_state,
                d_conv,
                dt_rank,
            } => format!("d_state={d_state} d_conv={d_conv} dt_rank={dt_rank}"),
            Op::PositionLinear { max_len, bias } => format!("max_len={max_len} bias={bias}"),
            Op::Rfft { n } | Op::Irfft { n } => format!("n={n}"),
            Op::SpectralFilter { n, causal, algo } => format!(
                "n={n} causal={causal} algo={}",
                match algo {
                    SpectralAlgo::Fft => "fft",
                    SpectralAlgo::Dense => "dense",
                }
            ),
            Op::CrossAttention { key_mask: false }
            | Op::Input
            | Op::ComplexMul
            | Op::RevinNorm
            | Op::RevinDenorm
            | Op::ComplexFeatures
            | Op::Output => String::new(),
        }
    }

    /// `false` for ops whose result is random (two of them on the same input differ), so CSE
    /// must not merge them; parameters are distinct by name anyway.
    pub fn is_pure(&self) -> bool {
        if let Op::Elementwise(o) = self {
            return o.is_pure();
        }
        !matches!(
            self,
            Op::Param { .. }
                | Op::Input
                | Op::Source { .. }
                | Op::Series { .. }
                | Op::Output
                | Op::HarmonicSelect { .. }
        ) && !matches!(self, Op::Attention { dropout, .. } if dropout.0 > 0.0)
            && !matches!(self, Op::Lstm { dropout, .. } if dropout.0 > 0.0)
    }

    /// How the op mixes sequence positions.
    pub fn mixing(&self) -> Mixing {
        match self {
            Op::Attention { causal: true, .. }
            | Op::Lstm { .. }
            | Op::Mamba { .. }
            | Op::Mlstm { .. }
            | Op::Slstm { .. }
            | Op::Ets { .. }
            | Op::PositionLinear { .. } => Mixing::Causal,
            Op::PhaseAttention { causal: true, .. } => Mixing::Causal,
            Op::PhaseAttention { causal: false, .. } | Op::WindowedGate { .. } => Mixing::Full,
            Op::Attention { causal: false, .. }
            | Op::Rfft { .. }
            | Op::Irfft { .. }
            | Op::RevinNorm
            | Op::RevinDenorm
            | Op::Patch { .. }
            | Op::ForecastHead { .. } => Mixing::Full,
            Op::SpectralFilter { causal, .. } => {
                if *causal {
                    Mixing::Causal
                } else {
                    Mixing::Full
                }
            }
            Op::Norm(o) => o.mixing(),
            Op::Elementwise(o) => o.mixing(),
            Op::Embedding(o) => o.mixing(),
            Op::Linear(o) => o.mixing(),
            Op::Heads(o) => o.mixing(),
            Op::Positions(o) => o.mixing(),
            Op::Sequence(o) => o.mixing(),
            Op::Memory(o) => o.mixing(),
            // Output t reads input t only (or nothing of the sequence: tables, parameters;
            // cross-attention reads the source, not later decoder positions; the ops after an
            // FFT work on frequencies, mixed already by the FFT).
            Op::Input
            | Op::Param { .. }
            | Op::RepeatKv { .. }
            | Op::ComplexMul
            | Op::FreqMask { .. }
            | Op::Source { .. }
            | Op::Series { .. }
            | Op::ComplexFeatures
            | Op::Wave { .. }
            | Op::HarmonicSelect { .. }
            | Op::BandAttention { .. }
            | Op::CrossAttention { .. }
            | Op::PadBias { .. }
            | Op::MeanProbs { .. }
            | Op::MeanForecasts { .. }
            | Op::Output => Mixing::Pointwise,
        }
    }

    /// Number of inputs the op takes, given whether optional inputs are present.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input | Op::Param { .. } | Op::Source { .. } | Op::Series { .. } => 0,
            Op::RevinNorm | Op::ForecastHead { .. } => 3,
            Op::RevinDenorm => 4,
            Op::CrossAttention { key_mask } => 3 + usize::from(*key_mask),
            Op::ComplexMul | Op::SpectralFilter { .. } => 2,
            Op::Linear(o) => o.ports().len(),
            Op::PositionLinear { bias, .. } => 2 + usize::from(*bias),
            Op::Norm(o) => o.ports().len(),
            Op::Elementwise(o) => o.ports().len(),
            Op::Embedding(o) => o.ports().len(),
            Op::Heads(o) => o.ports().len(),
            Op::Positions(o) => o.ports().len(),
            Op::Sequence(o) => o.ports().len(),
            Op::Memory(o) => o.ports().len(),
            Op::Attention {
                scale, key_mask, ..
            } => 3 + usize::from(*scale == AttnScale::Learned) + usize::from(*key_mask),
            Op::Lstm { layers, .. } => 1 + 4 * *layers as usize,
            Op::Mamba { .. } => 10,
            Op::Mlstm { .. } => 8,
            Op::Ets { .. } => 6,
            Op::Slstm { .. } => 4,
            Op::MeanProbs { members } | Op::MeanForecasts { members } => *members as usize,
            Op::WindowedGate { .. } => 3,
            Op::HarmonicSelect { .. } => 2,
            Op::PhaseAttention { complex, .. } => 5 + usize::from(*complex),
            Op::BandAttention { bands } => 3 * *bands as usize,
            Op::RepeatKv { .. }
            | Op::Rfft { .. }
            | Op::Irfft { .. }
            | Op::FreqMask { .. }
            | Op::Patch { .. }
            | Op::ComplexFeatures
            | Op::Wave { .. }
            | Op::PadBias { .. }
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
        let last = |t: &TensorType| t.shape.last().copied();
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
            | Op::Positions(_)
            | Op::Sequence(_)
            | Op::Memory(_) => {
                unreachable!("families infer through `def`")
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
            Op::Lstm { hidden, .. } => {
                let x = float(0)?;
                match x.shape.as_slice() {
                    [b, s, _] => f32(vec![*b, *s, Dim::Fixed(*hidden)]),
                    _ => Err(format!("expects [batch, seq, width], got {x}")),
                }
            }
            Op::Mlstm { heads } | Op::Slstm { heads } | Op::Ets { heads } => {
                let x = float(0)?;
                let d = match x.shape.as_slice() {
                    [_, _, Dim::Fixed(d)] if d % heads == 0 => *d,
                    _ => {
                        return Err(format!(
                            "expects [batch, seq, width] with the width divisible by {heads} heads, got {x}"
                        ))
                    }
                };
                let (h, dh) = (*heads, d / heads);
                let fx = |v: &[u64]| v.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
                let want: Vec<Vec<Dim>> = if let Op::Ets { .. } = self {
                    [&[d, d][..], &[d], &[h], &[d], &[d, d]]
                        .iter()
                        .map(|v| fx(v))
                        .collect()
                } else if matches!(self, Op::Mlstm { .. }) {
                    [
                        &[d, 4 * d][..],
                        &[4 * d],
                        &[d, h],
                        &[h],
                        &[d, h],
                        &[h],
                        &[d, d],
                    ]
                    .iter()
                    .map(|v| fx(v))
                    .collect()
                } else {
                    vec![fx(&[d, 4 * d]), fx(&[h, dh, 4 * dh]), fx(&[4 * d])]
                };
                for (k, w) in want.iter().enumerate() {
                    if &ins[1 + k].shape != w {
                        return Err(format!(
                            "{} parameter {} has shape {}, expected {:?}",
                            self.name(),
                            k + 1,
                            ins[1 + k],
                            w
                        ));
                    }
                }
                f32(x.shape.clone())
            }
            Op::Mamba {
                d_state,
                d_conv,
                dt_rank,
            } => {
                let x = float(0)?;
                let d = match x.shape.as_slice() {
                    [_, _, Dim::Fixed(d)] => *d,
                    _ => return Err(format!("expects [batch, seq, width], got {x}")),
                };
                let e = match ins[1].shape.as_slice() {
                    [Dim::Fixed(i), Dim::Fixed(o)] if *i == d && o % 2 == 0 => o / 2,
                    _ => return Err(format!("mamba in_proj {} does not fit input {x}", ins[1])),
                };
                let fx = |v: &[u64]| v.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
                let want = [
                    fx(&[e, *d_conv]),
                    fx(&[e]),
                    fx(&[e, dt_rank + 2 * d_state]),
                    fx(&[*dt_rank, e]),
                    fx(&[e]),
                    fx(&[e, *d_state]),
                    fx(&[e]),
                    fx(&[e, d]),
                ];
                for (k, w) in want.iter().enumerate() {
                    if &ins[2 + k].shape != w {
                        return Err(format!(
                            "mamba parameter {} has shape {}, expected {:?}",
                            k + 2,
                            ins[2 + k],
                            w
                        ));
                    }
                }
                f32(x.shape.clone())
            }
            Op::PositionLinear { max_len, bias } => {
                let x = float(0)?;
                let (l, i, o) = match ins[1].shape.as_slice() {
                    [Dim::Fixed(l), i, Dim::Fixed(l2), Dim::Fixed(o)] if l == l2 => (*l, *i, *o),
                    _ => {
                        return Err(format!(
                            "position-linear weight {} is not [L, in, L, out]",
                            ins[1]
                        ))
                    }
                };
                if l != *max_len || last(x) != Some(i) {
                    return Err(format!(
                        "position-linear weight {} does not fit input {x}",
                        ins[1]
                    ));
                }
                if *bias && ins[2].shape != vec![Dim::Fixed(l), Dim::Fixed(o)] {
                    return Err("bias shape does not match [max_len, out]".into());
                }
                match x.shape.as_slice() {
                    [b, s, _] => {
                        if let Dim::Fixed(n) = s {
                            if n > max_len {
                                return Err(format!(
                                    "a sequence of {n} positions exceeds max_len {max_len}"
                                ));
                            }
                        }
                        f32(vec![*b, *s, Dim::Fixed(o)])
                    }
                    _ => Err(format!("expects [batch, seq, width], got {x}")),
                }
            }
            Op::Rfft { n } => {
                let x = float(0)?;
                let r = x.shape.len();
                if r < 2 || x.shape[r - 2] != Dim::Fixed(*n) {
                    return Err(format!("rfft of length {n} does not fit {x}"));
                }
                let mut s = x.shape.clone();
                s[r - 2] = Dim::Fixed(n / 2 + 1);
                s.push(Dim::Fixed(2));
                f32(s)
            }
            Op::Irfft { n } => {
                let x = float(0)?;
                let r = x.shape.len();
                if r < 3
                    || x.shape[r - 3] != Dim::Fixed(n / 2 + 1)
                    || x.shape[r - 1] != Dim::Fixed(2)
                {
                    return Err(format!("irfft of length {n} does not fit {x}"));
                }
                let mut s = x.shape[..r - 1].to_vec();
                s[r - 3] = Dim::Fixed(*n);
                f32(s)
            }
            Op::ComplexMul => {
                let x = float(0)?;
                let g = &ins[1];
                if x.shape.len() < g.shape.len()
                    || x.shape[x.shape.len() - g.shape.len()..] != g.shape[..]
                {
                    return Err(format!("gate {g} does not fit spectrum {x}"));
                }
                f32(x.shape.clone())
            }
            Op::SpectralFilter { n, causal, .. } => {
                let x = float(0)?;
                let d = match x.shape.as_slice() {
                    [_, _, d] => *d,
                    _ => return Err(format!("expects [batch, seq, width], got {x}")),
                };
                let want = if *causal {
                    vec![Dim::Fixed(n / 2), d]
                } else {
                    vec![Dim::Fixed(n / 2 + 1), d, Dim::Fixed(2)]
                };
                if ins[1].shape != want {
                    return Err(format!(
                        "spectral filter parameter {} does not fit input {x}",
                        ins[1]
                    ));
                }
                f32(x.shape.clone())
            }
            Op::Series { lookback, channels } => f32(vec![
                Dim::Batch,
                Dim::Fixed(*lookback),
                Dim::Fixed(*channels),
            ]),
            Op::RevinNorm | Op::RevinDenorm => {
                let y = float(0)?;
                let c = y.shape.get(2).copied();
                let k = ins.len() - 2;
                if y.shape.len() != 3
                    || ins[k].shape != [c.unwrap_or(Dim::Batch)]
                    || ins[k + 1].shape != ins[k].shape
                    || (k == 2 && ins[1].shape.get(2) != c.as_ref())
                {
                    return Err(format!("RevIN expects [batch, steps, channels] series with per-channel parameters, got {y}"));
                }
                f32(y.shape.clone())
            }
            Op::Patch { len, stride } => match float(0)?.shape.as_slice() {
                [Dim::Batch, Dim::Fixed(l), Dim::Fixed(c)] if l >= len => f32(vec![
                    Dim::BatchTimes(*c),
                    Dim::Fixed((l - len) / stride + 2),
                    Dim::Fixed(*len),
                ]),
                _ => Err(format!(
                    "patches of {len} steps need a series [batch, steps ≥ {len}, channels], got {}",
                    ins[0]
                )),
            },
            Op::WindowedGate { window, hop } => {
                let x = float(0)?;
                let [_, _, Dim::Fixed(d)] = x.shape.as_slice() else {
                    return Err(format!("expects [batch, seq, width], got {x}"));
                };
                if *hop == 0 || hop > window {
                    return Err(format!("a hop of {hop} does not fit frames of {window}"));
                }
                let fx = |v: &[u64]| v.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
                if ins[1].shape != fx(&[3]) || ins[2].shape != fx(&[window / 2 + 1, *d, 2]) {
                    return Err(format!(
                        "windowed gate parameters {} and {} do not fit {x}",
                        ins[1], ins[2]
                    ));
                }
                f32(x.shape.clone())
            }
            Op::Wave { harmonics } => {
                let x = float(0)?;
                match x.shape.as_slice() {
                    [_, _, Dim::Fixed(d)] if *d == 3 * harmonics => f32(x.shape.clone()),
                    _ => Err(format!("expects [batch, seq, 3·{harmonics}], got {x}")),
                }
            }
            Op::HarmonicSelect { k, .. } => {
                let (x, sc) = (float(0)?, float(1)?);
                match (x.shape.as_slice(), sc.shape.as_slice()) {
                    ([b, s, Dim::Fixed(d)], [b2, s2, Dim::Fixed(h)])
                        if b == b2 && s == s2 && *h > 0 && d % h == 0 && *k >= 1 && k <= h =>
                    {
                        f32(x.shape.clone())
                    }
                    _ => Err(format!(
                        "expects [batch, seq, H·g] and scores [batch, seq, H] with k ≤ H, got {x} and {sc}"
                    )),
                }
            }
            Op::PhaseAttention { complex, .. } => {
                let q = float(0)?;
                let [b, h, s, _] = q.shape.as_slice() else {
                    return Err(format!("expects [batch, heads, seq, width], got {q}"));
                };
                let ph = float(3)?;
                let ok_kv = ins[1].shape == q.shape && ins[2].shape == q.shape;
                let ok_ph = matches!(ph.shape.as_slice(), [b2, h2, s2, Dim::Fixed(_)] if b2 == b && h2 == h && s2 == s);
                let ok_amp = !*complex || ins[4].shape == ph.shape;
                let blend = ins[ins.len() - 1].shape == vec![Dim::Fixed(2)];
                if !(ok_kv && ok_ph && ok_amp && blend) {
                    return Err(format!(
                        "phase attention inputs do not fit: q {q}, k {}, v {}, phase {ph}",
                        ins[1], ins[2]
                    ));
                }
                f32(q.shape.clone())
            }
            Op::BandAttention { bands } => {
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
                    if ins[0].shape != x.shape {
                        return Err(format!(
                            "band queries, keys and values differ: {} and {x}",
                            ins[0]
                        ));
                    }
                    lead = Some(l.to_vec());
                    total += d;
                }
                let mut shape = lead.unwrap_or_default();
                total /= 3;
                if shape.len() != 2 || *bands == 0 {
                    return Err(format!(
                        "expects [batch, seq, width] per band, got {}",
                        ins[0]
                    ));
                }
                shape.push(Dim::Fixed(total));
                f32(shape)
            }
            Op::ComplexFeatures => match float(0)?.shape.as_slice() {
                [b, f, Dim::Fixed(d), Dim::Fixed(2)] => f32(vec![*b, *f, Dim::Fixed(2 * d)]),
                _ => Err(format!(
                    "expects complex values [.., f, width, 2], got {}",
                    ins[0]
                )),
            },
            Op::ForecastHead { channels } => {
                match (float(0)?.shape.as_slice(), ins[1].shape.as_slice()) {
                    (
                        [Dim::BatchTimes(c), Dim::Fixed(n), Dim::Fixed(d)],
                        [Dim::Fixed(i), Dim::Fixed(h)],
                    ) if c == channels && n * d == *i && ins[2].shape == [Dim::Fixed(*h)] => {
                        f32(vec![Dim::Batch, Dim::Fixed(*h), Dim::Fixed(*c)])
                    }
                    _ => Err(format!(
                    "the forecast head expects patches [batch*{channels}, patches, width], got {}",
                    ins[0]
                )),
                }
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
            Op::FreqMask { dct } => {
                let p = float(0)?;
                let ok = if *dct {
                    p.shape.len() == 2
                } else {
                    p.shape.len() == 3 && p.shape[2] == Dim::Fixed(2)
                };
                if !ok {
                    return Err(format!("a frequency mask does not fit parameter {p}"));
                }
                f32(p.shape.clone())
            }
            Op::MeanProbs { .. } | Op::MeanForecasts { .. } => {
                let x = float(0)?;
                if ins.iter().any(|t| t != x) {
                    return Err("ensemble members must all return the same logits shape".into());
                }
                f32(x.shape.clone())
            }
            Op::Output => Ok(ins[0].clone()),
        }
    }
}

/// The frequency-curriculum mask at one step: bin k of F (normalized frequency
/// f_k = k/(F − 1)) gets weight 1 if f_k ≤ cutoff else 0, or sigmoid(slope · (cutoff − f_k))
/// with a slope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreqCutoff {
    /// Cutoff, a fraction of the band.
    pub cutoff: f64,
    /// Slope of the soft mask; `None` for a hard one.
    pub slope: Option<f64>,
}

impl FreqCutoff {
    /// The weights of `bins` frequency bins, lowest first.
    pub fn weights(&self, bins: usize) -> Vec<f64> {
        (0..bins)
            .map(|k| {
                let f = if bins > 1 {
                    k as f64 / (bins - 1) as f64
                } else {
                    0.0
                };
                match self.slope {
                    None => f64::from(u8::from(f <= self.cutoff + 1e-12)),
                    Some(a) => 1.0 / (1.0 + (-a * (self.cutoff - f)).exp()),
                }
            })
            .collect()
    }
}

/// The orthonormal DCT-II basis of `l` taps, row-major `[k, t]`: basis vector k at tap t is
/// √(s/l)·cos(π(t + ½)k/l), s = 1 for k = 0 and 2 otherwise.
pub fn dct_basis(l: usize) -> Vec<f64> {
    (0..l * l)
        .map(|i| {
            let (k, t) = (i / l, i % l);
            let s = if k == 0 { 1.0 } else { 2.0 };
            (s / l as f64).sqrt()
                * (std::f64::consts::PI * (t as f64 + 0.5) * k as f64 / l as f64).cos()
        })
        .collect()
}

/// The three windows a `windowed_spectral_gate` mixes, periodic, of length w: Hann
/// 0.5 − 0.5·cos(2πn/w), Hamming 0.54 − 0.46·cos(2πn/w) and rectangular 1 (`[3][w]`, row-major).
pub fn window_basis(w: usize) -> Vec<f64> {
    let mut out = vec![0.0; 3 * w];
    for n in 0..w {
        let c = (2.0 * std::f64::consts::PI * n as f64 / w as f64).cos();
        out[n] = 0.5 - 0.5 * c;
        out[w + n] = 0.54 - 0.46 * c;
        out[2 * w + n] = 1.0;
    }
    out
}

/// Framing of a sequence of `len` steps into frames of `window` steps, `hop` apart:
/// `(pad, count)`: the first frame starts `pad` = window − hop steps before the sequence, and
/// `count` frames cover it (the padded sequence has (count − 1)·hop + window steps).
pub fn frames(window: usize, hop: usize, len: usize) -> (usize, usize) {
    let pad = window - hop;
    let count = (pad + len).saturating_sub(window).div_ceil(hop) + 1;
    (pad, count)
}

/// A key-padding bias `[b, t]` fits keys `[b, h, t, d]`.
fn key_bias_fits(bias: &TensorType, k: &TensorType) -> Result<(), String> {
    match (bias.shape.as_slice(), k.shape.as_slice()) {
        ([b, t], [b2, _, t2, _]) if b == b2 && t == t2 => Ok(()),
        _ => Err(format!("key mask {bias} does not fit keys {k}")),
    }
}
