//! [`Case`]: an op, inputs for it, and the checks every op family runs on itself.

use super::{concat, ctx, host, host_tensor, narrow, Arg};
use crate::ir::{Mixing, TensorType};
use crate::ops::{OpDef, OpState, RefTensor};
use crate::runtime::ops::Ctx;
use crate::runtime::{DeviceKind, V};
use burn::prelude::*;

/// An op, inputs for it, and where its output's positions are: the checks every op family
/// runs on itself.
pub struct Case<'a, O> {
    /// The op.
    pub op: &'a O,
    /// Its inputs, in port order.
    pub args: Vec<Arg>,
    /// The output's position axis (`None` for ops whose output has none).
    pub out_seq: Option<usize>,
    /// Relative tolerance of the comparisons with the reference and of decoding.
    pub tol: f64,
}

impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    pub(super) fn batch_seq(&self) -> (usize, usize) {
        let a = self.args.iter().find(|a| a.seq.is_some());
        a.map_or((1, 1), |a| (a.t.shape[0], a.t.shape[a.seq.unwrap_or(0)]))
    }

    /// The Burn forward on `args`, from position `offset`.
    pub(super) fn forward(&self, args: &[Arg], offset: usize, device: &Device) -> RefTensor {
        let vs: Vec<V> = args.iter().map(|a| a.value(device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let (b, s) = self.batch_seq();
        let c = Ctx {
            offset,
            ..ctx(device, b, s)
        };
        host_tensor(self.op.forward(&refs, &c))
    }

    /// The inputs at positions `at..at + len` (those without positions whole).
    pub(super) fn positions(&self, at: usize, len: usize) -> Vec<Arg> {
        positions(&self.args, at, len)
    }

    pub(super) fn assert_close(&self, what: &str, got: &RefTensor, want: &RefTensor) {
        assert_eq!(got.shape, want.shape, "{:?}: {what}: shapes", self.op);
        for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
            assert!(
                (g - w).abs() <= self.tol * (1.0 + w.abs()),
                "{:?}: {what}: element {i}: {g} vs {w}",
                self.op
            );
        }
    }

    /// The inferred output type has the forward's shape (batch and sequence resolved).
    pub fn infers_the_forward_shape(&self) {
        let tys: Vec<TensorType> = self.args.iter().map(Arg::ty).collect();
        let (b, s) = self.batch_seq();
        self.infers_the_forward_shape_from(&tys, b, s);
    }

    /// [`Case::infers_the_forward_shape`] from input types `tys` instead of the arguments'
    /// own, with the output's `batch` and `seq` (inputs whose position axis is not the plain
    /// sequence: a memory body's `seq + m`).
    pub fn infers_the_forward_shape_from(&self, tys: &[TensorType], batch: usize, seq: usize) {
        let ty = self
            .op
            .infer(tys)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.op));
        let want: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| d.value(batch as u64, seq as u64) as usize)
            .collect();
        let device = DeviceKind::Cpu.device(false);
        assert_eq!(
            self.forward(&self.args, 0, &device).shape,
            want,
            "{:?}: inferred {ty}",
            self.op
        );
    }

    /// The Burn forward agrees with the float64 reference.
    pub fn matches_the_reference(&self) {
        let device = DeviceKind::Cpu.device(false);
        let ins: Vec<&RefTensor> = self.args.iter().map(|a| &a.t).collect();
        let want = self
            .op
            .reference(&ins)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.op));
        let got = self.forward(&self.args, 0, &device);
        self.assert_close("forward vs reference", &got, &want);
    }

    /// Every float input except those named in `skip` gets a finite, nonzero gradient.
    pub fn gradients_reach_every_input(&self, skip: &[&str]) {
        self.gradients_under(false, None, skip, "");
    }

    /// The gradient check in training mode (`train`) or under a frequency mask; `when` ends
    /// its failure messages.
    pub(super) fn gradients_under(
        &self,
        train: bool,
        freq_mask: Option<crate::ir::FreqCutoff>,
        skip: &[&str],
        when: &str,
    ) {
        let device = DeviceKind::Cpu.device(true);
        let vs: Vec<V> = self
            .args
            .iter()
            .map(|a| {
                let v = a.value(&device);
                if a.ids {
                    v
                } else {
                    v.require_grad()
                }
            })
            .collect();
        let refs: Vec<&V> = vs.iter().collect();
        let (b, s) = self.batch_seq();
        let c = Ctx {
            train,
            freq_mask,
            ..ctx(&device, b, s)
        };
        let y = self.op.forward(&refs, &c).flat();
        // A loss that no normalization makes constant.
        let grads = (y.clone() * y.tanh()).sum().backward();
        for ((name, v), a) in self.op.ports().iter().zip(&vs).zip(&self.args) {
            if a.ids || skip.contains(name) {
                continue;
            }
            let g = v
                .grad(&grads)
                .unwrap_or_else(|| panic!("{:?}: no gradient for `{name}`", self.op));
            let g = host(g);
            assert!(g.iter().all(|x| x.is_finite()), "{:?}: `{name}`", self.op);
            assert!(
                g.iter().any(|x| *x != 0.0),
                "{:?}: the gradient of `{name}` is zero{when}",
                self.op
            );
        }
    }

    /// Unless the op mixes all positions, moving the inputs at the last position leaves every
    /// earlier output where it was.
    pub fn later_positions_change_no_earlier_output(&self) {
        if self.op.mixing() == Mixing::Full {
            return;
        }
        let Some(axis) = self.out_seq else { return };
        let device = DeviceKind::Cpu.device(false);
        let whole = self.forward(&self.args, 0, &device);
        let mut moved = self.args.clone();
        for a in moved.iter_mut().filter(|a| a.seq.is_some()) {
            let ax = a.seq.unwrap_or(0);
            let n = a.t.shape[ax];
            let inner: usize = a.t.shape[ax + 1..].iter().product();
            for (i, v) in a.t.data.iter_mut().enumerate() {
                if (i / inner) % n == n - 1 {
                    // Another token id (ids stay below their vocabulary), or a moved value.
                    *v = match (a.ids, *v > 0.0) {
                        (true, true) => *v - 1.0,
                        (true, false) => *v + 1.0,
                        (false, _) => *v + 3.0,
                    };
                }
            }
        }
        let after = self.forward(&moved, 0, &device);
        let n = whole.shape[axis];
        let (before, later) = (
            narrow(&whole, axis, 0, n - 1),
            narrow(&after, axis, 0, n - 1),
        );
        self.assert_close("earlier outputs after a later change", &later, &before);
        if self.op.mixing() == Mixing::Pointwise {
            assert_ne!(whole, after, "{:?}: the change moved nothing", self.op);
        }
    }

    /// Decoding `prompt` positions, then one at a time, each call with the op's state from
    /// the calls before, gives the outputs of the whole sequence: with a cache that grows and
    /// with one preallocated for two positions more than the sequence ([`Ctx::kv_capacity`]),
    /// whose cached keys then keep one shape.
    pub fn decodes_like_the_whole_sequence(&self, prompt: usize) {
        assert!(self.op.incremental(), "{:?} does not decode", self.op);
        let axis = self.out_seq.expect("an output with positions");
        let device = DeviceKind::Cpu.device(false);
        let whole = self.forward(&self.args, 0, &device);
        let (b, s) = self.batch_seq();
        for capacity in [None, Some(s + 2)] {
            let mut state: Option<Box<dyn OpState>> = None;
            let mut parts = Vec::new();
            let mut shapes = Vec::new();
            let mut at = 0;
            while at < s {
                let len = if at == 0 { prompt.min(s) } else { 1 };
                let args = self.positions(at, len);
                let vs: Vec<V> = args.iter().map(|a| a.value(&device)).collect();
                let refs: Vec<&V> = vs.iter().collect();
                let c = Ctx {
                    offset: at,
                    kv_capacity: capacity,
                    ..ctx(&device, b, len)
                };
                parts.push(host_tensor(self.op.decode(&refs, &c, &mut state)));
                shapes.extend(state.as_ref().and_then(|st| st.key_shape()));
                at += len;
            }
            let what = match capacity {
                None => "decoded vs whole".to_string(),
                Some(c) => format!("decoded with a capacity of {c} vs whole"),
            };
            self.assert_close(&what, &concat(&parts, axis), &whole);
            if let Some(c) = capacity {
                if let Some(first) = shapes.first() {
                    assert_eq!(first[2], c, "{:?}: the cache is not preallocated", self.op);
                }
                assert!(
                    shapes.windows(2).all(|w| w[0] == w[1]),
                    "{:?}: the cached keys changed shape: {shapes:?}",
                    self.op
                );
            }
        }
    }
}

/// `args` at positions `at..at + len` (those without positions whole).
pub(super) fn positions(args: &[Arg], at: usize, len: usize) -> Vec<Arg> {
    args.iter()
        .map(|a| match a.seq {
            Some(ax) => Arg {
                t: narrow(&a.t, ax, at, len),
                ..a.clone()
            },
            None => a.clone(),
        })
        .collect()
}
