//! Forecasting: RevIN normalization and its inverse around a model, channel-independent
//! patching of the lookback window, and PatchTST's flatten head. A forecaster reads a whole
//! lookback window and does not decode, so none of these is incremental; each mixes all the
//! steps of the window.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{Dim, Mixing, TensorType};
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// A forecasting op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forecast {
    /// RevIN normalization `(x [b, L, C], gamma [C], beta [C]) → [b, L, C]`: each series
    /// (per example and channel) minus its mean over L, divided by its standard deviation
    /// (√(var + 1e-5)), then · gamma + beta.
    RevinNorm,
    /// RevIN's inverse `(y [b, H, C], x [b, L, C], gamma [C], beta [C]) → [b, H, C]`:
    /// (y − beta) / gamma · std + mean, with x's statistics.
    RevinDenorm,
    /// Channel-independent patching `[b, L, C] → [b·C, N, len]`: each channel's series,
    /// padded with `stride` copies of its last value, cut into N = ⌊(L − len)/stride⌋ + 2
    /// patches of `len` steps, `stride` apart.
    Patch {
        /// Patch length P.
        len: u64,
        /// Stride S.
        stride: u64,
    },
    /// Flatten head `(x [b·C, N, D], weight [N·D, H], bias [H]) → [b, H, C]`.
    Head {
        /// Channels C.
        channels: u64,
    },
}

impl OpDef for Forecast {
    fn name(&self) -> &'static str {
        match self {
            Forecast::RevinNorm => "revin_norm",
            Forecast::RevinDenorm => "revin_denorm",
            Forecast::Patch { .. } => "patch",
            Forecast::Head { .. } => "forecast_head",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Forecast::RevinNorm | Forecast::RevinDenorm => String::new(),
            Forecast::Patch { len, stride } => format!("len={len} stride={stride}"),
            Forecast::Head { channels } => format!("channels={channels}"),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Forecast::RevinNorm => &["x", "gamma", "beta"],
            Forecast::RevinDenorm => &["y", "x", "gamma", "beta"],
            Forecast::Patch { .. } => &["x"],
            Forecast::Head { .. } => &["x", "weight", "bias"],
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        // RevIN's statistics, every patch's padding and the head's flattening read all the
        // steps of the lookback window.
        Mixing::Full
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let f32 = super::f32_type;
        match self {
            Forecast::RevinNorm | Forecast::RevinDenorm => {
                // The normalized series (RevinNorm's x, RevinDenorm's y) comes first.
                let first = match self {
                    Forecast::RevinDenorm => "y",
                    Forecast::RevinNorm | Forecast::Patch { .. } | Forecast::Head { .. } => "x",
                };
                let y = float_input(port(p, ins, first))?;
                let c = y.shape.get(2).copied();
                let (g, b) = (port(p, ins, "gamma"), port(p, ins, "beta"));
                let x_fits = match self {
                    Forecast::RevinDenorm => port(p, ins, "x").shape.get(2) == c.as_ref(),
                    Forecast::RevinNorm | Forecast::Patch { .. } | Forecast::Head { .. } => true,
                };
                if y.shape.len() != 3
                    || g.shape != [c.unwrap_or(Dim::Batch)]
                    || b.shape != g.shape
                    || !x_fits
                {
                    return Err(shapes(format!("RevIN expects [batch, steps, channels] series with per-channel parameters, got {y}")));
                }
                f32(y.shape.clone())
            }
            Forecast::Patch { len, stride } => {
                if *len == 0 || *stride == 0 {
                    return Err(InferError::Attribute(format!(
                        "patches of {len} steps, {stride} apart, cut nothing"
                    )));
                }
                let x = float_input(port(p, ins, "x"))?;
                match x.shape.as_slice() {
                    [Dim::Batch, Dim::Fixed(l), Dim::Fixed(c)] if l >= len => f32(vec![
                        Dim::BatchTimes(*c),
                        Dim::Fixed((l - len) / stride + 2),
                        Dim::Fixed(*len),
                    ]),
                    _ => Err(shapes(format!(
                    "patches of {len} steps need a series [batch, steps ≥ {len}, channels], got {x}"
                ))),
                }
            }
            Forecast::Head { channels } => {
                if *channels == 0 {
                    return Err(InferError::Attribute(
                        "the forecast head needs at least one channel".into(),
                    ));
                }
                let x = float_input(port(p, ins, "x"))?;
                let (w, bias) = (port(p, ins, "weight"), port(p, ins, "bias"));
                match (x.shape.as_slice(), w.shape.as_slice()) {
                    (
                        [Dim::BatchTimes(c), Dim::Fixed(n), Dim::Fixed(d)],
                        [Dim::Fixed(i), Dim::Fixed(h)],
                    ) if c == channels && n * d == *i && bias.shape == [Dim::Fixed(*h)] => {
                        f32(vec![Dim::Batch, Dim::Fixed(*h), Dim::Fixed(*c)])
                    }
                    _ => Err(shapes(format!(
                    "the forecast head expects patches [batch*{channels}, patches, width], got {x}"
                ))),
                }
            }
        }
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        match self {
            // Each of the batch·C flattened series [N·D] times the weight [N·D, H].
            Forecast::Head { channels } => {
                let w = port(self.ports(), ins, "weight");
                2 * batch * channels * w.len(0, seq) * w.len(1, seq)
            }
            Forecast::RevinNorm | Forecast::RevinDenorm | Forecast::Patch { .. } => 0,
        }
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        // A forecaster does not decode.
        false
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        Ok(match self {
            Forecast::RevinNorm | Forecast::RevinDenorm => {
                let denorm = *self == Forecast::RevinDenorm;
                let x = *port(p, ins, "x");
                let y = if denorm { *port(p, ins, "y") } else { x };
                let (g, be) = (*port(p, ins, "gamma"), *port(p, ins, "beta"));
                let (b, s, c) = (y.shape[0], y.shape[1], y.shape[2]);
                let mut out = y.clone();
                for bi in 0..b {
                    for ci in 0..c {
                        let (m, sd) = series_stats(x, bi, ci);
                        for t in 0..s {
                            let v = &mut out.data[(bi * s + t) * c + ci];
                            *v = if denorm {
                                (*v - be.data[ci]) / g.data[ci] * sd + m
                            } else {
                                (*v - m) / sd * g.data[ci] + be.data[ci]
                            };
                        }
                    }
                }
                out
            }
            Forecast::Patch { len, stride } => {
                let x = *port(p, ins, "x");
                let (b, l, c) = (x.shape[0], x.shape[1], x.shape[2]);
                let (pl, s) = (*len as usize, *stride as usize);
                let n = (l - pl) / s + 2;
                let mut out = RefTensor::zeros(&[b * c, n, pl]);
                for bi in 0..b {
                    for ci in 0..c {
                        for ni in 0..n {
                            for pi in 0..pl {
                                // Past the end: the last value, repeated.
                                let t = (ni * s + pi).min(l - 1);
                                out.data[((bi * c + ci) * n + ni) * pl + pi] =
                                    x.data[(bi * l + t) * c + ci];
                            }
                        }
                    }
                }
                out
            }
            Forecast::Head { channels } => {
                let (x, w, bias) = (
                    *port(p, ins, "x"),
                    *port(p, ins, "weight"),
                    *port(p, ins, "bias"),
                );
                let (bc, n, d) = (x.shape[0], x.shape[1], x.shape[2]);
                let h = w.shape[1];
                let c = *channels as usize;
                let mut out = RefTensor::zeros(&[bc / c, h, c]);
                for r in 0..bc {
                    let flat = &x.data[r * n * d..(r + 1) * n * d];
                    for hi in 0..h {
                        let v = bias.data[hi]
                            + flat
                                .iter()
                                .enumerate()
                                .map(|(i, a)| a * w.data[i * h + hi])
                                .sum::<f64>();
                        out.data[((r / c) * h + hi) * c + r % c] = v;
                    }
                }
                out
            }
        })
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        match self {
            Forecast::RevinNorm => {
                let x = port(p, ins, "x").f3();
                let (g, b) = (port(p, ins, "gamma").f1(), port(p, ins, "beta").f1());
                let c = g.dims()[0];
                let (mean, std) = revin_stats(&x);
                V::F3((x - mean) / std * g.reshape([1, 1, c]) + b.reshape([1, 1, c]))
            }
            Forecast::RevinDenorm => {
                let (y, x) = (port(p, ins, "y").f3(), port(p, ins, "x").f3());
                let (g, b) = (port(p, ins, "gamma").f1(), port(p, ins, "beta").f1());
                let c = g.dims()[0];
                let (mean, std) = revin_stats(&x);
                V::F3((y - b.reshape([1, 1, c])) / g.reshape([1, 1, c]) * std + mean)
            }
            Forecast::Patch { len, stride } => {
                let x = port(p, ins, "x").f3();
                let [b, l, c] = x.dims();
                let (pl, s) = (*len as usize, *stride as usize);
                let n = (l - pl) / s + 2;
                let last = x.clone().narrow(1, l - 1, 1).expand([b, s, c]);
                let xp = Tensor::cat(vec![x, last], 1).swap_dims(1, 2); // [b, c, l + s]
                let patches: Vec<Tensor<3>> =
                    (0..n).map(|i| xp.clone().narrow(2, i * s, pl)).collect();
                V::F3(Tensor::stack::<4>(patches, 2).reshape([b * c, n, pl]))
            }
            Forecast::Head { channels } => {
                let x = port(p, ins, "x").f3();
                let [bc, n, d] = x.dims();
                let (w, bias) = (port(p, ins, "weight").f2(), port(p, ins, "bias").f1());
                let h = w.dims()[1];
                let c = *channels as usize;
                let z = mm(x.reshape([bc, n * d]), w, ctx) + bias.reshape([1, h]);
                V::F3(z.reshape([bc / c, c, h]).swap_dims(1, 2))
            }
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// RevIN statistics of series `[b, L, C]`: mean and √(var + 1e-5) over L, `[b, 1, C]`.
fn revin_stats(x: &Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let mean = x.clone().mean_dim(1);
    let var = (x.clone() - mean.clone()).powi_scalar(2).mean_dim(1);
    (mean, (var + 1e-5).sqrt())
}

/// The float64 reference's RevIN statistics: mean and √(var + 1e-5) of channel `c` of example
/// `b` over the steps of `x` `[B, L, C]`.
fn series_stats(x: &RefTensor, b: usize, c: usize) -> (f64, f64) {
    let (l, cs) = (x.shape[1], x.shape[2]);
    let vals: Vec<f64> = (0..l).map(|t| x.data[(b * l + t) * cs + c]).collect();
    let m = vals.iter().sum::<f64>() / l as f64;
    let v = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / l as f64;
    (m, (v + 1e-5).sqrt())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{host_tensor, narrow, random, value, Arg, Case};
    use super::*;
    use crate::ir::DType;
    use crate::ir::Op;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;

    /// RevIN's gamma: random, away from 0 (RevinDenorm divides by it).
    fn gamma(c: usize, rng: &mut Rng) -> Arg {
        let mut a = Arg::fixed(&[c], rng);
        a.t.data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        a
    }

    /// Every check of `case`, whose inputs hold the batch on axis 0 as `lead` says.
    fn check(case: &Case<Forecast>, batch: usize, lead: &[Option<Dim>]) {
        case.infers_the_forward_shape_with_batch(batch, lead);
        case.matches_the_reference();
        case.gradients_reach_every_input(&[]);
        // Mixing Full: there is no earlier output a later step must leave alone.
        case.later_positions_change_no_earlier_output();
    }

    #[test]
    fn revin_passes_every_check() {
        let mut rng = Rng::new(21);
        for (b, l, h, c) in [(2, 7, 3, 3), (3, 12, 5, 1), (1, 5, 9, 4)] {
            let x = Arg::fixed(&[b, l, c], &mut rng);
            let (g, be) = (gamma(c, &mut rng), Arg::fixed(&[c], &mut rng));
            let norm = Case {
                op: &Forecast::RevinNorm,
                args: vec![x.clone(), g.clone(), be.clone()],
                out_seq: None,
                tol: 1e-4,
            };
            check(&norm, b, &[Some(Dim::Batch), None, None]);
            let denorm = Case {
                op: &Forecast::RevinDenorm,
                args: vec![Arg::fixed(&[b, h, c], &mut rng), x, g, be],
                out_seq: None,
                tol: 1e-4,
            };
            check(
                &denorm,
                b,
                &[Some(Dim::Batch), Some(Dim::Batch), None, None],
            );
        }
    }

    #[test]
    fn patch_passes_every_check_whether_the_stride_divides_or_not() {
        let mut rng = Rng::new(22);
        // (b, L, C, len, stride): a stride that divides L − len, one that does not, a window
        // of one patch (L = len), and a stride past the patch length (steps no patch reads
        // but the padding).
        for (b, l, c, len, stride) in [
            (2, 12, 3, 4, 2),
            (3, 13, 2, 5, 3),
            (1, 7, 1, 7, 4),
            (2, 9, 2, 2, 5),
        ] {
            let op = Forecast::Patch { len, stride };
            let case = Case {
                op: &op,
                args: vec![Arg::fixed(&[b, l, c], &mut rng)],
                out_seq: None,
                tol: 1e-6,
            };
            check(&case, b, &[Some(Dim::Batch)]);
        }
    }

    #[test]
    fn the_head_passes_every_check_with_one_channel_or_several() {
        let mut rng = Rng::new(23);
        for (b, c, n, d, h) in [(2, 3, 4, 5, 6), (3, 1, 3, 2, 7), (1, 2, 1, 3, 1)] {
            let op = Forecast::Head { channels: c };
            let case = Case {
                op: &op,
                args: vec![
                    Arg::fixed(&[b * c as usize, n, d], &mut rng),
                    Arg::fixed(&[n * d, h], &mut rng),
                    Arg::fixed(&[h], &mut rng),
                ],
                out_seq: None,
                tol: 1e-4,
            };
            check(&case, b, &[Some(Dim::BatchTimes(c)), None, None]);
        }
    }

    #[test]
    fn the_answers_about_mixing_decoding_and_flops_are_todays() {
        let ops = [
            Forecast::RevinNorm,
            Forecast::RevinDenorm,
            Forecast::Patch { len: 4, stride: 2 },
            Forecast::Head { channels: 3 },
        ];
        let names = ["revin_norm", "revin_denorm", "patch", "forecast_head"];
        let attrs = ["", "", "len=4 stride=2", "channels=3"];
        for ((op, name), attrs) in ops.into_iter().zip(names).zip(attrs) {
            let o = Op::Forecast(op);
            assert_eq!((o.name(), o.attrs().as_str()), (name, attrs));
            assert_eq!(o.mixing(), Mixing::Full, "{op:?}");
            assert!(o.is_pure() && !op.incremental(), "{op:?}");
            assert_eq!(o.position_limit(&[]), None);
        }
        let arity: Vec<usize> = ops.iter().map(|o| Op::Forecast(*o).arity()).collect();
        assert_eq!(arity, [3, 4, 1, 3]);
        let fixed = |v: &[u64]| TensorType {
            dtype: DType::F32,
            shape: v.iter().map(|&d| Dim::Fixed(d)).collect(),
        };
        let (x, w) = (fixed(&[4, 5]), fixed(&[20, 6]));
        // batch · C rows of N·D features times H outputs.
        assert_eq!(ops[3].matmul_flops(&[&x, &w], 2, 1), 2 * 2 * 3 * 20 * 6);
        assert_eq!(ops[2].matmul_flops(&[&x], 2, 1), 0);
    }

    #[test]
    fn every_output_step_reads_the_last_step_of_the_window() {
        // Why the mixing is Full: moving the last lookback step moves the first output step.
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(24);
        let (b, l, c, h) = (2, 6, 3, 4);
        let x = random(&[b, l, c], &mut rng);
        let mut moved = x.clone();
        for bi in 0..b {
            for ci in 0..c {
                moved.data[(bi * l + l - 1) * c + ci] += 3.0;
            }
        }
        let (g, be, y) = (
            gamma(c, &mut rng).t,
            random(&[c], &mut rng),
            random(&[b, h, c], &mut rng),
        );
        let first = |op: Forecast, x: &RefTensor| {
            let ins: Vec<&RefTensor> = match op {
                Forecast::RevinNorm => vec![x, &g, &be],
                _ => vec![&y, x, &g, &be],
            };
            let vs: Vec<V> = ins.iter().map(|t| value(t, &device)).collect();
            let refs: Vec<&V> = vs.iter().collect();
            let out = host_tensor(op.forward(&refs, &super::super::testing::ctx(&device, b, l)));
            narrow(&out, 1, 0, 1)
        };
        for op in [Forecast::RevinNorm, Forecast::RevinDenorm] {
            let (before, after) = (first(op, &x), first(op, &moved));
            assert!(
                before.data.iter().zip(&after.data).all(|(p, q)| p != q),
                "{op:?}"
            );
        }
    }

    #[test]
    fn infer_errors_have_their_variants() {
        let ty = |dtype, shape: &[Dim]| TensorType {
            dtype,
            shape: shape.to_vec(),
        };
        let f = |shape: &[Dim]| ty(DType::F32, shape);
        let (bb, fx) = (Dim::Batch, Dim::Fixed);
        let series = f(&[bb, fx(12), fx(3)]);
        let ids = ty(DType::I64, &[bb, Dim::Seq]);
        let per_channel = f(&[fx(3)]);
        let norm = Forecast::RevinNorm;
        let ok = [series.clone(), per_channel.clone(), per_channel.clone()];
        assert_eq!(norm.infer(&ok).unwrap(), series);
        let e = norm
            .infer(&[ids.clone(), per_channel.clone(), per_channel.clone()])
            .unwrap_err();
        assert_eq!(e, InferError::TokenIds);
        let e = norm
            .infer(&[series.clone(), f(&[fx(2)]), per_channel.clone()])
            .unwrap_err();
        assert_eq!(e, shapes("RevIN expects [batch, steps, channels] series with per-channel parameters, got f32[batch, 12, 3]"));
        // RevinDenorm: the forecast and the series it denormalizes by differ in channels.
        let forecast = f(&[bb, fx(5), fx(3)]);
        let denorm = [
            forecast.clone(),
            f(&[bb, fx(12), fx(2)]),
            per_channel.clone(),
            per_channel.clone(),
        ];
        let e = Forecast::RevinDenorm.infer(&denorm).unwrap_err();
        assert!(matches!(e, InferError::Shapes(_)), "{e}");
        let patch = Forecast::Patch { len: 4, stride: 2 };
        assert_eq!(
            patch.infer(std::slice::from_ref(&series)).unwrap(),
            f(&[Dim::BatchTimes(3), fx(6), fx(4)])
        );
        assert_eq!(
            patch.infer(std::slice::from_ref(&ids)).unwrap_err(),
            InferError::TokenIds
        );
        for x in [f(&[bb, fx(3), fx(3)]), f(&[bb, Dim::Seq, fx(3)])] {
            let e = patch.infer(std::slice::from_ref(&x)).unwrap_err();
            assert_eq!(
                e,
                shapes(format!(
                    "patches of 4 steps need a series [batch, steps ≥ 4, channels], got {x}"
                ))
            );
        }
        for bad in [
            Forecast::Patch { len: 4, stride: 0 },
            Forecast::Patch { len: 0, stride: 2 },
        ] {
            let e = bad.infer(std::slice::from_ref(&series)).unwrap_err();
            assert!(matches!(e, InferError::Attribute(_)), "{bad:?}: {e}");
        }
        let patches = f(&[Dim::BatchTimes(3), fx(6), fx(8)]);
        let (w, b) = (f(&[fx(48), fx(5)]), f(&[fx(5)]));
        let head = Forecast::Head { channels: 3 };
        let ins = [patches.clone(), w.clone(), b.clone()];
        assert_eq!(head.infer(&ins).unwrap(), f(&[bb, fx(5), fx(3)]));
        let ins = [ids, w.clone(), b.clone()];
        assert_eq!(head.infer(&ins).unwrap_err(), InferError::TokenIds);
        let e = Forecast::Head { channels: 2 }
            .infer(&[patches.clone(), w.clone(), b.clone()])
            .unwrap_err();
        assert_eq!(
            e,
            shapes("the forecast head expects patches [batch*2, patches, width], got f32[batch*3, 6, 8]")
        );
        let e = Forecast::Head { channels: 0 }
            .infer(&[patches, w, b])
            .unwrap_err();
        assert!(matches!(e, InferError::Attribute(_)), "{e}");
    }
}
