//! Helpers of the ops' own tests: random inputs, values on a device, a forward context, and
//! [`Case`], the checks every op family runs on itself (shape inference against the Burn
//! forward, the Burn forward against the float64 reference, gradient flow, causality by
//! perturbation, incremental decoding against the whole sequence; `case.rs`), and the checks
//! for what those cannot express (`special.rs`).

mod case;
mod special;

pub use case::Case;

use super::RefTensor;
use crate::ir::{DType, Dim, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
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
    v.to_vec()
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
        kv_capacity: None,
        matmul_dtype: None,
        soft_attention: false,
        freq_mask: None,
        aux: None,
        consts: None,
        keys: None,
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
