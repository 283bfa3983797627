//! Helpers of the ops' own tests: random inputs, values on a device, a forward context.

use super::RefTensor;
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
    match t.shape.len() {
        1 => V::F1(Tensor::from_data(
            TensorData::new(data, [t.shape[0]]),
            device,
        )),
        2 => V::F2(Tensor::from_data(
            TensorData::new(data, [t.shape[0], t.shape[1]]),
            device,
        )),
        3 => V::F3(Tensor::from_data(
            TensorData::new(data, [t.shape[0], t.shape[1], t.shape[2]]),
            device,
        )),
        _ => V::F4(Tensor::from_data(
            TensorData::new(data, [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]),
            device,
        )),
    }
}

/// A runtime value's data.
pub fn host(v: V) -> Vec<f32> {
    let data = match v {
        V::F1(t) => t.into_data(),
        V::F3(t) => t.into_data(),
        V::F4(t) => t.into_data(),
        other => panic!("unexpected {other:?}"),
    };
    data.convert::<f32>().try_to_vec::<f32>().unwrap()
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
