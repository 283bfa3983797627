//! Harmonic features: the wave encoding's ranges (frequency, amplitude, phase per harmonic)
//! and the harmonic selection that keeps each position's k best-scoring harmonics.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, Real, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use burn::prelude::*;
use burn::tensor::{activation, Distribution};

/// A harmonic op, pointwise in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wave {
    /// Wave encoding's ranges `[.., 3H] → [.., 3H]`: per harmonic h, feature 3h is a
    /// frequency softplus(·), 3h+1 an amplitude softplus(·), 3h+2 a phase π·tanh(·).
    Encoding {
        /// Harmonics H.
        harmonics: u64,
    },
    /// Harmonic selection `(x [b, s, H·g], scores [b, s, H]) → [b, s, H·g]`: each position
    /// keeps the g features of its k best-scoring harmonics and zeroes the rest. In training
    /// the scores get Gumbel noise and the hard top-k mask passes the gradient of the relaxed
    /// top-k (straight-through); the op is random then.
    Select {
        /// Harmonics kept per position.
        k: u64,
        /// Temperature τ of the relaxed top-k.
        temperature: Real,
    },
}

impl OpDef for Wave {
    fn name(&self) -> &'static str {
        match self {
            Wave::Encoding { .. } => "wave",
            Wave::Select { .. } => "harmonic_select",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Wave::Encoding { harmonics } => format!("harmonics={harmonics}"),
            Wave::Select { k, temperature } => format!("k={k} temperature={}", temperature.0),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Wave::Encoding { .. } => &["x"],
            Wave::Select { .. } => &["x", "scores"],
        }
    }

    fn is_pure(&self) -> bool {
        // The selection draws Gumbel noise in training.
        matches!(self, Wave::Encoding { .. })
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let out = Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        });
        match self {
            Wave::Encoding { harmonics } => match x.shape.as_slice() {
                [_, _, Dim::Fixed(d)] if *d == 3 * harmonics => out,
                _ => Err(shapes(format!(
                    "expects [batch, seq, 3·{harmonics}], got {x}"
                ))),
            },
            Wave::Select { k, .. } => {
                let sc = float_input(port(p, ins, "scores"))?;
                match (x.shape.as_slice(), sc.shape.as_slice()) {
                    ([b, s, Dim::Fixed(d)], [b2, s2, Dim::Fixed(h)])
                        if b == b2 && s == s2 && *h > 0 && d % h == 0 =>
                    {
                        if *k < 1 || k > h {
                            return Err(InferError::Attribute(format!(
                                "cannot keep {k} of {h} harmonics"
                            )));
                        }
                        out
                    }
                    _ => Err(shapes(format!(
                        "expects [batch, seq, H·g] and scores [batch, seq, H] with k ≤ H, got {x} and {sc}"
                    ))),
                }
            }
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
        let p = self.ports();
        let x = *port(p, ins, "x");
        let mut out = x.clone();
        match self {
            Wave::Encoding { .. } => {
                let softplus = crate::ir::reference::math::softplus;
                for (i, v) in out.data.iter_mut().enumerate() {
                    *v = match i % 3 {
                        0 | 1 => softplus(*v),
                        _ => std::f64::consts::PI * v.tanh(),
                    };
                }
            }
            Wave::Select { k, .. } => {
                // Inference: the k best scores of each position, ties to the lower harmonic.
                let sc = *port(p, ins, "scores");
                let (d, h) = (x.shape[2], sc.shape[2]);
                let g = d / h;
                for (r, row) in sc.data.chunks(h).enumerate() {
                    let mut idx: Vec<usize> = (0..h).collect();
                    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                    for &hh in &idx[*k as usize..] {
                        for j in 0..g {
                            out.data[r * d + hh * g + j] = 0.0;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        let x = port(p, ins, "x").f3();
        match self {
            Wave::Encoding { harmonics } => {
                let [b, s, _] = x.dims();
                let h = *harmonics as usize;
                let x = x.reshape([b, s, h, 3]);
                let fa = activation::softplus(x.clone().narrow(3, 0, 2), 1.0);
                let ph = x.narrow(3, 2, 1).tanh().mul_scalar(std::f64::consts::PI);
                V::F3(Tensor::cat(vec![fa, ph], 3).reshape([b, s, 3 * h]))
            }
            Wave::Select { k, temperature } => V::F3(harmonic_select(
                x,
                port(p, ins, "scores").f3(),
                *k as usize,
                temperature.0,
                ctx,
            )),
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// Top-k mask `[b, s, h]`: 1 on exactly k entries of each row, its k largest.
fn topk_mask(scores: Tensor<3>, k: usize) -> Tensor<3> {
    let [b, s, _] = scores.dims();
    let (_, idx) = scores.clone().topk_with_indices(k, 2);
    scores.zeros_like().scatter(
        2,
        idx,
        Tensor::ones([b, s, k], &scores.device()),
        burn::tensor::IndexingUpdateOp::Add,
    )
}

/// Harmonic selection (see [`Wave::Select`]). Training: Gumbel-perturbed scores, the hard
/// top-k mask forward and the relaxed top-k of Xie & Ermon (2019) backward, k softmaxes at
/// temperature τ each removing the mass already taken (α ← α + ln(1 − a)). When asked for
/// ([`Ctx::aux`]), it records `harmonic_sparsity`: the mean mass of softmax(scores/τ) outside
/// the noise-free top-k.
fn harmonic_select(x: Tensor<3>, scores: Tensor<3>, k: usize, tau: f64, ctx: &Ctx) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let h = scores.dims()[2];
    // The noise-free top-k is built only where it is read: for the sparsity statistic
    // (training) and as the mask at evaluation.
    if let Some(out) = ctx.aux.filter(|_| ctx.wants_harmonic_sparsity()) {
        let clean = topk_mask(scores.clone().detach(), k);
        let p = activation::softmax(scores.clone().div_scalar(tau), 2);
        let outside = (p * clean).sum_dim(2).neg().add_scalar(1.0).mean();
        out.borrow_mut()
            .harmonic_sparsity
            .push(outside.reshape([1]));
    }
    let mask = if ctx.train {
        let u = scores.random_like(Distribution::Uniform(1e-10, 1.0));
        let noisy = scores + u.log().neg().log().neg();
        let hard = topk_mask(noisy.clone().detach(), k);
        let mut alpha = noisy;
        let mut soft: Option<Tensor<3>> = None;
        for _ in 0..k {
            let a = activation::softmax(alpha.clone().div_scalar(tau), 2);
            alpha = alpha + a.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
            soft = Some(match soft {
                Some(t) => t + a,
                None => a,
            });
        }
        let soft = soft.unwrap_or_else(|| hard.clone());
        soft.clone() + (hard - soft).detach()
    } else {
        topk_mask(scores.detach(), k)
    };
    let g = d / h;
    x * mask
        .reshape([b, s, h, 1])
        .expand([b, s, h, g])
        .reshape([b, s, d])
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, value, Arg, Case};
    use super::*;
    use crate::runtime::{Aux, DeviceKind};
    use crate::util::Rng;

    fn ty(shape: &[Dim]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn every_check_passes_for_the_wave_encoding() {
        let mut rng = Rng::new(21);
        for (b, s, h) in [(1, 1, 1), (2, 6, 3), (3, 5, 7)] {
            let op = Wave::Encoding { harmonics: h };
            let case = Case {
                op: &op,
                args: vec![Arg::seq(&[b, s, 3 * h as usize], 1, &mut rng)],
                out_seq: Some(1),
                tol: 1e-5,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(s.min(3));
        }
    }

    #[test]
    fn every_check_passes_for_the_selection_at_inference() {
        let mut rng = Rng::new(22);
        for (b, s, h, g, k) in [
            (1, 1, 1, 1, 1),
            (2, 6, 3, 2, 1),
            (3, 5, 5, 3, 2),
            (2, 7, 4, 1, 4),
        ] {
            let op = Wave::Select {
                k,
                temperature: Real(0.7),
            };
            let case = Case {
                op: &op,
                args: vec![
                    Arg::seq(&[b, s, h * g], 1, &mut rng),
                    Arg::seq(&[b, s, h], 1, &mut rng),
                ],
                out_seq: Some(1),
                tol: 1e-6,
            };
            assert!(!op.is_pure());
            case.infers_the_forward_shape();
            case.matches_the_reference();
            // At inference the mask is the hard top-k of the scores: no gradient reaches
            // them (the training path passes one; see the test below).
            case.gradients_reach_every_input(&["scores"]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(s.min(3));
        }
    }

    #[test]
    fn the_selection_in_training_keeps_k_harmonics_and_passes_gradients_to_the_scores() {
        let device = DeviceKind::Cpu.device(true);
        device.seed(5);
        let mut rng = Rng::new(23);
        for (b, s, h, g, k) in [(2, 5, 4, 3, 1), (3, 7, 5, 2, 3), (1, 4, 3, 1, 3)] {
            let op = Wave::Select {
                k: k as u64,
                temperature: Real(0.5),
            };
            let x = Arg::seq(&[b, s, h * g], 1, &mut rng);
            let sc = Arg::seq(&[b, s, h], 1, &mut rng);
            let xv = value(&x.t, &device).require_grad();
            let sv = value(&sc.t, &device).require_grad();
            let aux = std::cell::RefCell::new(Aux::default());
            let c = Ctx {
                train: true,
                aux: Some(&aux),
                ..ctx(&device, b, s)
            };
            let y = op.forward(&[&xv, &sv], &c);
            assert_eq!(y.dims(), vec![b, s, h * g], "{op:?}");
            let out = host(y.clone());
            // Each position keeps the features of exactly k harmonics, unchanged.
            for (r, row) in out.chunks(h * g).enumerate() {
                let src = &x.t.data[r * h * g..(r + 1) * h * g];
                let mut kept = 0;
                for hh in 0..h {
                    let grp = hh * g..(hh + 1) * g;
                    if row[grp.clone()].iter().all(|v| *v == 0.0) {
                        continue;
                    }
                    kept += 1;
                    for j in grp {
                        assert!((f64::from(row[j]) - src[j]).abs() < 1e-6, "{op:?}");
                    }
                }
                assert_eq!(kept, k, "{op:?}: position {r}");
            }
            // The statistic: one per layer, a probability mass.
            let stat = aux.borrow().harmonic_sparsity.clone();
            assert_eq!(stat.len(), 1);
            let m = host(V::F1(stat[0].clone()))[0];
            assert!((0.0..=1.0).contains(&m), "{m}");
            let t = y.flat();
            let grads = (t.clone() * t.tanh()).sum().backward();
            for (name, v) in [("x", &xv), ("scores", &sv)] {
                let gr = host(
                    v.grad(&grads)
                        .unwrap_or_else(|| panic!("no gradient: {name}")),
                );
                assert!(gr.iter().all(|v| v.is_finite()), "{op:?} `{name}`");
                assert!(gr.iter().any(|v| *v != 0.0), "{op:?} `{name}` is zero");
            }
        }
    }

    #[test]
    fn infer_errors_have_their_variants() {
        let x = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(6)]);
        let sc = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        let ids = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        let enc = Wave::Encoding { harmonics: 2 };
        assert_eq!(enc.infer(std::slice::from_ref(&x)).unwrap(), x);
        assert_eq!(
            enc.infer(std::slice::from_ref(&ids)),
            Err(InferError::TokenIds)
        );
        assert!(matches!(
            Wave::Encoding { harmonics: 3 }.infer(std::slice::from_ref(&x)),
            Err(InferError::Shapes(_))
        ));
        let sel = |k| Wave::Select {
            k,
            temperature: Real(1.0),
        };
        assert_eq!(sel(2).infer(&[x.clone(), sc.clone()]).unwrap(), x);
        assert_eq!(sel(1).infer(&[ids, sc.clone()]), Err(InferError::TokenIds));
        for k in [0, 4] {
            assert!(
                matches!(
                    sel(k).infer(&[x.clone(), sc.clone()]),
                    Err(InferError::Attribute(_))
                ),
                "k = {k}"
            );
        }
        // 4 harmonics do not divide a width of 6.
        let sc4 = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        assert!(matches!(
            sel(1).infer(&[x.clone(), sc4]),
            Err(InferError::Shapes(_))
        ));
        assert_eq!(sel(1).matmul_flops(&[&x, &sc], 2, 3), 0);
        assert_eq!(enc.position_limit(&[&x]), None);
    }
}
