//! The row softmax of attention's scores with a causal limit, with its fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use crate::runtime::consts::{future_mask, Consts};

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::{Kernel, Visible};

/// Columns and rows per matrix of a `[.., rows, t]` tensor.
fn rows_cols(t: &FlexTensor) -> (usize, usize) {
    let s = shape_of(t);
    (s[s.len() - 1], s[s.len() - 2])
}

fn softmax_forward(x: &FlexTensor, vis: Visible) -> FlexTensor {
    let (t, rows) = rows_cols(x);
    let mut y = vec![0.0f32; values(x).len()];
    k::softmax_rows(values(x), t, rows, vis, &mut y);
    Kernel::Softmax.ran();
    tensor(y, shape_of(x))
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The output probabilities and the visibility.
    type State = (FlexTensor, Visible);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (y, vis) = ops.state;
            let (t, rows) = rows_cols(&y);
            let mut dx = vec![0.0f32; values(&y).len()];
            k::softmax_rows_backward(values(&y), values(&g), t, rows, vis, &mut dx);
            Kernel::Softmax.ran_backward();
            grads.register::<Flex>(node.id, tensor(dx, shape_of(&y)));
        }
    }
}

/// Softmax over the last axis of scores `[b, h, R, t]`, each row over the keys `vis` lets it
/// see; the others get probability 0 (exactly what `mask_fill(−∞)` and `softmax` give). The
/// plain path takes its causal mask from `masks` (the runtime's tables) where given.
pub fn softmax_rows(scores: Tensor<4>, vis: Visible, masks: Option<&Consts>) -> Tensor<4> {
    match lane(scores) {
        Lane::Plain(x) => back::<4>(Lane::Plain(softmax_forward(&dense(x), vis))),
        Lane::Tracked(x, ctx) => {
            let out = record(SoftmaxBackward, [x.node()], |keep| {
                let y = softmax_forward(&dense(x.primitive().clone()), vis);
                let state = keep.then(|| (y.clone(), vis));
                (y, state)
            });
            back::<4>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => softmax_plain(x, vis, masks),
    }
}

/// The plain Burn path of [`softmax_rows`].
pub fn softmax_plain(scores: Tensor<4>, vis: Visible, masks: Option<&Consts>) -> Tensor<4> {
    activation::softmax(softmax_plain_mask(scores, vis, masks), 3)
}

/// The scores with −∞ where `vis` hides a key (for the attention variants that read the masked
/// scores themselves: hard and adaptive attention). The causal mask `[s, t]` comes from
/// `masks` (built once per runtime and device, [`Consts::future_mask`]) where given, else is
/// built here; the R = G·s rows of grouped attention are G groups of s queries, so the mask is
/// broadcast over them as `[b, h, G, s, t]` (views: no copy of the mask per call).
pub fn softmax_plain_mask(scores: Tensor<4>, vis: Visible, masks: Option<&Consts>) -> Tensor<4> {
    if !vis.causal {
        return scores;
    }
    let [b, h, r, t] = scores.dims();
    let s = vis.queries;
    let g = r / s;
    let mask = future_mask(masks, s, t, vis.offset, &scores.device());
    let mask = mask.reshape([1, 1, 1, s, t]).expand([b, h, g, s, t]);
    scores
        .reshape([b, h, g, s, t])
        .mask_fill(mask, f32::NEG_INFINITY)
        .reshape([b, h, r, t])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grouped rows (G groups of s queries), a decoding offset and keys past the last query
    /// (a preallocated cache): −∞ exactly where key j comes after query i (j > offset + i),
    /// the scores elsewhere, with the runtime's mask table and with one built at the call.
    #[test]
    fn the_mask_hides_exactly_the_later_keys_of_every_group() {
        let device = Device::flex();
        let consts = Consts::default();
        for (b, h, g, s, t, offset) in [(2, 2, 2, 3, 9, 4), (1, 3, 1, 5, 5, 0), (1, 1, 3, 1, 6, 2)]
        {
            let r = g * s;
            let n = b * h * r * t;
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
            let scores =
                Tensor::<4>::from_data(TensorData::new(data.clone(), [b, h, r, t]), &device);
            let vis = Visible {
                queries: s,
                causal: true,
                offset,
            };
            for masks in [None, Some(&consts)] {
                let got = softmax_plain_mask(scores.clone(), vis, masks)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32");
                for (idx, (&x, &y)) in data.iter().zip(&got).enumerate() {
                    let (j, row) = (idx % t, (idx / t) % r);
                    let hidden = j > offset + row % s;
                    let want = if hidden { f32::NEG_INFINITY } else { x };
                    assert_eq!(y, want, "{:?} row {row} key {j}", (b, h, g, s, t, offset));
                }
            }
        }
        // A 9 × 9 table served all three.
        assert_eq!(consts.masks_built(), 1);
    }
}
