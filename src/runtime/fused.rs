//! kiln's fused CPU kernels, each with its own backward pass.
//!
//! Burn's flex backend runs an op such as softmax as five separate passes (max, subtract, exp,
//! sum, divide), each on one thread, each allocating its output, with a scalar `expf` per
//! element; autodiff then records each pass and runs its backward separately. The kernels here
//! do the same arithmetic in one pass over the data, split across the rayon pool, with an `exp`
//! the compiler vectorizes (AVX2 + FMA where the CPU has them), and register one node with
//! Burn's autodiff whose backward pass is one fused kernel too. The kernels themselves are the
//! `kiln-kernels` crate (`kernels/`), optimized in every build profile; this module connects them
//! to Burn's tensors.
//!
//! | kernel | replaces |
//! |---|---|
//! | [`silu`] | `x · sigmoid(x)` (2 ops forward, 3 backward) |
//! | [`softmax_rows`] | the causal `mask_fill` and `softmax` of attention (6 ops forward) |
//! | [`rmsnorm`] | `x / sqrt(mean(x²) + ε) · w` (6 ops forward) |
//! | [`layernorm`] | `(x − mean) / sqrt(var + ε) · w + b` (9 ops forward) |
//! | [`rope`] | rotate-half RoPE: 4 slices, 6 products and sums, a concatenation |
//! | [`attention`] | the scale, `q·kᵀ`, the mask, the softmax, `p·v`, and the head split and merge copies |
//! | [`linear`] | a reshape, `matmul` and a bias add (with transposed copies in the backward pass) |
//! | [`selective_scan`] | Mamba's scan: 7 small tensor ops per position, positions in sequence |
//! | [`lstm`] | the LSTM recurrence: a product and 11 tensor ops per position, positions in sequence |
//! | [`slstm`] | xLSTM's sLSTM recurrence: 2 products and ~20 tensor ops per position |
//! | [`mlstm`] | xLSTM's mLSTM cells: ~25 tensor ops over `[b, H, s, s]` matrices |
//! | [`adamw`] | the trainer's 12 tensor ops per parameter |
//!
//! Each kernel runs only on f32 flex tensors, plain or under `Autodiff<Flex>` without gradient
//! checkpointing; anything else (a GPU backend, another dtype) takes the plain Burn path, which
//! is also what [`set_enabled`]`(false)` selects. Burn's `extension` feature is what gives access
//! to the backend tensor inside a [`Tensor`]. `tests/fused.rs` checks every kernel against
//! the plain path, values and gradients; `kiln bench --unfused` measures the difference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::Autodiff;
use burn::backend::{
    BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex,
    GradientCheckpointingStrategy,
};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use kiln_kernels::{exp, log_sigmoid, tanh, Visible};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the fused kernels on or off for the whole process (on by default). Off, every op takes
/// the plain Burn path; the equivalence tests and `kiln bench --unfused` use this.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Reaching the flex tensor inside a dispatch tensor.

/// A tensor as the kernels see it.
enum Lane<const D: usize> {
    /// A plain flex tensor (no autodiff).
    Plain(FlexTensor),
    /// A flex tensor under autodiff without checkpointing, with its autodiff context.
    Tracked(FloatTensor<Autodiff<Flex>>, DispatchAutodiffContext),
    /// Anything else: the caller takes the plain path.
    Other(Tensor<D>),
}

fn lane<const D: usize>(t: Tensor<D>) -> Lane<D> {
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

fn back<const D: usize>(l: Lane<D>) -> Tensor<D> {
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
fn dense(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

/// The elements of a dense tensor.
fn values(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[..t.layout().num_elements()]
}

fn shape_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Registers `op` with Burn's autodiff over the inputs `nodes` and returns its output.
/// `forward(keep)` computes the output and, when `keep` (some input wants a gradient), the
/// state `op`'s backward pass reads.
fn record<Op: Backward<Flex, N>, const N: usize>(
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

// ---------------------------------------------------------------------------------------------
// SiLU.

#[derive(Debug)]
struct SiluBackward;

impl Backward<Flex, 1> for SiluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let x = ops.state;
            let mut dx = vec![0.0f32; values(&x).len()];
            k::silu_backward(values(&x), values(&g), &mut dx);
            grads.register::<Flex>(node.id, tensor(dx, shape_of(&x)));
        }
    }
}

fn silu_forward(x: &FlexTensor) -> FlexTensor {
    let mut y = vec![0.0f32; values(x).len()];
    k::silu(values(x), &mut y);
    tensor(y, shape_of(x))
}

/// SiLU, `x · sigmoid(x)`, elementwise.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match lane(x) {
        Lane::Plain(x) => back::<D>(Lane::Plain(silu_forward(&dense(x)))),
        Lane::Tracked(x, ctx) => {
            let out = record(SiluBackward, [x.node()], |keep| {
                let xs = dense(x.primitive().clone());
                (silu_forward(&xs), keep.then_some(xs))
            });
            back::<D>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => activation::silu(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Row softmax with a causal limit.

/// Columns and rows per matrix of a `[.., rows, t]` tensor.
fn rows_cols(t: &FlexTensor) -> (usize, usize) {
    let s = shape_of(t);
    (s[s.len() - 1], s[s.len() - 2])
}

fn softmax_forward(x: &FlexTensor, vis: Visible) -> FlexTensor {
    let (t, rows) = rows_cols(x);
    let mut y = vec![0.0f32; values(x).len()];
    k::softmax_rows(values(x), t, rows, vis, &mut y);
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
            grads.register::<Flex>(node.id, tensor(dx, shape_of(&y)));
        }
    }
}

/// Softmax over the last axis of scores `[b, h, R, t]`, each row over the keys `vis` lets it
/// see; the others get probability 0 (exactly what `mask_fill(−∞)` and `softmax` give).
pub fn softmax_rows(scores: Tensor<4>, vis: Visible) -> Tensor<4> {
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
        Lane::Other(x) => softmax_plain(x, vis),
    }
}

/// The plain Burn path of [`softmax_rows`].
pub fn softmax_plain(scores: Tensor<4>, vis: Visible) -> Tensor<4> {
    activation::softmax(softmax_plain_mask(scores, vis), 3)
}

/// The scores with −∞ where `vis` hides a key (for the attention variants that read the masked
/// scores themselves: hard and adaptive attention).
pub fn softmax_plain_mask(scores: Tensor<4>, vis: Visible) -> Tensor<4> {
    if !vis.causal {
        return scores;
    }
    let [b, h, r, t] = scores.dims();
    let s = vis.queries;
    let mask = Tensor::<2, Bool>::tril_mask([s, t], vis.offset as i64, &scores.device());
    let mask = mask
        .unsqueeze_dim::<3>(0)
        .repeat_dim(0, r / s)
        .reshape([1, 1, r, t]);
    scores.mask_fill(mask.expand([b, h, r, t]), f32::NEG_INFINITY)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm and LayerNorm.

/// Normalized rows and each row's (mean, 1/std).
fn norm_forward(
    x: &FlexTensor,
    w: &[f32],
    b: Option<&[f32]>,
    n: k::Norm,
) -> (FlexTensor, Vec<f32>) {
    let xs = values(x);
    let mut y = vec![0.0f32; xs.len()];
    let mut stats = vec![0.0f32; 2 * (xs.len() / w.len().max(1))];
    k::norm(xs, w, b, n, &mut y, &mut stats);
    (tensor(y, shape_of(x)), stats)
}

#[derive(Debug)]
struct NormBackward<const N: usize>(k::Norm);

impl<const N: usize> Backward<Flex, N> for NormBackward<N> {
    /// Input, weight, each row's (mean, 1/std).
    type State = (FlexTensor, FlexTensor, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let (x, w, stats) = ops.state;
        let mut dx = vec![0.0f32; values(&x).len()];
        let flags = (self.0.center, N == 3);
        let (dw, db) = k::norm_backward(values(&x), values(&w), values(&g), &stats, flags, &mut dx);
        let mut parents = ops.parents.into_iter();
        let mut put = |grad: Vec<f32>, shape: Vec<usize>| {
            if let Some(node) = parents.next().flatten() {
                grads.register::<Flex>(node.id, tensor(grad, shape));
            }
        };
        put(dx, shape_of(&x));
        put(dw, shape_of(&w));
        if let Some(db) = db {
            put(db, shape_of(&w));
        }
    }
}

fn norm_tracked<const N: usize>(
    ins: [FloatTensor<Autodiff<Flex>>; N],
    n: k::Norm,
) -> FloatTensor<Autodiff<Flex>> {
    record(
        NormBackward::<N>(n),
        ins.each_ref().map(|t| t.node()),
        |keep| {
            let ins = ins.each_ref().map(|t| dense(t.primitive().clone()));
            let (y, stats) = norm_forward(&ins[0], values(&ins[1]), ins.get(2).map(values), n);
            (
                y,
                keep.then(|| (ins[0].clone(), ins[1].clone(), Arc::new(stats))),
            )
        },
    )
}

/// RMSNorm (`bias` `None`, not `center`) or LayerNorm over the last axis of `[b, s, d]`.
fn norm(x: Tensor<3>, w: Tensor<1>, bias: Option<Tensor<1>>, n: k::Norm) -> Option<Tensor<3>> {
    let out = match (lane(x), lane(w), bias.map(lane)) {
        (Lane::Plain(x), Lane::Plain(w), b) => {
            let b = match b {
                None => None,
                Some(Lane::Plain(b)) => Some(dense(b)),
                Some(_) => return None,
            };
            let w = dense(w);
            let (y, _) = norm_forward(&dense(x), values(&w), b.as_ref().map(values), n);
            back::<3>(Lane::Plain(y))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), None) => {
            back::<3>(Lane::Tracked(norm_tracked([x, w], n), ctx))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), Some(Lane::Tracked(b, _))) => {
            back::<3>(Lane::Tracked(norm_tracked([x, w, b], n), ctx))
        }
        _ => return None,
    };
    Some(out)
}

/// RMSNorm over the last axis of `[b, s, d]`: `x / sqrt(mean(x²) + eps) · w`.
pub fn rmsnorm(x: Tensor<3>, w: Tensor<1>, eps: f64) -> Tensor<3> {
    let n = k::Norm {
        center: false,
        eps: eps as f32,
    };
    let fallback = (x.clone(), w.clone());
    norm(x, w, None, n).unwrap_or_else(|| rmsnorm_plain(fallback.0, fallback.1, eps))
}

/// The plain Burn path of [`rmsnorm`].
pub fn rmsnorm_plain(x: Tensor<3>, w: Tensor<1>, eps: f64) -> Tensor<3> {
    let ms = x.clone().powi_scalar(2).mean_dim(2);
    x / (ms + eps).sqrt() * w.unsqueeze::<3>()
}

/// LayerNorm over the last axis of `[b, s, d]`: `(x − mean) / sqrt(var + eps) · w + b`.
pub fn layernorm(x: Tensor<3>, w: Tensor<1>, b: Tensor<1>, eps: f64) -> Tensor<3> {
    let n = k::Norm {
        center: true,
        eps: eps as f32,
    };
    let fallback = (x.clone(), w.clone(), b.clone());
    norm(x, w, Some(b), n)
        .unwrap_or_else(|| layernorm_plain(fallback.0, fallback.1, fallback.2, eps))
}

/// The plain Burn path of [`layernorm`].
pub fn layernorm_plain(x: Tensor<3>, w: Tensor<1>, b: Tensor<1>, eps: f64) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let xc = x - mean;
    let var = xc.clone().powi_scalar(2).mean_dim(2);
    xc / (var + eps).sqrt() * w.unsqueeze::<3>() + b.unsqueeze::<3>()
}

// ---------------------------------------------------------------------------------------------
// Rotate-half RoPE.

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

/// The table `[s, d/2, 2]` (cos, sin interleaved, as `Op::RopeTable` builds it) as per-position
/// rows of d/2 cosines then d/2 sines.
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
            grads.register::<Flex>(node.id, rope_apply(&g, &ops.state, -1.0));
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
            back::<4>(Lane::Plain(rope_apply(&x, &rows, 1.0)))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(t, _)) => {
            let rows = rope_rows(&dense(t.into_primitive()));
            let out = record(RopeBackward, [x.node()], |keep| {
                let y = rope_apply(x.primitive(), &rows, 1.0);
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

// ---------------------------------------------------------------------------------------------
// Attention.

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
fn viewable(t: FlexTensor) -> FlexTensor {
    if view_parts(&t).is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn view(t: &FlexTensor) -> k::View4<'_> {
    let (off, strides) = view_parts(t).expect("a viewable tensor (see `viewable`)");
    k::View4 {
        data: t.storage::<f32>(),
        off,
        strides,
    }
}

/// `[b, s, h, d]` values presented as `[b, h, s, d]` (a view: no copy).
fn heads_view(v: Vec<f32>, [b, h, s, d]: [usize; 4]) -> FlexTensor {
    tensor(v, vec![b, s, h, d]).permute(&[0, 2, 1, 3])
}

#[derive(Debug)]
struct AttentionBackward;

/// What the backward pass of attention keeps.
#[derive(Clone, Debug)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    p: Arc<Vec<f32>>,
    sh: k::AttnShape,
    scale: f32,
    vis: Visible,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttnState;

    fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let go = viewable(grads.consume::<Flex>(&ops.node));
        let [pq, pk, pv] = ops.parents;
        let st = ops.state;
        let sh = st.sh;
        let mut dq = vec![0.0f32; sh.batch * sh.heads * sh.queries * sh.dim];
        let mut dk = vec![0.0f32; sh.batch * sh.kv_heads * sh.keys * sh.dim];
        let mut dv = dk.clone();
        k::attention_backward(
            (view(&st.q), view(&st.k), view(&st.v), view(&go)),
            &st.p,
            sh,
            st.scale,
            st.vis,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let q_shape = [sh.batch, sh.heads, sh.queries, sh.dim];
        let kv_shape = [sh.batch, sh.kv_heads, sh.keys, sh.dim];
        for (parent, grad, shape) in [(pq, dq, q_shape), (pk, dk, kv_shape), (pv, dv, kv_shape)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, heads_view(grad, shape));
            }
        }
    }
}

fn attention_forward(
    q: &FlexTensor,
    kt: &FlexTensor,
    v: &FlexTensor,
    scale: f32,
    vis: Visible,
) -> (FlexTensor, Vec<f32>, k::AttnShape) {
    let (qs, ks) = (shape_of(q), shape_of(kt));
    let sh = k::AttnShape {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        queries: qs[2],
        keys: ks[2],
        dim: qs[3],
    };
    let mut p = vec![0.0f32; sh.batch * sh.heads * sh.queries * sh.keys];
    let mut o = vec![0.0f32; values_len(&qs)];
    k::attention(view(q), view(kt), view(v), sh, scale, vis, &mut p, &mut o);
    (heads_view(o, [qs[0], qs[1], qs[2], qs[3]]), p, sh)
}

fn values_len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Attention `softmax(scale · q kᵀ) v` of q `[b, h, s, d]` over k and v `[b, h_kv, t, d]`
/// (query head i reads KV head i / (h / h_kv)), each query over the keys `vis` lets it see
/// (`vis.queries` = s). One fused op forward (per batch row, in parallel: per head two matrix
/// products and the softmax, in causal row blocks) and one backward. q, k, v and the output's
/// gradient are read through their strides (the head split's transposed views cost no copy);
/// the output and q's gradient come laid out as `[b, s, h, d]`, so merging and splitting the
/// heads costs no copy either. Equal to [`attention_plain`].
pub fn attention(q: Tensor<4>, kt: Tensor<4>, v: Tensor<4>, scale: f32, vis: Visible) -> Tensor<4> {
    match (lane(q), lane(kt), lane(v)) {
        (Lane::Plain(q), Lane::Plain(kt), Lane::Plain(v)) => {
            let (q, kt, v) = (viewable(q), viewable(kt), viewable(v));
            let (o, _, _) = attention_forward(&q, &kt, &v, scale, vis);
            back::<4>(Lane::Plain(o))
        }
        (Lane::Tracked(q, ctx), Lane::Tracked(kt, _), Lane::Tracked(v, _)) => {
            let nodes = [q.node(), kt.node(), v.node()];
            let out = record(AttentionBackward, nodes, |keep| {
                let (q, k, v) = (
                    viewable(q.primitive().clone()),
                    viewable(kt.primitive().clone()),
                    viewable(v.primitive().clone()),
                );
                let (o, p, sh) = attention_forward(&q, &k, &v, scale, vis);
                let state = keep.then(|| AttnState {
                    q,
                    k,
                    v,
                    p: Arc::new(p),
                    sh,
                    scale,
                    vis,
                });
                (o, state)
            });
            back::<4>(Lane::Tracked(out, ctx))
        }
        (q, kt, v) => attention_plain(back(q), back(kt), back(v), scale, vis),
    }
}

/// The plain Burn path of [`attention`]: the G query heads of a KV head stacked as G·s rows of
/// one product, the mask, the softmax, the product with v.
pub fn attention_plain(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let hk = kt.dims()[1];
    let q = q.mul_scalar(scale).reshape([b, hk, (h / hk) * s, d]);
    softmax_plain(q.matmul(kt.swap_dims(2, 3)), vis)
        .matmul(v)
        .reshape([b, h, s, d])
}

// ---------------------------------------------------------------------------------------------
// Linear maps.

/// The backward pass of a linear map with N inputs: x, w, and the bias when N = 3.
#[derive(Debug)]
struct LinearBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LinearBackward<N> {
    /// x `[n, i]`, w `[i, o]`, the shape of x.
    type State = (FlexTensor, FlexTensor, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let (x, w, x_shape) = ops.state;
        let (ws, n) = (shape_of(&w), values(&x).len() / shape_of(&w)[0].max(1));
        let want = [0, 1, 2].map(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let [dx, dw, db] =
            k::linear_backward(values(&x), values(&w), values(&g), (n, ws[0], ws[1]), want);
        let grads_of = [
            dx.map(|d| tensor(d, x_shape)),
            dw.map(|d| tensor(d, ws.clone())),
            db.map(|d| tensor(d, vec![ws[1]])),
        ];
        for (parent, grad) in ops.parents.into_iter().zip(grads_of) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `x [b, s, i] · w [i, o] (+ bias [o])` as one `[b·s, i] × [i, o]` product into a buffer that
/// is not zeroed first, the bias folded into the product, and a backward pass of two products
/// that read the transposes in place (no transposed copies).
fn linear_forward(x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let (xs, ws) = (shape_of(x), shape_of(w));
    let (i, o) = (ws[0], ws[1]);
    let n = values(x).len() / i.max(1);
    let y = k::linear(values(x), values(w), bias.map(values), n, i, o);
    let mut shape = xs;
    *shape.last_mut().expect("x has an axis") = o;
    tensor(y, shape)
}

fn linear_tracked<const N: usize>(
    ins: [FloatTensor<Autodiff<Flex>>; N],
) -> FloatTensor<Autodiff<Flex>> {
    record(
        LinearBackward::<N>,
        ins.each_ref().map(|t| t.node()),
        |keep| {
            let ins = ins.each_ref().map(|t| dense(t.primitive().clone()));
            let (x, w) = (&ins[0], &ins[1]);
            let y = linear_forward(x, w, ins.get(2));
            (y, keep.then(|| (x.clone(), w.clone(), shape_of(x))))
        },
    )
}

/// A linear map `x [b, s, i] · w [i, o] (+ bias [o])`.
pub fn linear(x: Tensor<3>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let bias = bias.map(lane);
    match (lane(x), lane(w), bias) {
        (Lane::Plain(x), Lane::Plain(w), None) => {
            back::<3>(Lane::Plain(linear_forward(&dense(x), &dense(w), None)))
        }
        (Lane::Plain(x), Lane::Plain(w), Some(Lane::Plain(b))) => {
            let b = dense(b);
            back::<3>(Lane::Plain(linear_forward(&dense(x), &dense(w), Some(&b))))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), None) => {
            back::<3>(Lane::Tracked(linear_tracked([x, w]), ctx))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), Some(Lane::Tracked(b, _))) => {
            back::<3>(Lane::Tracked(linear_tracked([x, w, b]), ctx))
        }
        (x, w, b) => linear_plain(back(x), back(w), b.map(back)),
    }
}

/// The plain Burn path of [`linear`].
pub fn linear_plain(x: Tensor<3>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let [b, s, i] = x.dims();
    let o = w.dims()[1];
    let y = x.reshape([b * s, i]).matmul(w).reshape([b, s, o]);
    match bias {
        Some(bias) => y + bias.unsqueeze::<3>(),
        None => y,
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW.

pub use kiln_kernels::AdamW;

/// One AdamW step of a flat parameter `p` with gradient `g` and moments `m`, `v` (all plain
/// tensors of one length): returns the new parameter and moments. One pass over the four
/// vectors instead of twelve tensor ops; parameter and moments are updated in place when
/// nothing else holds them (copied first otherwise).
pub fn adamw(p: Tensor<1>, g: Tensor<1>, m: Tensor<1>, v: Tensor<1>, h: &AdamW) -> [Tensor<1>; 3] {
    match (lane(p), lane(g), lane(m), lane(v)) {
        (Lane::Plain(p), Lane::Plain(g), Lane::Plain(m), Lane::Plain(v)) => {
            let (mut p, g, mut m, mut v) = (dense(p), dense(g), dense(m), dense(v));
            let n = values(&g).len();
            k::adamw(
                &mut p.storage_mut::<f32>()[..n],
                values(&g),
                &mut m.storage_mut::<f32>()[..n],
                &mut v.storage_mut::<f32>()[..n],
                *h,
            );
            [p, m, v].map(|x| back::<1>(Lane::Plain(x)))
        }
        (p, g, m, v) => adamw_plain(back(p), back(g), back(m), back(v), h),
    }
}

/// The plain Burn path of [`adamw`].
pub fn adamw_plain(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    h: &AdamW,
) -> [Tensor<1>; 3] {
    let g = if h.clip < 1.0 {
        g.mul_scalar(h.clip)
    } else {
        g
    };
    let p = if h.decay < 1.0 {
        p.mul_scalar(h.decay)
    } else {
        p
    };
    let m = m.mul_scalar(h.beta1) + g.clone().mul_scalar(1.0 - h.beta1);
    let v = v.mul_scalar(h.beta2) + g.powi_scalar(2).mul_scalar(1.0 - h.beta2);
    let update = m.clone().div_scalar(h.bc1) / (v.clone().div_scalar(h.bc2).sqrt() + h.eps);
    [p - update.mul_scalar(h.lr), m, v]
}

// ---------------------------------------------------------------------------------------------
// Mamba's selective scan.

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

// ---------------------------------------------------------------------------------------------
// The LSTM recurrence.

#[derive(Debug)]
struct LstmBackward;

/// What the LSTM's backward pass keeps: w_hh, the initial state, the gate activations, every
/// cell and every output.
#[derive(Clone, Debug)]
struct LstmKept {
    w_hh: FlexTensor,
    h0: FlexTensor,
    c0: FlexTensor,
    acts: Arc<Vec<f32>>,
    cells: Arc<Vec<f32>>,
    y: FlexTensor,
    sh: k::LstmShape,
}

impl Backward<Flex, 2> for LstmBackward {
    type State = LstmKept;

    fn backward(self, ops: Ops<LstmKept, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let kept = (&st.acts[..], &st.cells[..], values(&st.y));
        let [dxw, dw] = k::lstm_backward(
            values(&st.w_hh),
            st.sh,
            (values(&st.h0), values(&st.c0)),
            kept,
            values(&gy),
        );
        let [pxw, pw] = ops.parents;
        let (b, s, w) = (st.sh.batch, st.sh.len, st.sh.hidden);
        if let Some(node) = pxw {
            grads.register::<Flex>(node.id, tensor(dxw, vec![b, s, 4 * w]));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, tensor(dw, vec![w, 4 * w]));
        }
    }
}

/// What one run of the LSTM kernel gives: y, the final h and c, and (when kept) the gate
/// activations and cells.
struct LstmRun {
    y: FlexTensor,
    h: FlexTensor,
    c: FlexTensor,
    acts: Vec<f32>,
    cells: Vec<f32>,
}

fn lstm_forward(
    xw: &FlexTensor,
    w_hh: &FlexTensor,
    h0: &[f32],
    c0: &[f32],
    keep: bool,
) -> (LstmRun, k::LstmShape) {
    let xs = shape_of(xw);
    let sh = k::LstmShape {
        batch: xs[0],
        len: xs[1],
        hidden: xs[2] / 4,
    };
    let (b, s, w) = (sh.batch, sh.len, sh.hidden);
    let (mut h, mut c) = (h0.to_vec(), c0.to_vec());
    let mut y = vec![0.0f32; b * s * w];
    let (mut acts, mut cells) = if keep {
        (vec![0.0f32; b * s * 4 * w], vec![0.0f32; b * s * w])
    } else {
        (Vec::new(), Vec::new())
    };
    k::lstm(
        values(xw),
        values(w_hh),
        sh,
        (&mut h, &mut c),
        &mut y,
        keep.then_some((&mut acts[..], &mut cells[..])),
    );
    let run = LstmRun {
        y: tensor(y, vec![b, s, w]),
        h: tensor(h, vec![b, w]),
        c: tensor(c, vec![b, w]),
        acts,
        cells,
    };
    (run, sh)
}

/// Whether a gradient can flow into `t`: a leaf that requires one, or a tensor computed from one.
fn needs_grad<const D: usize>(t: &Tensor<D>) -> bool {
    t.is_require_grad() || t.is_tracked()
}

/// The values of a constant (non-differentiable) f32 flex tensor, or `None` for anything else.
fn constant_values<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if needs_grad(t) {
        return None;
    }
    match lane(t.clone()) {
        Lane::Plain(x) => Some(dense(x)),
        Lane::Tracked(x, _) => Some(dense(x.into_primitive())),
        Lane::Other(_) => None,
    }
}

/// The LSTM recurrence over the gate pre-activations of the input `xw` `[b, s, 4h]` (input
/// projection plus both biases; gates i, f, g, o) with the recurrent weight `w_hh` `[h, 4h]`,
/// from the state `(h0, c0)` `[b, h]`: per position `gates = xw_t + h · w_hh`,
/// `c ← σ(f) c + σ(i) tanh(g)`, `h ← σ(o) tanh(c)`. Returns every h `[b, s, h]` and the final
/// `(h, c)`. One fused op forward (per block of batch rows in parallel, one small product per
/// position) and one backward pass through time. The initial state is a constant (one that
/// requires a gradient takes the plain path); the final c carries no gradient (it only feeds
/// the next decoding call, which runs without autodiff), the final h is y's last position.
/// Equal to [`lstm_plain`] with a plain product.
pub fn lstm(
    xw: Tensor<3>,
    w_hh: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> (Tensor<3>, Tensor<2>, Tensor<2>) {
    let plain = |xw, w_hh, h0, c0| lstm_plain(xw, w_hh, h0, c0, |a, b| a.matmul(b));
    let (Some(h0v), Some(c0v)) = (constant_values(&h0), constant_values(&c0)) else {
        return plain(xw, w_hh, h0, c0);
    };
    let [b, s, _] = xw.dims();
    match (lane(xw), lane(w_hh)) {
        (Lane::Plain(xw), Lane::Plain(w_hh)) => {
            let (run, _) =
                lstm_forward(&dense(xw), &dense(w_hh), values(&h0v), values(&c0v), false);
            let y = back::<3>(Lane::Plain(run.y));
            (
                y,
                back::<2>(Lane::Plain(run.h)),
                back::<2>(Lane::Plain(run.c)),
            )
        }
        (Lane::Tracked(xw, ctx), Lane::Tracked(w_hh, _)) => {
            let mut c_final = None;
            let nodes = [xw.node(), w_hh.node()];
            let out = record(LstmBackward, nodes, |keep| {
                let (xw, w_hh) = (
                    dense(xw.primitive().clone()),
                    dense(w_hh.primitive().clone()),
                );
                let (run, sh) = lstm_forward(&xw, &w_hh, values(&h0v), values(&c0v), keep);
                c_final = Some(run.c);
                let kept = keep.then(|| LstmKept {
                    w_hh,
                    h0: h0v.clone(),
                    c0: c0v.clone(),
                    acts: Arc::new(run.acts),
                    cells: Arc::new(run.cells),
                    y: run.y.clone(),
                    sh,
                });
                (run.y, kept)
            });
            let y = back::<3>(Lane::Tracked(out, ctx));
            let h = y.clone().narrow(1, s - 1, 1).reshape([b, y.dims()[2]]);
            let c = back::<2>(Lane::Plain(c_final.expect("the recurrence ran"))).autodiff();
            (y, h, c)
        }
        (xw, w_hh) => plain(back(xw), back(w_hh), h0, c0),
    }
}

/// The plain Burn path of [`lstm`], position by position, with `mm` for the recurrent product
/// (the runtime passes its mixed-precision product).
pub fn lstm_plain(
    xw: Tensor<3>,
    w_hh: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
    mm: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> (Tensor<3>, Tensor<2>, Tensor<2>) {
    let [b, s, g] = xw.dims();
    let h = g / 4;
    let (mut hs, mut cs) = (h0, c0);
    let mut outs = Vec::with_capacity(s);
    for t in 0..s {
        let gates = xw.clone().narrow(1, t, 1).reshape([b, 4 * h]) + mm(hs, w_hh.clone());
        let i = activation::sigmoid(gates.clone().narrow(1, 0, h));
        let f = activation::sigmoid(gates.clone().narrow(1, h, h));
        let gg = gates.clone().narrow(1, 2 * h, h).tanh();
        let o = activation::sigmoid(gates.narrow(1, 3 * h, h));
        cs = f * cs + i * gg;
        hs = o * cs.clone().tanh();
        outs.push(hs.clone());
    }
    (Tensor::stack(outs, 1), hs, cs)
}

// ---------------------------------------------------------------------------------------------
// xLSTM's sLSTM recurrence.

#[derive(Debug)]
struct SlstmBackward;

/// What the sLSTM's backward pass keeps: r, the initial c, n and h, the kernel's per-position
/// values and every output.
#[derive(Clone, Debug)]
struct SlstmKept {
    r: FlexTensor,
    init: Arc<[Vec<f32>; 3]>,
    kept: Arc<Vec<f32>>,
    y: FlexTensor,
    sh: k::SlstmShape,
}

impl Backward<Flex, 2> for SlstmBackward {
    type State = SlstmKept;

    fn backward(self, ops: Ops<SlstmKept, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let [c0, n0, h0] = &*st.init;
        let [dxw, dr] = k::slstm_backward(
            values(&st.r),
            st.sh,
            (c0, n0, h0),
            (&st.kept, values(&st.y)),
            values(&gy),
        );
        let k::SlstmShape {
            batch,
            len,
            heads,
            head_dim,
        } = st.sh;
        let [pxw, pr] = ops.parents;
        if let Some(node) = pxw {
            let shape = vec![batch, len, 4 * heads * head_dim];
            grads.register::<Flex>(node.id, tensor(dxw, shape));
        }
        if let Some(node) = pr {
            grads.register::<Flex>(node.id, tensor(dr, shape_of(&st.r)));
        }
    }
}

/// Runs the sLSTM kernel from the state `init` (c, n, m, h as `[b, H, dh]` values); returns
/// y, the final state and (when `keep`) the kernel's kept values.
fn slstm_forward(
    xw: &FlexTensor,
    r: &FlexTensor,
    init: &[Vec<f32>; 4],
    keep: bool,
) -> (FlexTensor, [Vec<f32>; 4], Vec<f32>, k::SlstmShape) {
    let (xs, rs) = (shape_of(xw), shape_of(r));
    let sh = k::SlstmShape {
        batch: xs[0],
        len: xs[1],
        heads: rs[0],
        head_dim: rs[1],
    };
    let d = sh.heads * sh.head_dim;
    let mut st = init.clone();
    let mut y = vec![0.0f32; sh.batch * sh.len * d];
    let mut kept = if keep {
        vec![0.0f32; sh.batch * sh.len * d * 7]
    } else {
        Vec::new()
    };
    let [c, n, m, h] = &mut st;
    k::slstm(
        values(xw),
        values(r),
        sh,
        [c, n, m, h],
        &mut y,
        keep.then_some(&mut kept[..]),
    );
    (tensor(y, vec![sh.batch, sh.len, d]), st, kept, sh)
}

/// xLSTM's sLSTM recurrence over the input pre-activations `xw` `[b, s, 4d]` (projection plus
/// bias; gate-major: z̃, ĩ, f̃, õ, each `[heads, dh]`) with the block-diagonal recurrent
/// weights `r` `[heads, dh, 4 dh]`, from `state` (c, n, m, h, each `[b, heads, 1, dh]`): see
/// `kiln_kernels::slstm` for the arithmetic (the paper's stabilized form). Returns every h
/// `[b, s, d]` and the final state. One fused op forward (per block of batch rows in parallel)
/// and one backward pass through time. The initial state is a constant (one that requires a
/// gradient takes the plain path); of the final state only h carries a gradient (it is y's
/// last position). Equal to [`slstm_plain`] with a plain product.
pub fn slstm(xw: Tensor<3>, r: Tensor<3>, state: [Tensor<4>; 4]) -> (Tensor<3>, [Tensor<4>; 4]) {
    let plain = |xw, r, state| slstm_plain(xw, r, state, |a, b| a.matmul(b));
    let Some(init) = state
        .iter()
        .map(|t| constant_values(t).map(|v| values(&v).to_vec()))
        .collect::<Option<Vec<_>>>()
    else {
        return plain(xw, r, state);
    };
    let init: [Vec<f32>; 4] = init.try_into().expect("four state tensors");
    let [b, s, _] = xw.dims();
    let [nh, dh, _] = r.dims();
    let st_tensor = |v: Vec<f32>| back::<4>(Lane::Plain(tensor(v, vec![b, nh, 1, dh])));
    match (lane(xw), lane(r)) {
        (Lane::Plain(xw), Lane::Plain(r)) => {
            let (y, st, _, _) = slstm_forward(&dense(xw), &dense(r), &init, false);
            (back::<3>(Lane::Plain(y)), st.map(st_tensor))
        }
        (Lane::Tracked(xw, ctx), Lane::Tracked(r, _)) => {
            let mut fin = None;
            let nodes = [xw.node(), r.node()];
            let out = record(SlstmBackward, nodes, |keep| {
                let (xw, r) = (dense(xw.primitive().clone()), dense(r.primitive().clone()));
                let (y, st, kept, sh) = slstm_forward(&xw, &r, &init, keep);
                fin = Some(st);
                let [c0, n0, _, h0] = init.clone();
                let kept = keep.then(|| SlstmKept {
                    r,
                    init: Arc::new([c0, n0, h0]),
                    kept: Arc::new(kept),
                    y: y.clone(),
                    sh,
                });
                (y, kept)
            });
            let y = back::<3>(Lane::Tracked(out, ctx));
            let [c, n, m, _] = fin
                .expect("the recurrence ran")
                .map(|v| st_tensor(v).autodiff());
            let h = y.clone().narrow(1, s - 1, 1).reshape([b, nh, 1, dh]);
            (y, [c, n, m, h])
        }
        (xw, r) => plain(back(xw), back(r), state),
    }
}

/// The plain Burn path of [`slstm`], position by position, with `mm` for the recurrent product
/// (the runtime passes its mixed-precision product).
pub fn slstm_plain(
    xw: Tensor<3>,
    r: Tensor<3>,
    state: [Tensor<4>; 4],
    mm: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> (Tensor<3>, [Tensor<4>; 4]) {
    let [b, s, d4] = xw.dims();
    let [h, dh, _] = r.dims();
    let d = d4 / 4;
    // Per step [b, H, 1, 4·dh] with gate g of head hd at g·dh + j (r's column order).
    let pre_x = xw
        .reshape([b, s, 4, h, dh])
        .permute([0, 3, 1, 2, 4])
        .reshape([b, h, s, 4 * dh]);
    let r = r.unsqueeze::<4>(); // [1, H, dh, 4dh]
    let mut st = state;
    let mut ys = Vec::with_capacity(s);
    for t in 0..s {
        let [c, n, m, hp] = st;
        let pre = pre_x.clone().narrow(2, t, 1) + mm(hp, r.clone());
        let gate = |g: usize| pre.clone().narrow(3, g * dh, dh);
        let (z, i_pre, logf, o) = (
            gate(0).tanh(),
            gate(1),
            activation::log_sigmoid(gate(2)),
            activation::sigmoid(gate(3)),
        );
        let m_new = (logf.clone() + m.clone()).max_pair(i_pre.clone());
        let i = (i_pre - m_new.clone()).exp();
        let f = (logf + m - m_new.clone()).exp();
        let c = f.clone() * c + i.clone() * z;
        let n = f * n + i;
        let hn = o * c.clone() / n.clone();
        ys.push(hn.clone());
        st = [c, n, m_new, hn];
    }
    let y = Tensor::cat(ys, 2).swap_dims(1, 2).reshape([b, s, d]);
    (y, st)
}

// ---------------------------------------------------------------------------------------------
// xLSTM's mLSTM cells.

#[derive(Debug)]
struct MlstmBackward;

/// What the mLSTM's backward pass keeps: q, k, v, ĩ, ln f (it recomputes the rest).
#[derive(Clone, Debug)]
struct MlstmKept {
    ins: [FlexTensor; 5],
    sh: k::MlstmShape,
}

impl Backward<Flex, 5> for MlstmBackward {
    type State = MlstmKept;

    fn backward(self, ops: Ops<MlstmKept, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let v = st.ins.each_ref().map(values);
        let g = k::mlstm_backward((v[0], v[1], v[2]), (v[3], v[4]), st.sh, values(&gy));
        for ((parent, grad), like) in ops.parents.into_iter().zip(g).zip(&st.ins) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, shape_of(like)));
            }
        }
    }
}

/// Runs the mLSTM kernel; returns h `[b, s, d]` and the final C, n, m.
fn mlstm_forward(ins: &[FlexTensor; 5]) -> (FlexTensor, [FlexTensor; 3], k::MlstmShape) {
    let qs = shape_of(&ins[0]);
    let sh = k::MlstmShape {
        batch: qs[0],
        heads: qs[1],
        len: qs[2],
        head_dim: qs[3],
    };
    let (b, nh, s, w) = (sh.batch, sh.heads, sh.len, sh.head_dim);
    let v = ins.each_ref().map(values);
    let mut y = vec![0.0f32; b * s * nh * w];
    let (mut c, mut n, mut m) = (
        vec![0.0f32; b * nh * w * w],
        vec![0.0f32; b * nh * w],
        vec![0.0f32; b * nh],
    );
    k::mlstm(
        (v[0], v[1], v[2]),
        (v[3], v[4]),
        sh,
        &mut y,
        (&mut c, &mut n, &mut m),
    );
    let fin = [
        tensor(c, vec![b, nh, w, w]),
        tensor(n, vec![b, nh, 1, w]),
        tensor(m, vec![b, nh, 1, 1]),
    ];
    (tensor(y, vec![b, s, nh * w]), fin, sh)
}

/// xLSTM's mLSTM cells from a zero memory, in the stabilized parallel form: q, k, v
/// `[b, H, s, dh]` (k already scaled by 1/√dh), the input gate pre-activations ĩ and ln f
/// (ln σ of the forget gate's) `[b, H, s]`. Returns every h merged over the heads `[b, s, d]`
/// and the memory after the last position (C `[b, H, dh, dh]`, n `[b, H, 1, dh]`, m
/// `[b, H, 1, 1]`, without gradients: only decoding reads them). One fused op per (batch row,
/// head) forward and backward (which recomputes the s × s matrices instead of keeping them).
/// Equal to [`mlstm_plain`] from no initial state with a plain product.
pub fn mlstm(qkv: [Tensor<4>; 3], gates: [Tensor<3>; 2]) -> (Tensor<3>, [Tensor<4>; 3]) {
    let plain = |qkv, gates| mlstm_plain(qkv, gates, None, |a, b| a.matmul(b));
    let [q, k, v] = qkv;
    let [ig, logf] = gates;
    let lanes = ([q, k, v].map(lane), [ig, logf].map(lane));
    let fin_tensors = |fin: [FlexTensor; 3]| fin.map(|t| back::<4>(Lane::Plain(t)));
    match lanes {
        ([Lane::Plain(q), Lane::Plain(k), Lane::Plain(v)], [Lane::Plain(ig), Lane::Plain(lf)]) => {
            let ins = [q, k, v, ig, lf].map(dense);
            let (y, fin, _) = mlstm_forward(&ins);
            (back::<3>(Lane::Plain(y)), fin_tensors(fin))
        }
        (
            [Lane::Tracked(q, ctx), Lane::Tracked(k, _), Lane::Tracked(v, _)],
            [Lane::Tracked(ig, _), Lane::Tracked(lf, _)],
        ) => {
            let tracked = [q, k, v, ig, lf];
            let mut fin = None;
            let out = record(
                MlstmBackward,
                tracked.each_ref().map(|t| t.node()),
                |keep| {
                    let ins = tracked.each_ref().map(|t| dense(t.primitive().clone()));
                    let (y, f, sh) = mlstm_forward(&ins);
                    fin = Some(f);
                    (y, keep.then_some(MlstmKept { ins, sh }))
                },
            );
            let fin = fin_tensors(fin.expect("the cells ran")).map(|t| t.autodiff());
            (back::<3>(Lane::Tracked(out, ctx)), fin)
        }
        ([q, k, v], [ig, lf]) => plain([q, k, v].map(back), [ig, lf].map(back)),
    }
}

/// The plain Burn path of [`mlstm`], continuing from `init` (C, n, m; a zero memory when
/// `None`), with `mm` for the products (the runtime passes its mixed-precision product).
/// F_t = Σ_{u≤t} ln f_u; position t weighs the carried memory by e^{F_t + m₀} and position
/// s ≤ t by e^{F_t − F_s + ĩ_s}, all divided by e^{m_t} where m_t is the largest of these
/// exponents, so nothing overflows; m_t cancels in the result, so it is held constant for the
/// gradient.
pub fn mlstm_plain(
    [q, k, v]: [Tensor<4>; 3],
    [ig, logf]: [Tensor<3>; 2],
    init: Option<[Tensor<4>; 3]>,
    mm: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> (Tensor<3>, [Tensor<4>; 3]) {
    let [b, h, s, dh] = q.dims();
    let device = q.device();
    let ig = ig.unsqueeze_dim::<4>(3); // [b, H, s, 1]
    let f_cum = logf.cumsum(2).unsqueeze_dim::<4>(3);
    let [c0, n0, m0] = init.unwrap_or_else(|| {
        [
            Tensor::zeros([b, h, dh, dh], &device),
            Tensor::zeros([b, h, 1, dh], &device),
            Tensor::zeros([b, h, 1, 1], &device),
        ]
    });
    let a = f_cum.clone() + m0;
    let future = Tensor::<2, Bool>::tril_mask([s, s], 0, &device);
    let logd = (f_cum.clone() - (f_cum - ig).swap_dims(2, 3)).mask_fill(
        future.unsqueeze::<4>().expand([b, h, s, s]),
        f32::NEG_INFINITY,
    );
    let m = a.clone().max_pair(logd.clone().max_dim(3)).detach();
    let dmat = (logd.clone() - m.clone()).exp();
    let scores = mm(q.clone(), k.clone().swap_dims(2, 3)) * dmat;
    let wa = (a.clone() - m.clone()).exp();
    let num =
        mm(scores.clone(), v.clone()) + wa.clone() * mm(q.clone(), c0.clone().swap_dims(2, 3));
    let den = scores.sum_dim(3) + wa * (q * n0.clone()).sum_dim(3);
    let hid = num / den.abs().max_pair(m.clone().neg().exp());
    let hcat = hid.swap_dims(1, 2).reshape([b, s, h * dh]);
    // The memory after the last position.
    let last = |t: Tensor<4>| t.narrow(2, s - 1, 1);
    let (a_l, m_l) = (last(a), last(m));
    let w = (last(logd) - m_l.clone()).exp(); // [b, H, 1, s]
    let carry = (a_l - m_l.clone()).exp();
    let c_new = carry.clone() * c0 + mm((v * w.clone().swap_dims(2, 3)).swap_dims(2, 3), k.clone());
    let n_new = carry * n0 + mm(w, k);
    (hcat, [c_new, n_new, m_l])
}
