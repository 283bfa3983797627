//! The Mamba block (Gu & Dao 2023, structured as mamba.py): a selective state-space model
//! that decodes with the last inputs of its convolution and its SSM state.

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::math::{silu, softplus};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::{fused, V};
use burn::prelude::*;
use burn::tensor::activation;

/// `(x [b, s, d], in_proj [d, 2e], conv_w [e, k], conv_b [e], x_proj [e, r + 2n],
/// dt_w [r, e], dt_b [e], a_log [e, n], d_skip [e], out_proj [e, d]) → [b, s, d]`, with
/// e = expand · d inner channels, n states, r the rank of Δ and k the width of the causal
/// depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mamba {
    /// State size n.
    pub d_state: u64,
    /// Convolution width k.
    pub d_conv: u64,
    /// Rank r of Δ's projection.
    pub dt_rank: u64,
}

/// What a Mamba block keeps between decoding calls: the last k − 1 inputs of its convolution
/// `[b, k − 1, e]` and its SSM state `[b, e, n]`.
pub struct MambaState {
    conv: Tensor<3>,
    ssm: Tensor<3>,
}

impl OpState for MambaState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.conv = self.conv.clone().select(0, rows.clone());
        self.ssm = self.ssm.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.ssm.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

impl Mamba {
    /// The block from `init` (zeros when `None`): the outputs and the final state. The scan
    /// runs step by step; everything else is computed for all positions at once.
    fn run(&self, ins: &[&V], ctx: &Ctx, init: Option<MambaState>) -> (Tensor<3>, MambaState) {
        let p = self.ports();
        let at = |name: &str| *port(p, ins, name);
        let (n, k, r) = (
            self.d_state as usize,
            self.d_conv as usize,
            self.dt_rank as usize,
        );
        let x = at("x").f3();
        let [b, s, _] = x.dims();
        let w_in = at("in_proj").f2();
        let e = w_in.dims()[1] / 2;
        let xz = mm(x, w_in.unsqueeze::<3>(), ctx);
        let (xi, z) = (xz.clone().narrow(2, 0, e), xz.narrow(2, e, e));
        let MambaState { conv: prev, ssm: h } = init.unwrap_or_else(|| MambaState {
            conv: Tensor::<3>::zeros([b, k - 1, e], ctx.device),
            ssm: Tensor::<3>::zeros([b, e, n], ctx.device),
        });
        // Causal depthwise convolution over [previous k − 1 inputs, this call's inputs].
        let xp = Tensor::cat(vec![prev, xi], 1);
        let conv_w = at("conv_w").f2();
        let mut u = at("conv_b").f1().reshape([1, 1, e]).expand([b, s, e]);
        for j in 0..k {
            u = u + xp.clone().narrow(1, j, s) * conv_w.clone().narrow(1, j, 1).reshape([1, 1, e]);
        }
        let conv = xp.narrow(1, s, k - 1);
        let u = activation::silu(u);
        let proj = mm(u.clone(), at("x_proj").f2().unsqueeze::<3>(), ctx);
        let (delta, bm, cm) = (
            proj.clone().narrow(2, 0, r),
            proj.clone().narrow(2, r, n),
            proj.narrow(2, r + n, n),
        );
        let dt = activation::softplus(
            mm(delta, at("dt_w").f2().unsqueeze::<3>(), ctx) + at("dt_b").f1().reshape([1, 1, e]),
            1.0,
        );
        // The scan (see fused::selective_scan_plain for the op-by-op form).
        let a = at("a_log").f2().exp().neg().unsqueeze::<3>();
        let dtx = dt.clone() * u.clone();
        let (ys, ssm) = fused::selective_scan([dt, a, dtx, bm, cm], h);
        // y_t = C_t · h_t + D x_t.
        let y = ys + u * at("d_skip").f1().reshape([1, 1, e]);
        let out = mm(
            y * activation::silu(z),
            at("out_proj").f2().unsqueeze::<3>(),
            ctx,
        );
        (out, MambaState { conv, ssm })
    }
}

impl OpDef for Mamba {
    fn name(&self) -> &'static str {
        "mamba"
    }

    fn attrs(&self) -> String {
        format!(
            "d_state={} d_conv={} dt_rank={}",
            self.d_state, self.d_conv, self.dt_rank
        )
    }

    fn ports(&self) -> &'static [&'static str] {
        &[
            "x", "in_proj", "conv_w", "conv_b", "x_proj", "dt_w", "dt_b", "a_log", "d_skip",
            "out_proj",
        ]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let Mamba {
            d_state,
            d_conv,
            dt_rank,
        } = *self;
        if d_state == 0 || d_conv == 0 || dt_rank == 0 {
            return Err(InferError::Attribute(format!(
                "mamba needs a state, a convolution and a rank of Δ, got d_state={d_state} \
                 d_conv={d_conv} dt_rank={dt_rank}"
            )));
        }
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let d = match x.shape.as_slice() {
            [_, _, Dim::Fixed(d)] => *d,
            _ => return Err(shapes(format!("expects [batch, seq, width], got {x}"))),
        };
        let in_proj = port(p, ins, "in_proj");
        let e = match in_proj.shape.as_slice() {
            [Dim::Fixed(i), Dim::Fixed(o)] if *i == d && o % 2 == 0 => o / 2,
            _ => {
                return Err(shapes(format!(
                    "mamba in_proj {in_proj} does not fit input {x}"
                )))
            }
        };
        let want: [(&str, &[u64]); 8] = [
            ("conv_w", &[e, d_conv]),
            ("conv_b", &[e]),
            ("x_proj", &[e, dt_rank + 2 * d_state]),
            ("dt_w", &[dt_rank, e]),
            ("dt_b", &[e]),
            ("a_log", &[e, d_state]),
            ("d_skip", &[e]),
            ("out_proj", &[e, d]),
        ];
        for (name, w) in want {
            let w: Vec<Dim> = w.iter().map(|&d| Dim::Fixed(d)).collect();
            let got = port(p, ins, name);
            if got.shape != w {
                // Numbered as today: the input's position among the op's inputs.
                let k = p.iter().position(|q| *q == name).unwrap_or(0);
                return Err(shapes(format!(
                    "mamba parameter {k} has shape {got}, expected {w:?}"
                )));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        // The four projections at every position (the convolution and scan are elementwise).
        ["in_proj", "x_proj", "dt_w", "out_proj"]
            .iter()
            .map(|name| {
                let w = port(p, ins, name);
                2 * batch * seq * w.len(0, seq) * w.len(1, seq)
            })
            .sum()
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

    /// The block step by step (Gu & Dao 2023; mamba.py): in_proj → (x, z); x ← SiLU(causal
    /// depthwise conv(x)); (δ, B, C) = x_proj(x); Δ = softplus(dt_proj(δ)); A = −exp(A_log);
    /// h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t; y_t = C_t · h_t + D ⊙ x_t;
    /// out_proj(y ⊙ SiLU(z)).
    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let at = |name: &str| *port(p, ins, name);
        let (n, k, r) = (
            self.d_state as usize,
            self.d_conv as usize,
            self.dt_rank as usize,
        );
        let x = at("x");
        let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
        let (w_in, conv_w, conv_b, w_x, dt_w, dt_b, a_log, d_skip, w_out) = (
            at("in_proj"),
            at("conv_w"),
            at("conv_b"),
            at("x_proj"),
            at("dt_w"),
            at("dt_b"),
            at("a_log"),
            at("d_skip"),
            at("out_proj"),
        );
        let e = w_in.shape[1] / 2;
        let pw = r + 2 * n;
        let mut out = RefTensor::zeros(&[b, s, d]);
        for bi in 0..b {
            // in_proj
            let mut xs = vec![vec![0.0; e]; s];
            let mut zs = vec![vec![0.0; e]; s];
            for t in 0..s {
                for o in 0..2 * e {
                    let v: f64 = (0..d)
                        .map(|i| x.data[(bi * s + t) * d + i] * w_in.data[i * 2 * e + o])
                        .sum();
                    if o < e {
                        xs[t][o] = v;
                    } else {
                        zs[t][o - e] = v;
                    }
                }
            }
            let mut h = vec![vec![0.0; n]; e];
            for (t, z) in zs.iter().enumerate() {
                // causal depthwise convolution: tap j reads position t + j − (k − 1)
                let u: Vec<f64> = (0..e)
                    .map(|c| {
                        let mut acc = conv_b.data[c];
                        for j in 0..k {
                            if let Some(tt) = (t + j).checked_sub(k - 1) {
                                acc += conv_w.data[c * k + j] * xs[tt][c];
                            }
                        }
                        silu(acc)
                    })
                    .collect();
                let proj: Vec<f64> = (0..pw)
                    .map(|o| (0..e).map(|c| u[c] * w_x.data[c * pw + o]).sum())
                    .collect();
                let (delta_in, bb, cc) = (&proj[..r], &proj[r..r + n], &proj[r + n..]);
                for c in 0..e {
                    let dt = softplus(
                        dt_b.data[c]
                            + (0..r)
                                .map(|j| delta_in[j] * dt_w.data[j * e + c])
                                .sum::<f64>(),
                    );
                    let mut y = d_skip.data[c] * u[c];
                    for st in 0..n {
                        let a = -a_log.data[c * n + st].exp();
                        h[c][st] = (dt * a).exp() * h[c][st] + dt * bb[st] * u[c];
                        y += cc[st] * h[c][st];
                    }
                    let g = y * silu(z[c]);
                    for o in 0..d {
                        out.data[(bi * s + t) * d + o] += g * w_out.data[c * d + o];
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        V::F3(self.run(ins, ctx, None).0)
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let (y, next) = self.run(ins, ctx, take_state::<MambaState>(state));
        *state = Some(Box::new(next));
        V::F3(y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, value, Arg, Case};
    use super::*;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;

    fn ty(shape: &[u64]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        }
    }

    /// The parameter shapes of `op` for width d and e inner channels, in port order.
    fn param_shapes(op: &Mamba, d: usize, e: usize) -> Vec<Vec<usize>> {
        let (n, k, r) = (op.d_state as usize, op.d_conv as usize, op.dt_rank as usize);
        vec![
            vec![d, 2 * e],
            vec![e, k],
            vec![e],
            vec![e, r + 2 * n],
            vec![r, e],
            vec![e],
            vec![e, n],
            vec![e],
            vec![e, d],
        ]
    }

    /// Random inputs for x `[b, s, d]`, scaled as a trained block's are (weights ~ 1/√fan-in,
    /// so the outputs stay within a few units and f32 keeps 1e-4 of them).
    fn args(op: &Mamba, b: usize, s: usize, d: usize, e: usize, rng: &mut Rng) -> Vec<Arg> {
        let mut args = vec![Arg::seq(&[b, s, d], 1, rng)];
        for shape in param_shapes(op, d, e) {
            let mut a = Arg::fixed(&shape, rng);
            let fan_in = if shape.len() == 2 { shape[0] } else { 1 };
            for v in &mut a.t.data {
                *v /= (fan_in as f64).sqrt();
            }
            args.push(a);
        }
        args
    }

    #[test]
    fn every_check_passes_with_a_convolution_wider_and_narrower_than_the_prompt() {
        let mut rng = Rng::new(31);
        for (op, (b, s, d, e), prompt) in [
            // k − 1 = 3 earlier inputs, a prompt of 2: the state carries the zero padding.
            (
                Mamba {
                    d_state: 4,
                    d_conv: 4,
                    dt_rank: 2,
                },
                (2, 6, 3, 6),
                2,
            ),
            (
                Mamba {
                    d_state: 3,
                    d_conv: 2,
                    dt_rank: 1,
                },
                (3, 7, 5, 5),
                4,
            ),
            (
                Mamba {
                    d_state: 1,
                    d_conv: 3,
                    dt_rank: 3,
                },
                (1, 5, 2, 4),
                3,
            ),
        ] {
            let case = Case {
                op: &op,
                args: args(&op, b, s, d, e, &mut rng),
                out_seq: Some(1),
                tol: 1e-4,
            };
            case.passes_the_checks_of_a_decoding_op(prompt, &case.reversed_rows());
        }
    }

    #[test]
    fn attributes_flops_and_the_mixed_precision_path() {
        let op = Mamba {
            d_state: 4,
            d_conv: 3,
            dt_rank: 2,
        };
        assert_eq!(op.attrs(), "d_state=4 d_conv=3 dt_rank=2");
        let (d, e) = (5u64, 10u64);
        let x = ty(&[2, 7, d]);
        let params: Vec<TensorType> = param_shapes(&op, d as usize, e as usize)
            .iter()
            .map(|s| ty(&s.iter().map(|&v| v as u64).collect::<Vec<_>>()))
            .collect();
        let ins: Vec<&TensorType> = std::iter::once(&x).chain(&params).collect();
        let flops = 2 * 2 * 7 * (d * 2 * e + e * (2 + 8) + 2 * e + e * d);
        assert_eq!(op.matmul_flops(&ins, 2, 7), flops);
        // With a matmul dtype the products go through `mm`: the same numbers in f32.
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(2);
        let a = args(&op, 2, 7, d as usize, e as usize, &mut rng);
        let vs: Vec<V> = a.iter().map(|a| value(&a.t, &device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let plain = host(op.forward(&refs, &ctx(&device, 2, 7)));
        let mixed = host(op.forward(
            &refs,
            &Ctx {
                matmul_dtype: Some(burn::tensor::FloatDType::F32),
                ..ctx(&device, 2, 7)
            },
        ));
        for (p, m) in plain.iter().zip(&mixed) {
            assert!((p - m).abs() < 1e-5 * (1.0 + p.abs()), "{p} vs {m}");
        }
    }

    #[test]
    fn infer_errors_name_what_does_not_fit() {
        let op = Mamba {
            d_state: 2,
            d_conv: 3,
            dt_rank: 1,
        };
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)],
        };
        let good: Vec<TensorType> = std::iter::once(x.clone())
            .chain(
                param_shapes(&op, 3, 6)
                    .iter()
                    .map(|s| ty(&s.iter().map(|&v| v as u64).collect::<Vec<_>>())),
            )
            .collect();
        assert_eq!(op.infer(&good).unwrap(), x);
        let mut ids = good.clone();
        ids[0] = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(op.infer(&ids).unwrap_err(), InferError::TokenIds);
        let mut odd = good.clone();
        odd[1] = ty(&[3, 11]);
        assert!(matches!(op.infer(&odd), Err(InferError::Shapes(m)) if m.contains("in_proj")));
        let mut a_log = good.clone();
        a_log[7] = ty(&[6, 3]);
        assert_eq!(
            op.infer(&a_log).unwrap_err(),
            InferError::Shapes(
                "mamba parameter 7 has shape f32[6, 3], expected [Fixed(6), Fixed(2)]".into()
            )
        );
        let no_conv = Mamba { d_conv: 0, ..op };
        assert!(matches!(
            no_conv.infer(&good),
            Err(InferError::Attribute(_))
        ));
    }
}
