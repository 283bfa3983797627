//! Attention: over the sequence's own positions ([`SelfAttention`], with its cache of keys and
//! values for decoding), the K/V head repeat of grouped-query attention ([`RepeatKv`]),
//! attention over an encoder's output ([`CrossAttention`]) and the key-padding mask both can
//! add to their logits ([`PadBias`]).
//!
//! The fused attention kernel stays in [`crate::runtime::fused`]; the plain forward calls it.
//! An encoder-decoder's cross-attention keys and values depend only on the source: the
//! runtime computes them once per generation (its `source` values), not this family.

pub mod cross;
mod kv;
pub mod repeat_kv;
pub mod self_attention;
mod weights;

pub use cross::{CrossAttention, PadBias};
pub(crate) use kv::append;
pub use kv::KvState;
pub use repeat_kv::RepeatKv;
pub use self_attention::SelfAttention;

use super::{float_input, InferError};
use crate::ir::TensorType;
use crate::runtime::V;
use burn::prelude::*;

/// How attention logits are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttnScale {
    /// q·k / √head_dim.
    InvSqrtDim,
    /// q̂·k̂ · g with a learned scalar g (QK-norm); g is the input `scale`.
    Learned,
}

op_family! {
    /// An op of the attention family.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Attention in Attention {
        /// Attention over the sequence's own positions (`attention`).
        Attend(SelfAttention),
        /// Each K/V head repeated for its query heads (`repeat_kv`).
        RepeatKv(RepeatKv),
        /// Attention over an encoder's output (`cross_attention`).
        Cross(CrossAttention),
        /// The key-padding mask of token ids (`pad_bias`).
        PadBias(PadBias),
    }
}

impl Attention {
    /// The self-attention op, if it is one.
    pub fn attend(&self) -> Option<&SelfAttention> {
        match self {
            Attention::Attend(o) => Some(o),
            Attention::RepeatKv(_) | Attention::Cross(_) | Attention::PadBias(_) => None,
        }
    }
}

/// The bytes of the score and weight matrices of queries `q [b, h, s, d]` over keys
/// `k [b, h, t, d]` for one example: h·s·t of each, in f32.
pub fn score_bytes(q: &TensorType, k: &TensorType, seq: u64) -> u64 {
    q.len(1, seq) * q.len(2, seq) * k.len(2, seq) * 4 * 2
}

/// The bytes attention computed by the fused kernel (`runtime::fused::attention`) holds for
/// one example beyond its inputs and output: each row's two softmax statistics, kept for the
/// backward pass, and the scores of one block of 32 query rows.
pub fn fused_score_bytes(q: &TensorType, k: &TensorType, seq: u64) -> u64 {
    let rows = q.len(1, seq) * q.len(2, seq);
    (rows * 2 + 32 * k.len(2, seq)) * 4
}

/// A key-padding bias `[b, t]` (floats) fits keys `[b, h, t, d]`.
fn key_bias_fits(bias: &TensorType, k: &TensorType) -> Result<(), InferError> {
    let bias = float_input(bias)?;
    match (bias.shape.as_slice(), k.shape.as_slice()) {
        ([b, t], [b2, _, t2, _]) if b == b2 && t == t2 => Ok(()),
        _ => Err(super::shapes(format!(
            "key mask {bias} does not fit keys {k}"
        ))),
    }
}

/// Attention logits `[b, h, s, t]` plus a key-padding bias `[b, t]` (see [`PadBias`]).
fn add_key_bias(scores: Tensor<4>, bias: &V) -> Tensor<4> {
    let [b, t] = bias.f2().dims();
    scores + bias.f2().reshape([b, 1, 1, t])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Mixing, Real};
    use crate::ops::OpDef;

    #[test]
    fn the_family_dispatches_to_its_ops() {
        let ops = [
            Attention::Attend(SelfAttention {
                causal: true,
                kv_groups: 2,
                scale: AttnScale::Learned,
                dropout: Real(0.1),
                hard: false,
                adaptive: false,
                key_mask: false,
            }),
            Attention::RepeatKv(RepeatKv { groups: 3 }),
            Attention::Cross(CrossAttention { key_mask: true }),
            Attention::PadBias(PadBias { pad: 2 }),
        ];
        let names: Vec<&str> = ops.iter().map(OpDef::name).collect();
        assert_eq!(
            names,
            ["attention", "repeat_kv", "cross_attention", "pad_bias"]
        );
        assert_eq!(
            ops[0].attrs(),
            "causal=true kv_groups=2 scale=learned dropout=0.1"
        );
        assert_eq!(ops[0].ports(), ["q", "k", "v", "scale"]);
        assert!(!ops[0].is_pure() && ops[1].is_pure());
        assert_eq!(ops[0].mixing(), Mixing::Causal);
        assert!(ops.iter().all(OpDef::incremental));
        assert!(ops[0].attend().is_some() && ops[2].attend().is_none());
        let ids = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Fixed(4)],
        };
        assert_eq!(
            ops[3].infer(std::slice::from_ref(&ids)).unwrap().dtype,
            DType::F32
        );
        assert_eq!(ops[3].position_limit(&[&ids]), None);
    }
}
