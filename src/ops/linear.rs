//! The position-wise linear map `x · weight (+ bias)` over the last axis.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// `(x [.., i], weight [i, o], bias? [o]) → [.., o]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Linear {
    /// Whether the third input (bias) is present.
    pub bias: bool,
}

impl OpDef for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn attrs(&self) -> String {
        format!("bias={}", self.bias)
    }

    fn ports(&self) -> &'static [&'static str] {
        if self.bias {
            &["x", "weight", "bias"]
        } else {
            &["x", "weight"]
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let (wi, wo) = match port(p, ins, "weight").shape.as_slice() {
            [a, b] => (*a, *b),
            _ => return Err(shapes("linear weight must be 2-D")),
        };
        if x.shape.last() != Some(&wi) {
            let w = x.shape.last().map_or("?".to_string(), ToString::to_string);
            return Err(shapes(format!(
                "input width {w} does not match the weight's {wi}"
            )));
        }
        if self.bias && port(p, ins, "bias").shape != vec![wo] {
            return Err(shapes("bias shape does not match the output width"));
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("rank ≥ 1") = wo;
        Ok(TensorType {
            dtype: DType::F32,
            shape,
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        let x = port(p, ins, "x");
        let w = port(p, ins, "weight");
        // One multiply-add per row of x, input feature and output feature.
        let (i, o) = (w.len(0, seq), w.len(1, seq));
        2 * (x.numel(batch, seq) / i.max(1)) * i * o
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
        let (x, w) = (*port(p, ins, "x"), *port(p, ins, "weight"));
        let (i_dim, o_dim) = (w.shape[0], w.shape[1]);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("rank ≥ 1") = o_dim;
        let mut out = RefTensor::zeros(&shape);
        for (r, row) in x.data.chunks(i_dim).enumerate() {
            for o in 0..o_dim {
                let mut acc = if self.bias {
                    port(p, ins, "bias").data[o]
                } else {
                    0.0
                };
                for (i, &xv) in row.iter().enumerate() {
                    acc += xv * w.data[i * o_dim + o];
                }
                out.data[r * o_dim + o] = acc;
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        V::F3(crate::runtime::ops::linear(
            port(p, ins, "x").f3(),
            port(p, ins, "weight").f2(),
            self.bias.then(|| port(p, ins, "bias").f1()),
            ctx,
        ))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, random, value};
    use super::*;
    use crate::ir::Dim;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;

    fn ty(shape: Vec<Dim>) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape,
        }
    }

    #[test]
    fn shapes_flops_and_mismatches() {
        let x = ty(vec![Dim::Batch, Dim::Seq, Dim::Fixed(6)]);
        let w = ty(vec![Dim::Fixed(6), Dim::Fixed(4)]);
        let b = ty(vec![Dim::Fixed(4)]);
        let op = Linear { bias: true };
        let y = op.infer(&[x.clone(), w.clone(), b]).unwrap();
        assert_eq!(y.shape, vec![Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        assert_eq!(op.matmul_flops(&[&x, &w], 3, 5), 2 * 3 * 5 * 6 * 4);
        let e = op
            .infer(&[x.clone(), w.clone(), ty(vec![Dim::Fixed(5)])])
            .unwrap_err();
        assert!(e.to_string().contains("bias"), "{e}");
        let e = Linear { bias: false }
            .infer(&[ty(vec![Dim::Batch, Dim::Seq, Dim::Fixed(7)]), w])
            .unwrap_err();
        assert_eq!(
            e,
            InferError::Shapes("input width 7 does not match the weight's 6".into())
        );
    }

    #[test]
    fn every_check_passes_with_and_without_bias() {
        use super::super::testing::{Arg, Case};
        let mut rng = Rng::new(5);
        for bias in [true, false] {
            let op = Linear { bias };
            let mut args = vec![
                Arg::seq(&[2, 6, 5], 1, &mut rng),
                Arg::fixed(&[5, 3], &mut rng),
            ];
            if bias {
                args.push(Arg::fixed(&[3], &mut rng));
            }
            let case = Case {
                op: &op,
                args,
                out_seq: Some(1),
                tol: 1e-4,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(3);
        }
    }

    #[test]
    fn the_burn_forward_matches_the_float64_reference_with_and_without_bias() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(12);
        for bias in [true, false] {
            let op = Linear { bias };
            for (b, s, i, o) in [(1, 1, 1, 1), (2, 5, 8, 3), (3, 7, 33, 17)] {
                let mut ins = vec![random(&[b, s, i], &mut rng), random(&[i, o], &mut rng)];
                if bias {
                    ins.push(random(&[o], &mut rng));
                }
                let want = op.reference(&ins.iter().collect::<Vec<_>>()).unwrap();
                let vs: Vec<V> = ins.iter().map(|t| value(t, &device)).collect();
                let refs: Vec<&V> = vs.iter().collect();
                let got = host(op.forward(&refs, &ctx(&device, b, s)));
                for (g, w) in got.iter().zip(&want.data) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "bias {bias} [{b}, {s}, {i}, {o}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
