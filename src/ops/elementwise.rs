//! Elementwise ops: sums and products of two values, a constant factor, activations and
//! dropout.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
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

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, p[0]))?;
        if let Elementwise::Add | Elementwise::Mul = self {
            let b = float_input(port(p, ins, "b"))?;
            if x.shape != b.shape {
                return Err(shapes(format!("cannot combine shapes {x} and {b}")));
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

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
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
        Ok(match self {
            Elementwise::Add => binary(&|x, y| x + y),
            Elementwise::Mul => binary(&|x, y| x * y),
            Elementwise::Scale(c) => unary(&|v| v * c.0),
            Elementwise::Act(a) => unary(&|v| activation(*a, v)),
            // The reference is deterministic: dropout's identity at inference.
            Elementwise::Dropout(_) => (*port(p, ins, "x")).clone(),
        })
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        use crate::runtime::ops::{act, dropout};
        let ports = self.ports();
        let x = |name| port(ports, ins, name);
        match self {
            Elementwise::Add => match (x("a"), x("b")) {
                (V::F3(a), V::F3(b)) => V::F3(a.clone() + b.clone()),
                (V::F4(a), V::F4(b)) => V::F4(a.clone() + b.clone()),
                (a, b) => V::F2(a.f2() + b.f2()),
            },
            Elementwise::Mul => V::F3(x("a").f3() * x("b").f3()),
            Elementwise::Scale(c) => V::F3(x("x").f3().mul_scalar(c.0)),
            Elementwise::Act(a) => V::F3(act(*a, x("x").f3())),
            Elementwise::Dropout(p) => V::F3(dropout(x("x").f3(), p.0, ctx)),
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// An activation, by its definition.
fn activation(a: Act, x: f64) -> f64 {
    match a {
        Act::Relu => x.max(0.0),
        Act::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Act::Silu => crate::ir::reference::math::silu(x),
        Act::Tanh => x.tanh(),
        Act::Softplus => crate::ir::reference::math::softplus(x),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, random, value};
    use super::*;
    use crate::ir::Dim;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;
    use burn::prelude::Device;

    const ALL: [Elementwise; 11] = [
        Elementwise::Add,
        Elementwise::Mul,
        Elementwise::Scale(Real(-1.5)),
        Elementwise::Act(Act::Relu),
        Elementwise::Act(Act::Gelu),
        Elementwise::Act(Act::Silu),
        Elementwise::Act(Act::Tanh),
        Elementwise::Act(Act::Softplus),
        Elementwise::Dropout(Real(0.0)),
        Elementwise::Dropout(Real(0.3)),
        Elementwise::Scale(Real(0.5)),
    ];

    fn inputs(op: &Elementwise, shape: &[usize], rng: &mut Rng) -> Vec<RefTensor> {
        op.ports().iter().map(|_| random(shape, rng)).collect()
    }

    fn run(op: &Elementwise, ins: &[RefTensor], train: bool, device: &Device) -> Vec<f32> {
        let vs: Vec<V> = ins.iter().map(|t| value(t, device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let mut c = ctx(device, ins[0].shape[0], ins[0].shape[1]);
        c.train = train;
        host(op.forward(&refs, &c))
    }

    #[test]
    fn shapes_are_inferred_and_mismatches_explained() {
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(8)],
        };
        for op in ALL {
            let ins = vec![x.clone(); op.ports().len()];
            assert_eq!(op.infer(&ins).unwrap(), x, "{op:?}");
            let mut ids = ins.clone();
            ids[0].dtype = DType::I64;
            assert!(
                op.infer(&ids).unwrap_err() == InferError::TokenIds,
                "{op:?}"
            );
            if ins.len() == 2 {
                let mut bad = ins.clone();
                bad[1].shape[2] = Dim::Fixed(7);
                assert!(op
                    .infer(&bad)
                    .unwrap_err()
                    .to_string()
                    .contains("cannot combine"));
            }
            assert_eq!(op.mixing(), Mixing::Pointwise);
            assert_eq!(op.is_pure(), !matches!(op, Elementwise::Dropout(_)));
        }
    }

    #[test]
    fn the_burn_forward_matches_the_float64_reference_on_random_shapes() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(5);
        for op in ALL {
            for shape in [[1, 1, 1], [2, 5, 8], [3, 7, 33]] {
                let ins = inputs(&op, &shape, &mut rng);
                let want = op.reference(&ins.iter().collect::<Vec<_>>()).unwrap();
                let got = run(&op, &ins, false, &device);
                for (g, w) in got.iter().zip(&want.data) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()),
                        "{op:?} {shape:?}: {g} vs {w}"
                    );
                }
            }
        }
        // The definitions themselves, at a few points.
        for (a, x, want) in [
            (Act::Relu, -2.0, 0.0),
            (Act::Gelu, 1.0, 0.841_344_746_068_542_9),
            (Act::Silu, 1.0, 0.731_058_578_630_004_9),
            (Act::Softplus, 0.0, std::f64::consts::LN_2),
            (Act::Softplus, 100.0, 100.0),
        ] {
            assert!((activation(a, x) - want).abs() < 1e-12, "{a:?}({x})");
        }
    }

    #[test]
    fn dropout_zeroes_or_rescales_in_training_only() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(9);
        let op = Elementwise::Dropout(Real(0.25));
        let ins = inputs(&op, &[4, 16, 32], &mut rng);
        let eval = run(&op, &ins, false, &device);
        let train = run(&op, &ins, true, &device);
        let mut zeros = 0;
        for ((x, e), t) in ins[0].data.iter().zip(&eval).zip(&train) {
            assert!((f64::from(*e) - x).abs() < 1e-6, "identity at inference");
            if *t == 0.0 {
                zeros += 1;
            } else {
                assert!(
                    (f64::from(*t) - x / 0.75).abs() < 1e-5,
                    "kept values scale by 1/(1 − p)"
                );
            }
        }
        let frac = f64::from(zeros) / train.len() as f64;
        assert!((frac - 0.25).abs() < 0.05, "dropped {frac}");
    }

    /// The masks come from the device's generator, seeded by the trainer from (seed, step,
    /// micro-batch): the same seeding gives the same masks, in order; the next dropout op (or
    /// another step) gets another mask.
    #[test]
    fn dropout_masks_follow_the_seeding() {
        let device = DeviceKind::Cpu.device(false);
        let op = Elementwise::Dropout(Real(0.5));
        let ins = vec![RefTensor {
            shape: vec![2, 8, 64],
            data: vec![1.0; 2 * 8 * 64],
        }];
        let masks = |seed: u64| {
            device.seed(seed);
            [run(&op, &ins, true, &device), run(&op, &ins, true, &device)]
        };
        let [a, b] = masks(crate::train::mix(7, 3, 0));
        assert_eq!([a.clone(), b.clone()], masks(crate::train::mix(7, 3, 0)));
        let [c, _] = masks(crate::train::mix(7, 4, 0));
        assert_ne!(a, b, "two dropout ops, one mask");
        assert_ne!(a, c, "two steps, one mask");
    }

    #[test]
    fn gradients_reach_every_input() {
        let device = DeviceKind::Cpu.device(true);
        let mut rng = Rng::new(2);
        for op in ALL {
            let ins = inputs(&op, &[2, 3, 4], &mut rng);
            let vs: Vec<V> = ins
                .iter()
                .map(|t| value(t, &device).require_grad())
                .collect();
            let refs: Vec<&V> = vs.iter().collect();
            let y = op.forward(&refs, &ctx(&device, 2, 3)).f3();
            let grads = (y.clone() * y).sum().backward();
            for (name, v) in op.ports().iter().zip(&vs) {
                let g = host(v.grad(&grads).unwrap_or_else(|| panic!("{op:?} `{name}`")));
                assert!(g.iter().all(|x| x.is_finite()), "{op:?} `{name}`");
                assert!(g.iter().any(|x| *x != 0.0), "{op:?} `{name}` is all zero");
            }
        }
    }

    #[test]
    fn a_later_position_changes_no_earlier_output() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(4);
        for op in ALL {
            assert!(op.incremental());
            let ins = inputs(&op, &[2, 6, 5], &mut rng);
            let before = run(&op, &ins, false, &device);
            let mut moved = ins.clone();
            for t in &mut moved {
                for (i, v) in t.data.iter_mut().enumerate() {
                    if (i / 5) % 6 == 5 {
                        *v += 2.0;
                    }
                }
            }
            let after = run(&op, &moved, false, &device);
            for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                if (i / 5) % 6 != 5 {
                    assert_eq!(a, b, "{op:?}: output {i} saw a later position");
                }
            }
        }
    }
}
