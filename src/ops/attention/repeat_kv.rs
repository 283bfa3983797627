//! The K/V head repeat of grouped-query attention (removed by the GQA pass, which gives the
//! attention op `kv_groups` instead).

use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::ops::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// `[b, hkv, s, d] → [b, hkv·g, s, d]`: each KV head repeated g times (head h of the result
/// is head ⌊h/g⌋ of the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepeatKv {
    /// Repeats g.
    pub groups: u64,
}

impl OpDef for RepeatKv {
    fn name(&self) -> &'static str {
        "repeat_kv"
    }

    fn attrs(&self) -> String {
        format!("groups={}", self.groups)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        if self.groups == 0 {
            return Err(InferError::Attribute(
                "repeat_kv repeats each head at least once (groups ≥ 1)".into(),
            ));
        }
        let x = float_input(port(self.ports(), ins, "x"))?;
        match x.shape.as_slice() {
            [b, Dim::Fixed(h), s, d] => Ok(TensorType {
                dtype: DType::F32,
                shape: vec![*b, Dim::Fixed(h * self.groups), *s, *d],
            }),
            _ => Err(shapes(format!(
                "expects [batch, heads, seq, head_dim], got {x}"
            ))),
        }
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
        let x = *port(self.ports(), ins, "x");
        let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let g = self.groups as usize;
        let mut out = RefTensor::zeros(&[b, h * g, s, d]);
        let per = s * d;
        for bi in 0..b {
            for ho in 0..h * g {
                let src = (bi * h + ho / g) * per;
                let dst = (bi * h * g + ho) * per;
                out.data[dst..dst + per].copy_from_slice(&x.data[src..src + per]);
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let x = port(self.ports(), ins, "x").f4();
        let [b, h, s, d] = x.dims();
        let g = self.groups as usize;
        V::F4(
            x.unsqueeze_dim::<5>(2)
                .repeat_dim(2, g)
                .reshape([b, h * g, s, d]),
        )
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{Arg, Case};
    use crate::util::Rng;

    #[test]
    fn every_check_passes() {
        let mut rng = Rng::new(17);
        for groups in [1, 2, 3] {
            let op = RepeatKv { groups };
            for shape in [[1, 1, 1, 1], [2, 3, 5, 4], [3, 2, 7, 5]] {
                let case = Case {
                    op: &op,
                    args: vec![Arg::seq(&shape, 2, &mut rng)],
                    out_seq: Some(2),
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                case.gradients_reach_every_input(&[]);
                case.later_positions_change_no_earlier_output();
                case.decodes_like_the_whole_sequence(2);
            }
        }
    }

    #[test]
    fn head_h_is_input_head_h_over_g_and_bad_inputs_are_refused() {
        let mut rng = Rng::new(2);
        let x = crate::ops::testing::random(&[1, 2, 3, 2], &mut rng);
        let y = RepeatKv { groups: 3 }.reference(&[&x]).unwrap();
        // Head 4 of the result is head 1 of the input.
        assert_eq!(y.data[4 * 6..5 * 6], x.data[6..12]);
        let t = |dtype, shape: Vec<Dim>| TensorType { dtype, shape };
        let op = RepeatKv { groups: 2 };
        let ids = t(DType::I64, vec![Dim::Batch, Dim::Seq]);
        assert_eq!(op.infer(&[ids]).unwrap_err(), InferError::TokenIds);
        let x3 = t(DType::F32, vec![Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        assert_eq!(
            op.infer(std::slice::from_ref(&x3)).unwrap_err(),
            shapes(format!("expects [batch, heads, seq, head_dim], got {x3}"))
        );
        let x4 = t(
            DType::F32,
            vec![Dim::Batch, Dim::Fixed(2), Dim::Seq, Dim::Fixed(4)],
        );
        assert!(matches!(
            RepeatKv { groups: 0 }.infer(&[x4]),
            Err(InferError::Attribute(_))
        ));
    }
}
