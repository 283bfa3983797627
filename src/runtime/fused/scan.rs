//! Mamba's selective scan, with its fused backward pass through time.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::{DispatchAutodiffContext, Flex};
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{back, constant_values, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

#[derive(Debug)]
struct ScanBackward;

/// What the scan's backward pass keeps: dt, a, dtx, bm, cm, the initial state, every state.
#[derive(Clone, Debug)]
struct ScanState {
    ins: [FlexTensor; 5],
    h0: FlexTensor,
    hs: Arc<Vec<f32>>,
    sh: k::ScanShape,
}

impl Backward<Flex, 5> for ScanBackward {
    type State = ScanState;

    fn backward(self, ops: Ops<ScanState, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let ins = st.ins.each_ref().map(values);
        let g = k::selective_scan_backward(ins, st.sh, values(&st.h0), &st.hs, values(&gy));
        Kernel::Scan.ran_backward();
        for ((parent, grad), like) in ops.parents.into_iter().zip(g).zip(&st.ins) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, shape_of(like)));
            }
        }
    }
}

/// Runs the scan kernel; returns y `[b, s, e]`, the final state and, when `keep`, every state.
fn scan_forward(
    ins: &[FlexTensor; 5],
    h0: &[f32],
    keep: bool,
) -> (FlexTensor, FlexTensor, Vec<f32>, k::ScanShape) {
    let (ds, as_) = (shape_of(&ins[0]), shape_of(&ins[1]));
    let sh = k::ScanShape {
        batch: ds[0],
        len: ds[1],
        channels: ds[2],
        state: as_[2],
    };
    let mut h = h0.to_vec();
    let mut y = vec![0.0f32; sh.batch * sh.len * sh.channels];
    let mut hs = if keep {
        vec![0.0f32; y.len() * sh.state]
    } else {
        Vec::new()
    };
    k::selective_scan(
        ins.each_ref().map(values),
        sh,
        &mut h,
        &mut y,
        keep.then_some(&mut hs[..]),
    );
    Kernel::Scan.ran();
    let h = tensor(h, vec![sh.batch, sh.channels, sh.state]);
    (tensor(y, ds), h, hs, sh)
}

/// Mamba's selective scan over `dt`, `dtx` `[b, s, e]`, `a` `[e, n]`, `bm`, `cm` `[b, s, n]`
/// from the state `h0` `[b, e, n]`: `h ← exp(dt·a) ⊙ h + dtx·bm`, `y = cm · h` per position.
/// Returns y `[b, s, e]` and the final state. One fused op forward (per batch row in parallel,
/// the state kept in place) and one backward pass through time. The initial state is a
/// constant (a state that requires a gradient takes the plain path), and the final state
/// carries no gradient: it only feeds the next decoding call, which runs without autodiff.
/// Equal to [`selective_scan_plain`].
pub fn selective_scan(
    [dt, a, dtx, bm, cm]: [Tensor<3>; 5],
    h0: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let Some(h0_vals) = constant_values(&h0) else {
        return selective_scan_plain([dt, a, dtx, bm, cm], h0);
    };
    let lanes = [dt, a, dtx, bm, cm].map(lane);
    if lanes.iter().all(|l| matches!(l, Lane::Plain(_))) {
        let ins = lanes.map(|l| match l {
            Lane::Plain(t) => dense(t),
            _ => unreachable!("checked above"),
        });
        let (y, h, _, _) = scan_forward(&ins, values(&h0_vals), false);
        return (back::<3>(Lane::Plain(y)), back::<3>(Lane::Plain(h)));
    }
    if lanes.iter().all(|l| matches!(l, Lane::Tracked(..))) {
        let mut ctx = DispatchAutodiffContext::Disabled;
        let tracked = lanes.map(|l| match l {
            Lane::Tracked(t, c) => {
                ctx = c;
                t
            }
            _ => unreachable!("checked above"),
        });
        let mut h_final = None;
        let out = record(ScanBackward, tracked.each_ref().map(|t| t.node()), |keep| {
            let ins = tracked.each_ref().map(|t| dense(t.primitive().clone()));
            let (y, h, hs, sh) = scan_forward(&ins, values(&h0_vals), keep);
            h_final = Some(h);
            let state = keep.then(|| ScanState {
                ins,
                h0: h0_vals.clone(),
                hs: Arc::new(hs),
                sh,
            });
            (y, state)
        });
        let h = h_final.expect("the scan ran");
        let h = back::<3>(Lane::Plain(h)).autodiff();
        return (back::<3>(Lane::Tracked(out, ctx)), h);
    }
    let [dt, a, dtx, bm, cm] = lanes.map(back);
    selective_scan_plain([dt, a, dtx, bm, cm], h0)
}

/// The plain Burn path of [`selective_scan`]: the scan step by step on `[b, e, n]` states.
/// Each step slices only the small per-position tensors: slicing `[b, s, e, n]` products
/// instead costs a full-size gradient buffer per step in the backward pass (quadratic in s).
pub fn selective_scan_plain(
    [dt, a, dtx, bm, cm]: [Tensor<3>; 5],
    h0: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let [b, s, e] = dt.dims();
    let n = a.dims()[2];
    let mut h = h0;
    let mut ys = Vec::with_capacity(s);
    for t in 0..s {
        let step = |x: &Tensor<3>, w: usize| x.clone().narrow(1, t, 1).reshape([b, w, 1]);
        let da = (step(&dt, e) * a.clone()).exp();
        let bt = step(&bm, n).reshape([b, 1, n]);
        h = da * h + step(&dtx, e) * bt;
        let ct = step(&cm, n).reshape([b, 1, n]);
        ys.push((h.clone() * ct).sum_dim(2));
    }
    (Tensor::cat(ys, 2).permute([0, 2, 1]), h)
}
