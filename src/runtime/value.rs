//! Runtime values: Burn tensors of the ranks the IR uses.

use burn::prelude::*;

/// A value flowing through the graph at run time. The IR's types fix each value's rank, so a
/// rank mismatch here is a bug in kiln (the verifier rules it out).
#[derive(Debug, Clone)]
pub enum V {
    /// Rank-1 floats.
    F1(Tensor<1>),
    /// Rank-2 floats.
    F2(Tensor<2>),
    /// Rank-3 floats.
    F3(Tensor<3>),
    /// Rank-4 floats.
    F4(Tensor<4>),
    /// Token ids `[batch, seq]`.
    I2(Tensor<2, Int>),
}

macro_rules! getter {
    ($name:ident, $var:ident, $d:literal) => {
        /// The value as a rank-
        #[doc = stringify!($d)]
        /// float tensor.
        pub fn $name(&self) -> Tensor<$d> {
            match self {
                V::$var(t) => t.clone(),
                other => panic!(
                    "kiln bug: expected a rank-{} float value, found {}",
                    $d,
                    other.kind()
                ),
            }
        }
    };
}

impl V {
    /// Rows `idx` of the batch axis (axis 0).
    pub fn select_rows(&self, idx: &Tensor<1, Int>) -> V {
        match self {
            V::F1(t) => V::F1(t.clone().select(0, idx.clone())),
            V::F2(t) => V::F2(t.clone().select(0, idx.clone())),
            V::F3(t) => V::F3(t.clone().select(0, idx.clone())),
            V::F4(t) => V::F4(t.clone().select(0, idx.clone())),
            V::I2(t) => V::I2(t.clone().select(0, idx.clone())),
        }
    }

    getter!(f1, F1, 1);
    getter!(f2, F2, 2);
    getter!(f3, F3, 3);
    getter!(f4, F4, 4);

    /// The device it lives on.
    pub fn device(&self) -> Device {
        match self {
            V::F1(t) => t.device(),
            V::F2(t) => t.device(),
            V::F3(t) => t.device(),
            V::F4(t) => t.device(),
            V::I2(t) => t.device(),
        }
    }

    /// The value as token ids.
    pub fn ids(&self) -> Tensor<2, Int> {
        match self {
            V::I2(t) => t.clone(),
            other => panic!("kiln bug: expected token ids, found {}", other.kind()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            V::F1(_) => "rank-1 floats",
            V::F2(_) => "rank-2 floats",
            V::F3(_) => "rank-3 floats",
            V::F4(_) => "rank-4 floats",
            V::I2(_) => "token ids",
        }
    }

    /// Shape of the value.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            V::F1(t) => t.dims().to_vec(),
            V::F2(t) => t.dims().to_vec(),
            V::F3(t) => t.dims().to_vec(),
            V::F4(t) => t.dims().to_vec(),
            V::I2(t) => t.dims().to_vec(),
        }
    }

    /// All values, flattened row-major, as f32.
    pub fn to_vec(&self) -> Vec<f32> {
        let data = match self {
            V::F1(t) => t.to_data(),
            V::F2(t) => t.to_data(),
            V::F3(t) => t.to_data(),
            V::F4(t) => t.to_data(),
            V::I2(t) => t.to_data(),
        };
        data.convert::<f32>()
            .try_to_vec::<f32>()
            .expect("converted to f32")
    }

    /// A float tensor of any supported rank from row-major data.
    pub fn from_f32(data: Vec<f32>, shape: &[usize], device: &Device) -> V {
        let td = TensorData::new(data, shape.to_vec());
        match shape.len() {
            1 => V::F1(Tensor::from_data(td, device)),
            2 => V::F2(Tensor::from_data(td, device)),
            3 => V::F3(Tensor::from_data(td, device)),
            4 => V::F4(Tensor::from_data(td, device)),
            r => panic!("kiln bug: rank {r} values are not used by the IR"),
        }
    }

    /// The same value, marked as a leaf that needs gradients (for parameters).
    pub fn require_grad(self) -> V {
        match self {
            V::F1(t) => V::F1(t.require_grad()),
            V::F2(t) => V::F2(t.require_grad()),
            V::F3(t) => V::F3(t.require_grad()),
            V::F4(t) => V::F4(t.require_grad()),
            V::I2(t) => V::I2(t),
        }
    }

    /// The gradient of this (leaf) value, if it has one.
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<V> {
        match self {
            V::F1(t) => t.grad(grads).map(V::F1),
            V::F2(t) => t.grad(grads).map(V::F2),
            V::F3(t) => t.grad(grads).map(V::F3),
            V::F4(t) => t.grad(grads).map(V::F4),
            V::I2(_) => None,
        }
    }

    /// Detach from autodiff (a plain tensor on the inner device).
    pub fn detach(self) -> V {
        match self {
            V::F1(t) => V::F1(t.without_autodiff()),
            V::F2(t) => V::F2(t.without_autodiff()),
            V::F3(t) => V::F3(t.without_autodiff()),
            V::F4(t) => V::F4(t.without_autodiff()),
            V::I2(t) => V::I2(t.without_autodiff()),
        }
    }
}

impl V {
    /// The values as one rank-1 tensor (row-major).
    pub fn flat(&self) -> Tensor<1> {
        match self {
            V::F1(t) => t.clone(),
            V::F2(t) => t.clone().flatten(0, 1),
            V::F3(t) => t.clone().flatten(0, 2),
            V::F4(t) => t.clone().flatten(0, 3),
            V::I2(_) => panic!("kiln bug: token ids have no flat float form"),
        }
    }

    /// A value of `shape` from a rank-1 tensor.
    pub fn from_flat(t: Tensor<1>, shape: &[usize]) -> V {
        match *shape {
            [a] => V::F1(t.reshape([a])),
            [a, b] => V::F2(t.reshape([a, b])),
            [a, b, c] => V::F3(t.reshape([a, b, c])),
            [a, b, c, d] => V::F4(t.reshape([a, b, c, d])),
            _ => panic!(
                "kiln bug: rank {} values are not used by the IR",
                shape.len()
            ),
        }
    }
}
