//! An ensemble's output from its members' outputs (see [`crate::ir::Graph::ensemble`]): the
//! log of their average probabilities for token models, the mean of their point forecasts
//! for forecasters.

use super::{float_input, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::math::softmax;
use crate::ir::{DType, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use burn::prelude::*;
use burn::tensor::activation;

/// How the members' outputs combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ensemble {
    /// `(logits_1, …, logits_n [b, s, v]) → [b, s, v]`: ln(mean_i softmax(logits_i)), the log
    /// of the members' average probabilities.
    MeanProbs {
        /// Number of members n.
        members: u64,
    },
    /// `(y_1, …, y_n [b, H, C]) → [b, H, C]`: the mean of the members' point forecasts.
    MeanForecasts {
        /// Number of members n.
        members: u64,
    },
}

impl Ensemble {
    fn members(&self) -> u64 {
        match self {
            Ensemble::MeanProbs { members } | Ensemble::MeanForecasts { members } => *members,
        }
    }
}

/// The port names `member0`, `member1`, … of `n` members.
fn member_ports(n: usize) -> &'static [&'static str] {
    super::counted_ports("member", n as u64, || {
        (0..n).map(|i| format!("member{i}")).collect()
    })
}

impl OpDef for Ensemble {
    fn name(&self) -> &'static str {
        match self {
            Ensemble::MeanProbs { .. } => "mean_probs",
            Ensemble::MeanForecasts { .. } => "mean_forecasts",
        }
    }

    fn attrs(&self) -> String {
        format!("members={}", self.members())
    }

    fn ports(&self) -> &'static [&'static str] {
        member_ports(self.members() as usize)
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        // Output t (a position, or a step of the horizon) reads the members' outputs at t.
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let Some(first) = ins.first() else {
            return Err(InferError::Attribute(
                "an ensemble needs at least one member".into(),
            ));
        };
        let x = float_input(first)?;
        if ins.iter().any(|t| t != x) {
            return Err(shapes(
                "ensemble members must all return the same logits shape",
            ));
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
        // A token ensemble decodes as its members do; a forecaster does not decode.
        match self {
            Ensemble::MeanProbs { .. } => true,
            Ensemble::MeanForecasts { .. } => false,
        }
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        // Every port is a member: the inputs are the members, in order.
        let n = self.members() as f64;
        let mut out = RefTensor::zeros(&ins[0].shape);
        match self {
            Ensemble::MeanForecasts { .. } => {
                for t in ins {
                    for (o, v) in out.data.iter_mut().zip(&t.data) {
                        *o += v / n;
                    }
                }
            }
            Ensemble::MeanProbs { .. } => {
                let v = *ins[0].shape.last().expect("logits have a vocabulary axis");
                for row in 0..out.data.len() / v {
                    let probs: Vec<Vec<f64>> = ins
                        .iter()
                        .map(|t| softmax(&t.data[row * v..(row + 1) * v]))
                        .collect();
                    for k in 0..v {
                        let p = probs.iter().map(|m| m[k]).sum::<f64>() / n;
                        out.data[row * v + k] = p.ln();
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        // Every port is a member: the inputs are the members, in order.
        let n = self.members() as f64;
        match self {
            Ensemble::MeanForecasts { .. } => V::F3(
                Tensor::stack::<4>(ins.iter().map(|x| x.f3()).collect(), 0)
                    .sum_dim(0)
                    .squeeze_dim::<3>(0)
                    .div_scalar(n),
            ),
            Ensemble::MeanProbs { .. } => {
                // ln(mean_i p_i) = logsumexp_i(log_softmax_i) − ln n, stable in f32.
                let lsm: Vec<Tensor<3>> = ins
                    .iter()
                    .map(|x| activation::log_softmax(x.f3(), 2))
                    .collect();
                let st = Tensor::stack::<4>(lsm, 0);
                let m = st.clone().max_dim(0);
                let lse = (st - m.clone()).exp().sum_dim(0).log() + m;
                let [_, b, s, v] = lse.dims();
                V::F3(lse.reshape([b, s, v]).sub_scalar(n.ln()))
            }
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::ir::{Dim, Op};
    use crate::util::Rng;

    #[test]
    fn mean_probs_passes_every_check_and_decodes() {
        let mut rng = Rng::new(31);
        for (members, b, s, v) in [(1, 2, 5, 7), (2, 3, 4, 3), (3, 1, 6, 11)] {
            let op = Ensemble::MeanProbs { members };
            let case = Case {
                op: &op,
                args: (0..members)
                    .map(|_| Arg::seq(&[b, s, v], 1, &mut rng))
                    .collect(),
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
    fn mean_forecasts_passes_every_check() {
        let mut rng = Rng::new(32);
        for (members, b, h, c) in [(1, 2, 5, 3), (3, 3, 4, 1), (2, 1, 7, 2)] {
            let op = Ensemble::MeanForecasts { members };
            // The horizon's steps as positions: step t of the mean reads step t of each
            // member (mixing Pointwise).
            let case = Case {
                op: &op,
                args: (0..members)
                    .map(|_| Arg::seq(&[b, h, c], 1, &mut rng))
                    .collect(),
                out_seq: Some(1),
                tol: 1e-5,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            // As a forecaster's graph types them: [batch, H, C], the horizon fixed.
            let fixed = Case {
                args: (0..members)
                    .map(|_| Arg::fixed(&[b, h, c], &mut rng))
                    .collect(),
                ..case
            };
            fixed.infers_the_forward_shape_with_batch(b, &vec![Some(Dim::Batch); members as usize]);
        }
    }

    #[test]
    fn the_answers_about_mixing_decoding_and_ports_are_todays() {
        let probs = Op::Ensemble(Ensemble::MeanProbs { members: 3 });
        let forecasts = Op::Ensemble(Ensemble::MeanForecasts { members: 2 });
        assert_eq!(
            (probs.name(), probs.attrs().as_str()),
            ("mean_probs", "members=3")
        );
        assert_eq!(
            (forecasts.name(), forecasts.attrs().as_str()),
            ("mean_forecasts", "members=2")
        );
        for (o, incremental) in [(&probs, true), (&forecasts, false)] {
            let d = o.def();
            assert_eq!(o.mixing(), Mixing::Pointwise);
            assert_eq!(d.incremental(), incremental);
            assert!(o.is_pure());
            assert_eq!(d.matmul_flops(&[], 4, 8), 0);
            assert_eq!(o.position_limit(&[]), None);
        }
        assert_eq!((probs.arity(), forecasts.arity()), (3, 2));
        assert_eq!(
            Ensemble::MeanProbs { members: 3 }.ports(),
            ["member0", "member1", "member2"]
        );
        // A larger ensemble grows the names; a smaller one still gets its own.
        let big = Ensemble::MeanForecasts { members: 40 }.ports();
        assert_eq!((big.len(), big[39]), (40, "member39"));
        assert_eq!(
            Ensemble::MeanProbs { members: 2 }.ports(),
            ["member0", "member1"]
        );
    }

    #[test]
    fn infer_errors_have_their_variants() {
        let ty = |dtype, shape: Vec<Dim>| TensorType { dtype, shape };
        let logits = ty(DType::F32, vec![Dim::Batch, Dim::Seq, Dim::Fixed(5)]);
        let op = Ensemble::MeanProbs { members: 2 };
        assert_eq!(op.infer(&[logits.clone(), logits.clone()]).unwrap(), logits);
        let ids = ty(DType::I64, vec![Dim::Batch, Dim::Seq]);
        assert_eq!(
            op.infer(&[ids, logits.clone()]).unwrap_err(),
            InferError::TokenIds
        );
        let other = ty(DType::F32, vec![Dim::Batch, Dim::Seq, Dim::Fixed(6)]);
        assert_eq!(
            op.infer(&[logits, other]).unwrap_err(),
            shapes("ensemble members must all return the same logits shape")
        );
        let e = Ensemble::MeanForecasts { members: 0 }
            .infer(&[])
            .unwrap_err();
        assert!(matches!(e, InferError::Attribute(_)), "{e}");
    }
}
