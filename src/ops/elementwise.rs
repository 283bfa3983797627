//! Elementwise ops: sums and products of two values, a constant factor, activations and
//! dropout.

use super::{float_input, port, OpDef, RefTensor};
use crate::ir::op::Act;
use crate::ir::{DType, Mixing, Real, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// An elementwise op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elementwise {
    /// `a + b` (equal shapes).
    Add,
    /// `a · b` (equal shapes).
    Mul,
    /// `x · c`.
    Scale(Real),
    /// An activation function.
    Act(Act),
    /// Dropout with probability p during training (identity at inference).
    Dropout(Real),
}

impl OpDef for Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Elementwise::Add => "add",
            Elementwise::Mul => "mul",
            Elementwise::Scale(_) => "scale",
            Elementwise::Act(_) => "act",
            Elementwise::Dropout(_) => "dropout",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Elementwise::Add | Elementwise::Mul => String::new(),
            Elementwise::Scale(c) => format!("{c}"),
            Elementwise::Act(a) => format!("{a:?}").to_lowercase(),
            Elementwise::Dropout(p) => format!("p={p}"),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Elementwise::Add | Elementwise::Mul => &["a", "b"],
            Elementwise::Scale(_) | Elementwise::Act(_) | Elementwise::Dropout(_) => &["x"],
        }
    }

    fn is_pure(&self) -> bool {
        !matches!(self, Elementwise::Dropout(_))
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, String> {
        let x = float_input(&ins[0])?;
        if let [_, b] = ins {
            float_input(b)?;
            if x.shape != b.shape {
                return Err(format!("cannot combine shapes {} and {}", ins[0], ins[1]));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, _: &[&TensorType], _: u64, _: u64) -> u64 {
        0
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> RefTensor {
        let p = self.ports();
        let unary = |f: &dyn Fn(f64) -> f64| {
            let x = port(p, ins, "x");
            RefTensor {
                shape: x.shape.clone(),
                data: x.data.iter().map(|&v| f(v)).collect(),
            }
        };
        let binary = |f: &dyn Fn(f64, f64) -> f64| {
            let (a, b) = (port(p, ins, "a"), port(p, ins, "b"));
            assert_eq!(a.shape, b.shape, "kiln bug: the verifier checks shapes");
            RefTensor {
                shape: a.shape.clone(),
                data: a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
            }
        };
        match self {
            Elementwise::Add => binary(&|x, y| x + y),
            Elementwise::Mul => binary(&|x, y| x * y),
            Elementwise::Scale(c) => unary(&|v| v * c.0),
            Elementwise::Act(a) => unary(&|v| activation(*a, v)),
            // The reference is deterministic: dropout's identity at inference.
            Elementwise::Dropout(_) => (*port(p, ins, "x")).clone(),
        }
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        use crate::runtime::ops::{act, dropout};
        match self {
            Elementwise::Add => match (ins[0], ins[1]) {
                (V::F3(a), V::F3(b)) => V::F3(a.clone() + b.clone()),
                (V::F4(a), V::F4(b)) => V::F4(a.clone() + b.clone()),
                (a, b) => V::F2(a.f2() + b.f2()),
            },
            Elementwise::Mul => V::F3(ins[0].f3() * ins[1].f3()),
            Elementwise::Scale(c) => V::F3(ins[0].f3().mul_scalar(c.0)),
            Elementwise::Act(a) => V::F3(act(*a, ins[0].f3())),
            Elementwise::Dropout(p) => V::F3(dropout(ins[0].f3(), p.0, ctx)),
        }
    }
}

/// An activation, by its definition.
fn activation(a: Act, x: f64) -> f64 {
    match a {
        Act::Relu => x.max(0.0),
        Act::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::Tanh => x.tanh(),
        // ln(1 + eˣ), without overflow for large x.
        Act::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
    }
}
