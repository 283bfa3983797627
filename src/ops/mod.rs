//! Ops, one module per family (DESIGN.md, "Ops"). A family's type holds its attributes and
//! implements [`OpDef`]: its name and attributes as printed, its named input ports, how it
//! mixes positions, its output type, its matrix-product FLOPs, whether it decodes
//! incrementally, its float64 reference and its Burn forward; its tests sit at the end of its
//! file. [`crate::ir::Op`] holds one variant per family and dispatches to it.
//! Families of several op types are made with `op_family!`; `testing` holds the checks each
//! family runs on itself (`Case`). How a layer is added: docs/reference/layout.md.

/// A family of several op types: the enum (a variant per op, each holding a type that
/// implements [`OpDef`]), `From` each op type into the family and into [`crate::ir::Op`]
/// (through the family's variant `$family` of the op table), and the family's [`OpDef`],
/// which passes every question to the op it holds.
macro_rules! op_family {
    (
        $(#[$m:meta])*
        pub enum $name:ident in $family:ident {
            $($(#[$vm:meta])* $v:ident($t:ty),)*
        }
    ) => {
        $(#[$m])*
        pub enum $name {
            $($(#[$vm])* $v($t),)*
        }

        impl $name {
            /// The op it holds.
            fn op(&self) -> &dyn $crate::ops::OpDef {
                match self {
                    $($name::$v(o) => o,)*
                }
            }
        }

        $(impl From<$t> for $name {
            fn from(o: $t) -> $name {
                $name::$v(o)
            }
        }

        impl From<$t> for $crate::ir::Op {
            fn from(o: $t) -> $crate::ir::Op {
                $crate::ir::Op::$family($name::$v(o))
            }
        })*

        impl $crate::ops::OpDef for $name {
            fn name(&self) -> &'static str {
                self.op().name()
            }

            fn attrs(&self) -> String {
                self.op().attrs()
            }

            fn ports(&self) -> &'static [&'static str] {
                self.op().ports()
            }

            fn is_pure(&self) -> bool {
                self.op().is_pure()
            }

            fn mixing(&self) -> $crate::ir::Mixing {
                self.op().mixing()
            }

            fn infer(
                &self,
                ins: &[$crate::ir::TensorType],
            ) -> Result<$crate::ir::TensorType, $crate::ops::InferError> {
                self.op().infer(ins)
            }

            fn matmul_flops(&self, ins: &[&$crate::ir::TensorType], batch: u64, seq: u64) -> u64 {
                self.op().matmul_flops(ins, batch, seq)
            }

            fn workspace_bytes(&self, ins: &[&$crate::ir::TensorType], seq: u64) -> u64 {
                self.op().workspace_bytes(ins, seq)
            }

            fn position_limit(&self, ins: &[&$crate::ir::TensorType]) -> Option<usize> {
                self.op().position_limit(ins)
            }

            fn incremental(&self) -> bool {
                self.op().incremental()
            }

            fn reference(
                &self,
                ins: &[&$crate::ops::RefTensor],
            ) -> Result<$crate::ops::RefTensor, String> {
                self.op().reference(ins)
            }

            fn forward(
                &self,
                ins: &[&$crate::runtime::V],
                ctx: &$crate::runtime::ops::Ctx,
            ) -> $crate::runtime::V {
                self.op().forward(ins, ctx)
            }

            fn decode(
                &self,
                ins: &[&$crate::runtime::V],
                ctx: &$crate::runtime::ops::Ctx,
                state: &mut Option<Box<dyn $crate::ops::OpState>>,
            ) -> $crate::runtime::V {
                self.op().decode(ins, ctx, state)
            }
        }
    };
}

pub mod attention;
pub mod band_attention;
pub mod elementwise;
pub mod embedding;
pub mod ensemble;
pub mod ets;
pub mod forecast;
pub mod graph;
pub mod heads;
pub mod linear;
pub mod lstm;
pub mod mamba;
pub mod memory;
pub mod norm;
pub mod phase_attention;
pub mod position_linear;
pub mod positions;
pub mod retention;
pub mod sequence;
pub mod spectral;
#[cfg(test)]
mod testing;
pub mod wave;
pub mod xlstm;

pub use crate::ir::reference::Tensor as RefTensor;
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use burn::prelude::*;
use std::any::Any;

/// Why an op's inputs do not fit it (from [`OpDef::infer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// A float input got token ids: the model lacks an embedding.
    #[error("expects a sequence of vectors, but gets token ids: put an `embedding` layer first")]
    TokenIds,
    /// Input shapes that do not fit the op or each other.
    #[error("{0}")]
    Shapes(String),
    /// An attribute the op cannot work with (a hop longer than its frame, k above H).
    #[error("{0}")]
    Attribute(String),
}

impl InferError {
    /// The advice a diagnostic gives with it.
    pub fn help(&self) -> &'static str {
        match self {
            InferError::TokenIds => "start the model with `{type: embedding, dim: ...}`",
            InferError::Shapes(_) => {
                "check the widths and head counts of this layer against the layer before it"
            }
            InferError::Attribute(_) => "check this layer's settings",
        }
    }
}

impl From<InferError> for String {
    fn from(e: InferError) -> String {
        e.to_string()
    }
}

/// Shorthand for an [`InferError::Shapes`].
pub fn shapes(msg: impl Into<String>) -> InferError {
    InferError::Shapes(msg.into())
}

/// What an op keeps between the calls of an incremental decoding (keys and values, a
/// recurrence's state, its latest inputs): each op's own type, held by
/// [`crate::runtime::KvCache`] per node.
pub trait OpState: Any {
    /// Keep batch rows `rows`, in that order (beam search continues the surviving
    /// hypotheses).
    fn select_rows(&mut self, rows: &Tensor<1, Int>);
    /// The device its tensors live on.
    fn device(&self) -> Device;
    /// The shape `[batch, heads, positions, width]` of the keys it holds, if it holds keys.
    fn key_shape(&self) -> Option<[usize; 4]>;
}

/// The state an op left at its last decoding call, as its own type `T`.
pub fn take_state<T: OpState>(state: &mut Option<Box<dyn OpState>>) -> Option<T> {
    let b: Box<dyn Any> = state.take()?;
    Some(
        *b.downcast::<T>()
            .unwrap_or_else(|_| panic!("kiln bug: a decoding state of another op")),
    )
}

/// Everything kiln needs to know about an op, in one place.
pub trait OpDef {
    /// Short name used in printing (`kiln graph`, golden files).
    fn name(&self) -> &'static str;
    /// Attributes as printed, e.g. `eps=0.00001`.
    fn attrs(&self) -> String;
    /// The names of its inputs, in order (its arity is their number).
    fn ports(&self) -> &'static [&'static str];
    /// `false` when two of it on the same inputs differ (random ops), so CSE must not merge
    /// them.
    fn is_pure(&self) -> bool;
    /// How output position t depends on input positions.
    fn mixing(&self) -> Mixing;
    /// The output type from the input types, or why they do not fit.
    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError>;
    /// Multiply-add FLOPs of its matrix products for `batch` sequences of `seq` tokens (0 for
    /// ops that have none).
    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64;
    /// Its largest temporary buffer for one example of `seq` positions, in bytes: memory it
    /// needs beyond its inputs and output (attention's score and weight matrices, which
    /// dominate memory on long sequences); 0 for ops that need none.
    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64;
    /// The longest sequence it can take (a learned position table's rows, a position-wise
    /// map's `max_len`), from its input types; `None` when any length fits.
    fn position_limit(&self, ins: &[&TensorType]) -> Option<usize>;
    /// Whether it decodes one position at a time from its inputs at that position (with the
    /// state it keeps, if any).
    fn incremental(&self) -> bool;
    /// The float64 reference: what the op computes, written from its definition; inputs it
    /// cannot take (a token id outside the vocabulary) are an error.
    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String>;
    /// The Burn forward (training and inference).
    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V;
    /// One call of an incremental decoding (only for ops whose [`OpDef::incremental`] is
    /// true): the outputs at positions `ctx.offset..ctx.offset + ctx.seq` from the inputs at
    /// those positions and the op's own `state` from the earlier calls, which it updates.
    /// Ops that keep no state return their [`OpDef::forward`].
    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V;
}

/// The input at port `name` of an op with ports `ports`.
pub fn port<'a, T>(ports: &[&str], ins: &'a [T], name: &str) -> &'a T {
    let i = ports
        .iter()
        .position(|p| *p == name)
        .unwrap_or_else(|| panic!("kiln bug: no input port `{name}` in {ports:?}"));
    &ins[i]
}

/// The port names of an op whose number of inputs is an attribute (an LSTM's layers, an
/// ensemble's members, concatenated parts, bands): `make()` gives them for `n`, once per
/// `(kind, n)` for the whole process, kept for good (names of ports are `'static`; a program
/// meets few such counts).
pub fn counted_ports(
    kind: &'static str,
    n: u64,
    make: impl FnOnce() -> Vec<String>,
) -> &'static [&'static str] {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    type Made = HashMap<(&'static str, u64), &'static [&'static str]>;
    static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    made.entry((kind, n)).or_insert_with(|| {
        let names: Vec<&'static str> = make()
            .into_iter()
            .map(|s| &*Box::leak(s.into_boxed_str()))
            .collect();
        Box::leak(names.into_boxed_slice())
    })
}

/// A float output of `shape` (what most ops infer).
pub fn f32_type(shape: Vec<Dim>) -> Result<TensorType, InferError> {
    Ok(TensorType {
        dtype: DType::F32,
        shape,
    })
}

/// `t` when it holds floats; token ids get the message that tells the user what to add.
pub fn float_input(t: &TensorType) -> Result<&TensorType, InferError> {
    if t.dtype != DType::F32 {
        return Err(InferError::TokenIds);
    }
    Ok(t)
}
