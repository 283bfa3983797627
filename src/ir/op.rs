//! The IR's [`Op`]: one variant per op family, made from one table (`op_table!`), and the
//! small types ops share (attributes, initialisations, mixing). What each op does lives in its
//! family's module under [`crate::ops`].

use super::TensorType;
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

pub use crate::ops::attention::AttnScale;

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

pub use crate::ops::graph::{Input, Output, Param, Series, Source};

/// Makes [`Op`] from the table of op families: a variant per family holding the family's type,
/// [`Op::def`] (the family's [`OpDef`]) and `From<family> for Op`. A new op is one line here
/// and its module under [`crate::ops`]; everything else asks [`Op::def`].
macro_rules! op_table {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// One operation: its family's type, which implements [`OpDef`]. Inputs are named
        /// ports (in port order); every op has one output.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Op {
            $($(#[$doc])* $variant($ty),)*
        }

        impl Op {
            /// Everything kiln knows about the op, from its family.
            pub fn def(&self) -> &dyn OpDef {
                match self {
                    $(Op::$variant(o) => o,)*
                }
            }
        }

        $(impl From<$ty> for Op {
            fn from(o: $ty) -> Op {
                Op::$variant(o)
            }
        })*
    };
}

op_table! {
    /// Token ids `i64[batch, seq]` (see [`crate::ops::graph`]).
    Input(Input),
    /// A forecasting model's input series `[b, L, C]`.
    Series(Series),
    /// An encoder-decoder's source ids `[b, len]`.
    Source(Source),
    /// A learned tensor.
    Param(Param),
    /// The model's result.
    Output(Output),
    /// Token embedding (see [`crate::ops::embedding`]).
    Embedding(crate::ops::embedding::Embedding),
    /// `x · weight (+ bias)` over the last axis (see [`crate::ops::linear`]).
    Linear(crate::ops::linear::Linear),
    /// LayerNorm, RMSNorm and L2 normalization (see [`crate::ops::norm`]).
    Norm(crate::ops::norm::Norm),
    /// Sums, products, activations, dropout (see [`crate::ops::elementwise`]).
    Elementwise(crate::ops::elementwise::Elementwise),
    /// Splitting into attention heads and merging them (see [`crate::ops::heads`]).
    Heads(crate::ops::heads::Heads),
    /// Position tables and RoPE (see [`crate::ops::positions`]).
    Positions(crate::ops::positions::Positions),
    /// Padding, cropping, feature slices and concatenation (see [`crate::ops::sequence`]).
    Sequence(crate::ops::sequence::Sequence),
    /// Memory tokens (see [`crate::ops::memory`]).
    Memory(crate::ops::memory::Memory),
    /// Attention, cross-attention, KV repeats and key-padding masks (see
    /// [`crate::ops::attention`]).
    Attention(crate::ops::attention::Attention),
    /// Phase-coherent attention (see [`crate::ops::phase_attention`]).
    PhaseAttention(crate::ops::phase_attention::PhaseAttention),
    /// Cross-band attention (see [`crate::ops::band_attention`]).
    BandAttention(crate::ops::band_attention::BandAttention),
    /// The wave encoding and the harmonic selection (see [`crate::ops::wave`]).
    Wave(crate::ops::wave::Wave),
    /// A stacked LSTM (see [`crate::ops::lstm`]).
    Lstm(crate::ops::lstm::Lstm),
    /// A Mamba block (see [`crate::ops::mamba`]).
    Mamba(crate::ops::mamba::Mamba),
    /// The position-wise linear model (see [`crate::ops::position_linear`]).
    PositionLinear(crate::ops::position_linear::PositionLinear),
    /// The xLSTM cells mLSTM and sLSTM (see [`crate::ops::xlstm`]).
    Xlstm(crate::ops::xlstm::Xlstm),
    /// Exponential smoothing attention (see [`crate::ops::ets`]).
    Ets(crate::ops::ets::Ets),
    /// FFTs, spectral filters, frequency masks, the windowed gate (see
    /// [`crate::ops::spectral`]).
    Spectral(crate::ops::spectral::Spectral),
    /// RevIN, patches and the forecasting head (see [`crate::ops::forecast`]).
    Forecast(crate::ops::forecast::Forecast),
    /// Ensemble outputs (see [`crate::ops::ensemble`]).
    Ensemble(crate::ops::ensemble::Ensemble),
    /// RetNet's multi-scale retention (see [`crate::ops::retention`]).
    Retention(crate::ops::retention::Retention),
}

impl Op {
    /// Short name used in printing.
    pub fn name(&self) -> &'static str {
        self.def().name()
    }

    /// Attributes as text, e.g. `heads=4`.
    pub fn attrs(&self) -> String {
        self.def().attrs()
    }

    /// `false` for ops whose result is random (two of them on the same input differ) and for
    /// the graph's own nodes, so CSE must not merge them.
    pub fn is_pure(&self) -> bool {
        self.def().is_pure()
    }

    /// How the op mixes sequence positions.
    pub fn mixing(&self) -> Mixing {
        self.def().mixing()
    }

    /// Number of inputs the op takes (its ports).
    pub fn arity(&self) -> usize {
        self.def().ports().len()
    }

    /// The positions a sequence through this op can hold (see [`OpDef::position_limit`]).
    pub fn position_limit(&self, ins: &[&TensorType]) -> Option<usize> {
        self.def().position_limit(ins)
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
        self.def().infer(ins)
    }
}
