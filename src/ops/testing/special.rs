//! Checks for what the general ones of [`Case`] cannot express: reordered beams, frequency
//! masks, training-only gradients, inputs batched without positions, tables that grow with
//! the positions decoded, and ops whose output length differs from their input's.

use super::case::positions;
use super::{concat, ctx, host_tensor, narrow, Arg, Case};
use crate::ir::{Dim, Mixing, TensorType};
use crate::ops::{OpDef, OpState, RefTensor};
use crate::runtime::ops::Ctx;
use crate::runtime::{DeviceKind, V};
use burn::prelude::*;

impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// [`Case::infers_the_forward_shape`] for inputs that hold `batch` examples on axis 0
    /// without an axis of positions (a forecaster's series `[b, L, C]`, whose L steps are
    /// fixed, and its patches `[b·C, N, P]`): axis 0 of argument i is `lead[i]` (`Dim::Batch`,
    /// or `Dim::BatchTimes(c)` for c channels folded into the batch) where that is `Some`,
    /// and what [`Arg::ty`] makes it where `None`.
    pub fn infers_the_forward_shape_with_batch(&self, batch: usize, lead: &[Option<Dim>]) {
        assert_eq!(
            lead.len(),
            self.args.len(),
            "{:?}: one lead per argument",
            self.op
        );
        let tys: Vec<TensorType> = self
            .args
            .iter()
            .zip(lead)
            .map(|(a, l)| {
                let mut ty = a.ty();
                if let Some(d) = l {
                    assert_eq!(
                        d.value(batch as u64, 1) as usize,
                        a.t.shape[0],
                        "{:?}: axis 0 {d} for a batch of {batch}",
                        self.op
                    );
                    ty.shape[0] = *d;
                }
                ty
            })
            .collect();
        let (_, s) = self.batch_seq();
        self.infers_the_forward_shape_from(&tys, batch, s);
    }
}

/// Rows `rows` of axis 0 of `t`, in that order.
pub fn select_rows(t: &RefTensor, rows: &[usize]) -> RefTensor {
    let inner: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    RefTensor {
        shape,
        data: rows
            .iter()
            .flat_map(|&r| t.data[r * inner..(r + 1) * inner].to_vec())
            .collect(),
    }
}

impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// The checks of an op that decodes with a state: the forward shape, the float64
    /// reference, gradients reaching every input, causality by perturbation, cached decoding
    /// after a `prompt`-position prompt, and decoding after beam search reorders the rows to
    /// `rows`.
    pub fn passes_the_checks_of_a_decoding_op(&self, prompt: usize, rows: &[usize]) {
        self.infers_the_forward_shape();
        self.matches_the_reference();
        self.gradients_reach_every_input(&[]);
        self.later_positions_change_no_earlier_output();
        self.decodes_like_the_whole_sequence(prompt);
        self.decodes_after_reordering_rows(prompt, rows);
    }

    /// The batch rows in reverse order (an argument of
    /// [`Case::decodes_after_reordering_rows`]).
    pub fn reversed_rows(&self) -> Vec<usize> {
        (0..self.batch_seq().0).rev().collect()
    }

    /// Decoding `prompt` positions, then reordering the op's state to batch rows `rows` (as
    /// beam search does) and decoding the rest one position at a time from those rows'
    /// inputs, gives the later outputs of the whole sequence of those rows.
    pub fn decodes_after_reordering_rows(&self, prompt: usize, rows: &[usize]) {
        let axis = self.out_seq.expect("an output with positions");
        let device = DeviceKind::Cpu.device(false);
        let (b, s) = self.batch_seq();
        assert!(prompt < s, "{:?}: nothing left to decode", self.op);
        let picked: Vec<Arg> = self
            .args
            .iter()
            .map(|a| match a.seq {
                Some(_) => Arg {
                    t: select_rows(&a.t, rows),
                    ..a.clone()
                },
                None => a.clone(),
            })
            .collect();
        let whole = self.forward(&picked, 0, &device);
        let mut state: Option<Box<dyn OpState>> = None;
        let mut parts = Vec::new();
        let mut at = 0;
        while at < s {
            let (len, from, batch) = if at == 0 {
                (prompt, &self.args, b)
            } else {
                (1, &picked, rows.len())
            };
            let args = positions(from, at, len);
            let vs: Vec<V> = args.iter().map(|a| a.value(&device)).collect();
            let refs: Vec<&V> = vs.iter().collect();
            let c = Ctx {
                offset: at,
                ..ctx(&device, batch, len)
            };
            let out = host_tensor(self.op.decode(&refs, &c, &mut state));
            if at == 0 {
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(
                        rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                        [rows.len()],
                    ),
                    &device,
                );
                state
                    .as_mut()
                    .expect("a decoding state after the prompt")
                    .select_rows(&idx);
            } else {
                parts.push(out);
            }
            at += len;
        }
        self.assert_close(
            "decoded after reordering vs whole",
            &concat(&parts, axis),
            &narrow(&whole, axis, prompt, s - prompt),
        );
    }
}

/// The checks of ops whose forward reads the frequency-curriculum mask of the context
/// ([`Ctx::freq_mask`]), which the float64 reference takes as an argument instead.
impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// The Burn forward under the mask `mask` agrees with `want`, the reference's output under
    /// the same mask.
    pub fn matches_under_mask(&self, mask: crate::ir::FreqCutoff, want: &RefTensor) {
        let device = DeviceKind::Cpu.device(false);
        let vs: Vec<V> = self.args.iter().map(|a| a.value(&device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let (b, s) = self.batch_seq();
        let c = Ctx {
            freq_mask: Some(mask),
            ..ctx(&device, b, s)
        };
        let got = host_tensor(self.op.forward(&refs, &c));
        self.assert_close("forward vs reference under a mask", &got, want);
    }

    /// Under the mask `mask`, every float input except those named in `skip` gets a finite,
    /// nonzero gradient.
    pub fn gradients_reach_every_input_under_mask(
        &self,
        mask: crate::ir::FreqCutoff,
        skip: &[&str],
    ) {
        self.gradients_under(false, Some(mask), skip, &format!(" under {mask:?}"));
    }
}

impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// As [`Case::gradients_reach_every_input`], in training mode (dropout active, hard
    /// attention straight-through).
    pub fn gradients_reach_every_input_in_training(&self, skip: &[&str]) {
        self.gradients_under(true, None, skip, " in training");
    }

    /// As [`Case::infers_the_forward_shape`], where the inputs numbered in `batched` have a
    /// batch axis (axis 0) but no positions (an encoder's keys and values, its padding mask).
    pub fn infers_the_forward_shape_batched(&self, batched: &[usize]) {
        let mut tys: Vec<TensorType> = self.args.iter().map(Arg::ty).collect();
        for &i in batched {
            tys[i].shape[0] = Dim::Batch;
        }
        let (b, s) = self.batch_seq();
        self.infers_the_forward_shape_from(&tys, b, s);
    }
}

/// Checks the ones above cannot express: tables of positions, which read the length of their
/// input and not its values, and ops whose output has other positions than their input
/// (padding, cropping).
impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// For a table of positions whose decoding calls give the rows of every position so far
    /// (0..offset + len, for a reader that takes the rows it needs): decoding `prompt`
    /// positions, then one at a time, gives at each call the first rows of the whole
    /// sequence's table (so no row depends on later positions).
    pub fn decodes_the_rows_of_every_position_so_far(&self, prompt: usize) {
        assert!(self.op.incremental(), "{:?} does not decode", self.op);
        let axis = self.out_seq.expect("an output with positions");
        let device = DeviceKind::Cpu.device(false);
        let whole = self.forward(&self.args, 0, &device);
        let (b, s) = self.batch_seq();
        let mut state: Option<Box<dyn OpState>> = None;
        let mut at = 0;
        while at < s {
            let len = if at == 0 { prompt.min(s) } else { 1 };
            let vs: Vec<V> = self
                .positions(at, len)
                .iter()
                .map(|a| a.value(&device))
                .collect();
            let refs: Vec<&V> = vs.iter().collect();
            let c = Ctx {
                offset: at,
                ..ctx(&device, b, len)
            };
            let got = host_tensor(self.op.decode(&refs, &c, &mut state));
            let want = narrow(&whole, axis, 0, at + len);
            self.assert_close(&format!("rows after position {}", at + len), &got, &want);
            at += len;
        }
    }

    /// Moving the values at position `t` of the inputs `moved` (each a port and the axis of
    /// its positions) leaves every output before position t where it was; a pointwise op
    /// moves its output t, when it has one.
    pub fn moving_a_position_changes_no_earlier_output(&self, moved: &[(&str, usize)], t: usize) {
        let axis = self.out_seq.expect("an output with positions");
        let device = DeviceKind::Cpu.device(false);
        let whole = self.forward(&self.args, 0, &device);
        let mut args = self.args.clone();
        for (name, ax) in moved {
            let i = self
                .op
                .ports()
                .iter()
                .position(|p| p == name)
                .unwrap_or_else(|| panic!("{:?}: no port `{name}`", self.op));
            let a = &mut args[i];
            let n = a.t.shape[*ax];
            let inner: usize = a.t.shape[ax + 1..].iter().product();
            for (k, v) in a.t.data.iter_mut().enumerate() {
                if (k / inner) % n == t {
                    *v = match (a.ids, *v > 0.0) {
                        (true, true) => *v - 1.0,
                        (true, false) => *v + 1.0,
                        (false, _) => *v + 3.0,
                    };
                }
            }
        }
        let after = self.forward(&args, 0, &device);
        let before = t.min(whole.shape[axis]);
        self.assert_close(
            &format!("outputs before position {t} after moving it"),
            &narrow(&after, axis, 0, before),
            &narrow(&whole, axis, 0, before),
        );
        if self.op.mixing() == Mixing::Pointwise && t < whole.shape[axis] {
            assert_ne!(
                narrow(&whole, axis, t, 1),
                narrow(&after, axis, t, 1),
                "{:?}: moving position {t} moved nothing",
                self.op
            );
        }
    }
}
