//! Ops, one module per family (DESIGN.md, "Ops"). A family's type holds its attributes and
//! implements [`OpDef`]: its name and attributes as printed, its named input ports, how it
//! mixes positions, its output type, its matrix-product FLOPs, whether it decodes
//! incrementally, its float64 reference and its Burn forward; its tests sit at the end of its
//! file. [`crate::ir::Op`] holds one variant per family and dispatches to it.
//!
//! Families move here one at a time (issue 20): so far the norms, the elementwise ops, the head split, the linear map and the embedding. The other ops still have
//! their arms in `ir/op.rs`, `ir/reference.rs` and `runtime/ops.rs`.

pub mod elementwise;
pub mod embedding;
pub mod heads;
pub mod linear;
pub mod norm;
#[cfg(test)]
mod testing;

use crate::ir::reference::Tensor as RefTensor;
use crate::ir::{DType, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

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
    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, String>;
    /// Multiply-add FLOPs of its matrix products for `batch` sequences of `seq` tokens (0 for
    /// ops that have none).
    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64;
    /// Whether it decodes one position at a time from its inputs at that position (with the
    /// state it keeps, if any).
    fn incremental(&self) -> bool;
    /// The float64 reference: what the op computes, written from its definition; inputs it
    /// cannot take (a token id outside the vocabulary) are an error.
    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String>;
    /// The Burn forward (training and inference).
    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V;
}

/// The input at port `name` of an op with ports `ports`.
pub fn port<'a, T>(ports: &[&str], ins: &'a [T], name: &str) -> &'a T {
    let i = ports
        .iter()
        .position(|p| *p == name)
        .unwrap_or_else(|| panic!("kiln bug: no input port `{name}` in {ports:?}"));
    &ins[i]
}

/// `t` when it holds floats; token ids get the message that tells the user what to add.
pub fn float_input(t: &TensorType) -> Result<&TensorType, String> {
    if t.dtype != DType::F32 {
        return Err(
            "expects a sequence of vectors, but gets token ids: put an `embedding` layer first"
                .into(),
        );
    }
    Ok(t)
}
