//! Helpers of the ops' own tests: random inputs, values on a device, a forward context, and
//! [`Case`], the checks every op family runs on itself (shape inference against the Burn
//! forward, the Burn forward against the float64 reference, gradient flow, causality by
//! perturbation, incremental decoding against the whole sequence).

use super::{OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::{DeviceKind, V};
use crate::util::Rng;
use burn::prelude::*;

/// Random values of `shape` (normal, not centred on 0).
pub fn random(shape: &[usize], rng: &mut Rng) -> RefTensor {
    let n = shape.iter().product();
    RefTensor {
        shape: shape.to_vec(),
        data: (0..n).map(|_| rng.normal() * 1.5 + 0.3).collect(),
    }
}

/// `t` as a runtime value on `device` (rank 1 to 4).
pub fn value(t: &RefTensor, device: &Device) -> V {
    let data: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
    V::from_f32(data, &t.shape, device)
}

/// `t` as token ids `[batch, seq]` on `device`.
pub fn ids_value(t: &RefTensor, device: &Device) -> V {
    let data: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
    V::I2(Tensor::from_data(
        TensorData::new(data, [t.shape[0], t.shape[1]]),
        device,
    ))
}

/// A runtime value's data.
pub fn host(v: V) -> Vec<f32> {
    let data = match v {
        V::F1(t) => t.into_data(),
        V::F2(t) => t.into_data(),
        V::F3(t) => t.into_data(),
        V::F4(t) => t.into_data(),
        V::I2(t) => t.float().into_data(),
    };
    data.convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A runtime value as a float64 tensor.
pub fn host_tensor(v: V) -> RefTensor {
    let shape = v.dims();
    RefTensor {
        shape,
        data: host(v).into_iter().map(f64::from).collect(),
    }
}

/// A forward pass's context at inference, from position 0.
pub fn ctx(device: &Device, batch: usize, seq: usize) -> Ctx<'_> {
    Ctx {
        device,
        train: false,
        batch,
        seq,
        offset: 0,
        matmul_dtype: None,
        soft_attention: false,
        freq_mask: None,
        aux: None,
    }
}

/// Positions `start..start + len` of axis `axis`.
pub fn narrow(t: &RefTensor, axis: usize, start: usize, len: usize) -> RefTensor {
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product();
    let n = t.shape[axis];
    let mut data = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let at = (o * n + start) * inner;
        data.extend_from_slice(&t.data[at..at + len * inner]);
    }
    let mut shape = t.shape.clone();
    shape[axis] = len;
    RefTensor { shape, data }
}

/// Tensors side by side along `axis`.
pub fn concat(ts: &[RefTensor], axis: usize) -> RefTensor {
    let mut shape = ts[0].shape.clone();
    shape[axis] = ts.iter().map(|t| t.shape[axis]).sum();
    let outer: usize = shape[..axis].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for t in ts {
            let chunk: usize = t.shape[axis..].iter().product();
            data.extend_from_slice(&t.data[o * chunk..(o + 1) * chunk]);
        }
    }
    RefTensor { shape, data }
}

/// One input of an op under test.
#[derive(Debug, Clone)]
pub struct Arg {
    /// Its values (token ids as whole numbers).
    pub t: RefTensor,
    /// The axis that runs over the sequence's positions, if any: perturbed by the causality
    /// check and cut into steps by the decoding check.
    pub seq: Option<usize>,
    /// Token ids rather than floats.
    pub ids: bool,
}

impl Arg {
    /// Random floats whose axis `seq` holds positions (axis 0 is the batch).
    pub fn seq(shape: &[usize], seq: usize, rng: &mut Rng) -> Arg {
        Arg {
            t: random(shape, rng),
            seq: Some(seq),
            ids: false,
        }
    }

    /// Random floats without positions (a parameter).
    pub fn fixed(shape: &[usize], rng: &mut Rng) -> Arg {
        Arg {
            t: random(shape, rng),
            seq: None,
            ids: false,
        }
    }

    /// Random token ids `[batch, seq]` below `vocab`.
    pub fn ids(batch: usize, seq: usize, vocab: u64, rng: &mut Rng) -> Arg {
        Arg {
            t: RefTensor {
                shape: vec![batch, seq],
                data: (0..batch * seq)
                    .map(|_| {
                        (rng.uniform() * vocab as f64)
                            .floor()
                            .min(vocab as f64 - 1.0)
                    })
                    .collect(),
            },
            seq: Some(1),
            ids: true,
        }
    }

    /// Given values, with positions along `seq`.
    pub fn given(t: RefTensor, seq: Option<usize>) -> Arg {
        Arg { t, seq, ids: false }
    }

    /// Its IR type: axis 0 of an input with positions is the batch, its position axis the
    /// sequence, every other axis fixed.
    pub fn ty(&self) -> TensorType {
        let shape = (0..self.t.shape.len())
            .map(|a| match self.seq {
                Some(s) if a == s => Dim::Seq,
                Some(_) if a == 0 => Dim::Batch,
                _ => Dim::Fixed(self.t.shape[a] as u64),
            })
            .collect();
        TensorType {
            dtype: if self.ids { DType::I64 } else { DType::F32 },
            shape,
        }
    }

    fn value(&self, device: &Device) -> V {
        if self.ids {
            ids_value(&self.t, device)
        } else {
            value(&self.t, device)
        }
    }
}

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
    fn batch_seq(&self) -> (usize, usize) {
        let a = self.args.iter().find(|a| a.seq.is_some());
        a.map_or((1, 1), |a| (a.t.shape[0], a.t.shape[a.seq.unwrap_or(0)]))
    }

    /// The Burn forward on `args`, from position `offset`.
    fn forward(&self, args: &[Arg], offset: usize, device: &Device) -> RefTensor {
        let vs: Vec<V> = args.iter().map(|a| a.value(device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let (b, s) = self.batch_seq();
        let c = Ctx {
            offset,
            ..ctx(device, b, s)
        };
        host_tensor(self.op.forward(&refs, &c))
    }

    fn assert_close(&self, what: &str, got: &RefTensor, want: &RefTensor) {
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
        let ty = self
            .op
            .infer(&tys)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.op));
        let (b, s) = self.batch_seq();
        let want: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| d.value(b as u64, s as u64) as usize)
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
        let y = self.op.forward(&refs, &ctx(&device, b, s)).flat();
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
                "{:?}: the gradient of `{name}` is zero",
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
    /// the calls before, gives the outputs of the whole sequence.
    pub fn decodes_like_the_whole_sequence(&self, prompt: usize) {
        assert!(self.op.incremental(), "{:?} does not decode", self.op);
        let axis = self.out_seq.expect("an output with positions");
        let device = DeviceKind::Cpu.device(false);
        let whole = self.forward(&self.args, 0, &device);
        let (b, s) = self.batch_seq();
        let mut state: Option<Box<dyn OpState>> = None;
        let mut parts = Vec::new();
        let mut at = 0;
        while at < s {
            let len = if at == 0 { prompt.min(s) } else { 1 };
            let args: Vec<Arg> = self
                .args
                .iter()
                .map(|a| match a.seq {
                    Some(ax) => Arg {
                        t: narrow(&a.t, ax, at, len),
                        ..a.clone()
                    },
                    None => a.clone(),
                })
                .collect();
            let vs: Vec<V> = args.iter().map(|a| a.value(&device)).collect();
            let refs: Vec<&V> = vs.iter().collect();
            let c = Ctx {
                offset: at,
                ..ctx(&device, b, len)
            };
            parts.push(host_tensor(self.op.decode(&refs, &c, &mut state)));
            at += len;
        }
        self.assert_close("decoded vs whole", &concat(&parts, axis), &whole);
    }
}

/// Checks the ones above cannot express: tables of positions, which read the length of their
/// input and not its values, and ops whose output has other positions than their input
/// (padding, cropping).
impl<O: OpDef + std::fmt::Debug> Case<'_, O> {
    /// The inputs at positions `at..at + len` (those without positions whole).
    fn positions(&self, at: usize, len: usize) -> Vec<Arg> {
        self.args
            .iter()
            .map(|a| match a.seq {
                Some(ax) => Arg {
                    t: narrow(&a.t, ax, at, len),
                    ..a.clone()
                },
                None => a.clone(),
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_and_concat_are_inverse() {
        let mut rng = Rng::new(1);
        let t = random(&[2, 5, 3], &mut rng);
        for axis in 0..3 {
            let n = t.shape[axis];
            let parts = [narrow(&t, axis, 0, 2), narrow(&t, axis, 2, n - 2)];
            assert_eq!(concat(&parts, axis), t);
        }
        assert_eq!(narrow(&t, 1, 1, 1).data[0], t.data[3]);
    }

    #[test]
    fn arguments_have_batch_and_sequence_axes() {
        let mut rng = Rng::new(2);
        let a = Arg::given(random(&[2, 3, 5, 4], &mut rng), Some(2));
        assert_eq!(
            a.ty().shape,
            vec![Dim::Batch, Dim::Fixed(3), Dim::Seq, Dim::Fixed(4)]
        );
        assert_eq!(Arg::fixed(&[4], &mut rng).ty().shape, vec![Dim::Fixed(4)]);
        let ids = Arg::ids(2, 3, 5, &mut rng);
        assert_eq!(ids.ty().dtype, DType::I64);
        assert!(ids
            .t
            .data
            .iter()
            .all(|&v| (0.0..5.0).contains(&v) && v.fract() == 0.0));
    }
}
