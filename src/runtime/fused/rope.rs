//! Rotate-half RoPE, with its fused backward pass (the rotation back).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{
    back, dense, heads_view, lane, needs_grad, record, shape_of, values, values_len, view,
    viewable, Lane,
};
use super::Kernel;

/// Rotates `[b, h, s, d]` (read through its strides) by `table`: per position, d/2 cosines
/// then d/2 sines. The result is laid out as `[b, s, h, d]` (what attention reads and the
/// gradient of the head split wants).
fn rope_apply(x: &FlexTensor, table: &[f32], sign: f32) -> FlexTensor {
    let x = viewable(x.clone());
    let shape: [usize; 4] = shape_of(&x).try_into().expect("RoPE of a 4-D tensor");
    let mut y = vec![0.0f32; values_len(&shape)];
    k::rope(view(&x), shape, table, sign, &mut y);
    heads_view(y, shape)
}

/// The table `[s, d/2, 2]` (cos, sin interleaved, as `Positions::RopeTable` builds it) as
/// per-position rows of d/2 cosines then d/2 sines.
fn rope_rows(table: &FlexTensor) -> Vec<f32> {
    let v = values(table);
    let mut out = Vec::with_capacity(v.len());
    for pos in v.chunks(shape_of(table)[1] * 2) {
        out.extend(pos.iter().step_by(2));
        out.extend(pos.iter().skip(1).step_by(2));
    }
    out
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// The table, as [`rope_rows`] lays it out.
    type State = Arc<Vec<f32>>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let dx = rope_apply(&g, &ops.state, -1.0);
            Kernel::Rope.ran_backward();
            grads.register::<Flex>(node.id, dx);
        }
    }
}

/// Rotate-half RoPE of `x` `[b, h, s, d]` with the table `[s, d/2, 2]` (cos, sin): the first
/// half becomes `x1·cos − x2·sin`, the second `x1·sin + x2·cos`. The table is a constant (no
/// gradient flows into it; a table that requires one takes the plain path).
pub fn rope(x: Tensor<4>, table: Tensor<3>) -> Tensor<4> {
    if needs_grad(&table) {
        return rope_plain(x, table);
    }
    match (lane(x), lane(table)) {
        (Lane::Plain(x), Lane::Plain(t)) => {
            let rows = rope_rows(&dense(t));
            let y = rope_apply(&x, &rows, 1.0);
            Kernel::Rope.ran();
            back::<4>(Lane::Plain(y))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(t, _)) => {
            let rows = rope_rows(&dense(t.into_primitive()));
            let out = record(RopeBackward, [x.node()], |keep| {
                let y = rope_apply(x.primitive(), &rows, 1.0);
                Kernel::Rope.ran();
                (y, keep.then(|| Arc::new(rows)))
            });
            back::<4>(Lane::Tracked(out, ctx))
        }
        (x, t) => rope_plain(back(x), back(t)),
    }
}

/// The plain Burn path of [`rope`].
pub fn rope_plain(x: Tensor<4>, table: Tensor<3>) -> Tensor<4> {
    let [_, _, s, d] = x.dims();
    let half = d / 2;
    let c = table.clone().narrow(2, 0, 1).reshape([1, 1, s, half]);
    let sn = table.narrow(2, 1, 1).reshape([1, 1, s, half]);
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(
        vec![
            x1.clone() * c.clone() - x2.clone() * sn.clone(),
            x1 * sn + x2 * c,
        ],
        3,
    )
}
