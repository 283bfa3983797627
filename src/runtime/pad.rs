//! Static shapes in training: token inputs right-padded to a multiple of [`Runtime::pad_to`]
//! positions, so that a GPU sees lengths that vectorise (64 rather than 65) and one shape per
//! band of lengths rather than one per length.
//!
//! Padding on the right changes nothing a causal model computes at the real positions: no
//! position sees a later one, so the padded positions' outputs are dropped and the rest are
//! those of the unpadded input (up to the rounding of products of another shape). A model is
//! padded only when that holds: its graph is causal ([`crate::lower::is_causal`]), it reads
//! token ids (not a forecaster's series, not an encoder-decoder's source part, whose logits
//! cover only the target) and gives one output per input position, and the padded length is
//! within its positions ([`Runtime::max_positions`]). Otherwise it runs at the length given.

use super::{Runtime, V};
use crate::ir::{Dim, Graph, Op};
use burn::prelude::*;

/// Why `g` cannot be padded, or the longest input it may be padded to (`usize::MAX` when no
/// layer limits the positions).
pub fn limit(g: &Graph) -> Result<usize, String> {
    if g.source_len().is_some() {
        return Err("an encoder-decoder's logits cover only its target part".into());
    }
    if g.g.node_weights().any(|n| matches!(n.op, Op::Series(_))) {
        return Err("a forecaster reads a series, not token ids".into());
    }
    let per_position = g.output().is_some_and(|o| {
        g.input_types(o)
            .first()
            .is_some_and(|t| t.shape.get(1) == Some(&Dim::Seq))
    });
    if !per_position {
        return Err("the output has no position per input position".into());
    }
    let noncausal = crate::lower::noncausal_layers(g);
    if let Some(&n) = noncausal.first() {
        return Err(format!(
            "layer `{}` lets a position see later positions, which padding would change",
            g.g[n].layer
        ));
    }
    Ok(max_positions(g).unwrap_or(usize::MAX))
}

/// The most positions `g` accepts (see [`Runtime::max_positions`]).
pub(super) fn max_positions(g: &Graph) -> Option<usize> {
    g.g.node_indices()
        .filter_map(|n| {
            let ins = g.input_types(n);
            let limit = g.g[n].op.position_limit(&ins)?;
            // Memory tokens in scope take positions from the input.
            let memory = match ins.first().and_then(|t| t.shape.get(1)) {
                Some(Dim::SeqPlus(m)) => *m as usize,
                _ => 0,
            };
            Some(limit.saturating_sub(memory))
        })
        .min()
}

/// The length at which `seq` positions run when padded to a multiple of `pad_to` under
/// `limit` (see [`limit`]): rounded up where the model allows padding and the rounded length
/// is within its positions, `seq` otherwise.
pub fn padded(limit: &Result<usize, String>, pad_to: usize, seq: usize) -> usize {
    let to = pad_to.max(1);
    match limit {
        Ok(limit) if to > 1 => {
            let p = seq.div_ceil(to) * to;
            if p <= *limit {
                p
            } else {
                seq
            }
        }
        _ => seq,
    }
}

impl Runtime {
    /// The length at which a forward pass of `seq` token positions runs: `seq` rounded up to a
    /// multiple of [`Runtime::pad_to`] where the model allows padding (see the module) and the
    /// rounded length is within its positions; `seq` otherwise.
    pub fn padded_len(&self, seq: usize) -> usize {
        padded(&self.pad_limit, self.pad_to, seq)
    }

    /// A note for a user who asked for padding ([`Runtime::pad_to`] > 1) that this model
    /// cannot be padded, and why; `None` otherwise.
    pub fn pad_note(&self) -> Option<String> {
        let why = self.pad_refusal().filter(|_| self.pad_to > 1)?;
        Some(format!(
            "kiln: not padding inputs to a multiple of {} positions: {why}",
            self.pad_to
        ))
    }

    /// `None` when the model can be padded; otherwise why not.
    pub fn pad_refusal(&self) -> Option<&str> {
        self.pad_limit.as_ref().err().map(String::as_str)
    }

    /// The forward pass of token ids padded on the right with id 0 to
    /// [`Runtime::padded_len`], its output narrowed back to the real positions. Other inputs
    /// run as given.
    pub(super) fn run_padded(&self, input: V, train: bool) -> Tensor<3> {
        let V::I2(tokens) = input else {
            return self.run(input, train, None, None);
        };
        let [b, s] = tokens.dims();
        let p = self.padded_len(s);
        if p == s {
            return self.run(V::I2(tokens), train, None, None);
        }
        let fill = Tensor::<2, Int>::zeros([b, p - s], &tokens.device());
        let out = self.run(V::I2(Tensor::cat(vec![tokens, fill], 1)), train, None, None);
        out.narrow(1, 0, s)
    }
}
