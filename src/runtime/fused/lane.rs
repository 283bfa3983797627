//! What the fused ops share: reaching the flex tensor inside a Burn tensor (or learning that
//! the op must take the plain path), reading its values, and registering an op with Burn's
//! autodiff.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::Autodiff;
use burn::backend::{
    BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex,
    GradientCheckpointingStrategy,
};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::enabled;

/// A tensor as the kernels see it.
pub(super) enum Lane<const D: usize> {
    /// A plain flex tensor (no autodiff).
    Plain(FlexTensor),
    /// A flex tensor under autodiff without checkpointing, with its autodiff context.
    Tracked(FloatTensor<Autodiff<Flex>>, DispatchAutodiffContext),
    /// Anything else: the caller takes the plain path.
    Other(Tensor<D>),
}

pub(super) fn lane<const D: usize>(t: Tensor<D>) -> Lane<D> {
    // Empty tensors take the plain path (the kernels split work into non-empty chunks).
    if !enabled() || t.dtype() != DType::F32 || t.shape().num_elements() == 0 {
        return Lane::Other(t);
    }
    let d = t.into_dispatch();
    let ctx = d.autodiff;
    match d.kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f))
            if ctx == DispatchAutodiffContext::Disabled =>
        {
            Lane::Plain(f)
        }
        DispatchTensorKind::Autodiff(inner)
            if ctx == DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Disabled) =>
        {
            match *inner {
                DispatchTensorKind::Flex(BackendTensor::Autodiff(a)) => Lane::Tracked(a, ctx),
                other => Lane::Other(Tensor::from_dispatch(DispatchTensor {
                    kind: DispatchTensorKind::Autodiff(Box::new(other)),
                    autodiff: ctx,
                })),
            }
        }
        kind => Lane::Other(Tensor::from_dispatch(DispatchTensor {
            kind,
            autodiff: ctx,
        })),
    }
}

pub(super) fn back<const D: usize>(l: Lane<D>) -> Tensor<D> {
    match l {
        Lane::Plain(f) => Tensor::from_dispatch(DispatchTensor {
            kind: DispatchTensorKind::Flex(BackendTensor::Float(f)),
            autodiff: DispatchAutodiffContext::Disabled,
        }),
        Lane::Tracked(a, ctx) => Tensor::from_dispatch(DispatchTensor {
            kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Flex(
                BackendTensor::Autodiff(a),
            ))),
            autodiff: ctx,
        }),
        Lane::Other(t) => t,
    }
}

/// The tensor with a contiguous layout starting at offset 0 (copied only when it is not).
pub(super) fn dense(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

/// The elements of a dense tensor.
pub(super) fn values(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[..t.layout().num_elements()]
}

/// The elements of a dense tensor, to write in place (copied first if the storage is shared).
pub(super) fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let n = t.layout().num_elements();
    &mut t.storage_mut::<f32>()[..n]
}

pub(super) fn shape_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

pub(super) fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Registers `op` with Burn's autodiff over the inputs `nodes` and returns its output.
/// `forward(keep)` computes the output and, when `keep` (some input wants a gradient), the
/// state `op`'s backward pass reads.
pub(super) fn record<Op: Backward<Flex, N>, const N: usize>(
    op: Op,
    nodes: [NodeGuard; N],
    forward: impl FnOnce(bool) -> (FlexTensor, Option<Op::State>),
) -> FloatTensor<Autodiff<Flex>> {
    match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, state) = forward(true);
            prep.finish(state.expect("a state when gradients are wanted"), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
    }
}

/// Whether a gradient can flow into `t`: a leaf that requires one, or a tensor computed from one.
pub(super) fn needs_grad<const D: usize>(t: &Tensor<D>) -> bool {
    t.is_require_grad() || t.is_tracked()
}

/// The values of a constant (non-differentiable) f32 flex tensor, or `None` for anything else.
pub(super) fn constant_values<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if needs_grad(t) {
        return None;
    }
    match lane(t.clone()) {
        Lane::Plain(x) => Some(dense(x)),
        Lane::Tracked(x, _) => Some(dense(x.into_primitive())),
        Lane::Other(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Strided 4-D views (what RoPE and attention read).

/// A 4-D tensor's start and first three strides, when it can be read as a [`k::View4`]: no
/// negative stride, and a unit stride on the last axis (or a last axis of one).
fn view_parts(t: &FlexTensor) -> Option<(usize, [usize; 3])> {
    let l = t.layout();
    let (st, shape) = (l.strides(), l.shape());
    let ok = st.len() == 4 && st.iter().all(|&x| x >= 0) && (st[3] == 1 || shape[3] == 1);
    ok.then(|| {
        (
            l.start_offset(),
            [st[0] as usize, st[1] as usize, st[2] as usize],
        )
    })
}

/// The tensor itself when [`view`] can read it, else a dense copy.
pub(super) fn viewable(t: FlexTensor) -> FlexTensor {
    if view_parts(&t).is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

pub(super) fn view(t: &FlexTensor) -> k::View4<'_> {
    let (off, strides) = view_parts(t).expect("a viewable tensor (see `viewable`)");
    k::View4 {
        data: t.storage::<f32>(),
        off,
        strides,
    }
}

/// `[b, s, h, d]` values presented as `[b, h, s, d]` (a view: no copy).
pub(super) fn heads_view(v: Vec<f32>, [b, h, s, d]: [usize; 4]) -> FlexTensor {
    tensor(v, vec![b, s, h, d]).permute(&[0, 2, 1, 3])
}

pub(super) fn values_len(shape: &[usize]) -> usize {
    shape.iter().product()
}
