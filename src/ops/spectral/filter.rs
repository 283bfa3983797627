//! The fused spectral filter: `crop(irfft(rfft(pad(x)) · G))` as one op (see
//! `passes::spectral`), circular with a learned complex gate or causal with a learned
//! kernel, by FFT or as a dense convolution matrix; the causal form decodes one position at a
//! time from the inputs of its latest positions ([`FilterHistory`]).

use super::super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use super::fft::{irfft4, irfft_reference};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::fused;
use crate::runtime::ops::{apply_per_channel, conv_matrix, pad_axis, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// Which algorithm a fused spectral filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpectralAlgo {
    /// rfft → multiply → irfft, O(n log n) (n a power of two; otherwise the dense product).
    Fft,
    /// The equivalent (circular or causal) convolution as a dense matrix product, O(n²), faster
    /// for short sequences.
    Dense,
}

/// Fused spectral filter `(x [b, s, d], p) → [b, s, d]`. Circular form: p is the complex gate
/// `[n/2+1, d, 2]` and y = irfft(rfft(pad(x, n)) · p)[..s]. Causal form: p is a kernel
/// `[n/2, d]` and y = (p * x) a causal linear convolution, computed with padding to n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpectralFilter {
    /// Transform length.
    pub n: u64,
    /// Causal (kernel) form.
    pub causal: bool,
    /// Algorithm.
    pub algo: SpectralAlgo,
}

impl SpectralFilter {
    /// The port of its parameter: the causal form's kernel or the circular form's gate.
    fn param_port(&self) -> &'static str {
        if self.causal {
            "kernel"
        } else {
            "gate"
        }
    }

    /// The filter by its algorithm: rfft → multiply → irfft, or the dense convolution matrix.
    fn by_algo(&self, x: Tensor<3>, param: &V, ctx: &Ctx) -> Tensor<3> {
        let n = self.n as usize;
        let s = x.dims()[1];
        if self.algo == SpectralAlgo::Fft && n.is_power_of_two() {
            let xp = pad_axis(x, 1, n, ctx);
            let (xr, xi) = burn::signal::rfft(xp, 1, Some(n));
            let (gr, gi) = if self.causal {
                let kp = pad_axis(param.f2(), 0, n, ctx);
                let (kr, ki) = burn::signal::rfft(kp, 0, Some(n));
                (kr.unsqueeze::<3>(), ki.unsqueeze::<3>())
            } else {
                let g = param.f3();
                let [f, d, _] = g.dims();
                (
                    g.clone().narrow(2, 0, 1).reshape([1, f, d]),
                    g.narrow(2, 1, 1).reshape([1, f, d]),
                )
            };
            let yr = xr.clone() * gr.clone() - xi.clone() * gi.clone();
            let yi = xr * gi + xi * gr;
            burn::signal::irfft(yr, yi, 1, Some(n)).narrow(1, 0, s)
        } else {
            let kernel = if self.causal {
                param.f2()
            } else {
                let g = param.f3();
                let [f, d, _] = g.dims();
                irfft4(g.reshape([1, f, d, 2]), n, ctx).reshape([n, d])
            };
            let m = conv_matrix(kernel, s, n, self.causal, ctx.device);
            apply_per_channel(m, x)
        }
    }
}

impl OpDef for SpectralFilter {
    fn name(&self) -> &'static str {
        "spectral_filter"
    }

    fn attrs(&self) -> String {
        format!(
            "n={} causal={} algo={}",
            self.n,
            self.causal,
            match self.algo {
                SpectralAlgo::Fft => "fft",
                SpectralAlgo::Dense => "dense",
            }
        )
    }

    fn ports(&self) -> &'static [&'static str] {
        if self.causal {
            &["x", "kernel"]
        } else {
            &["x", "gate"]
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        if self.causal {
            Mixing::Causal
        } else {
            Mixing::Full
        }
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let (n, p) = (self.n, self.ports());
        let x = float_input(port(p, ins, "x"))?;
        let param = float_input(port(p, ins, self.param_port()))?;
        let [_, _, d] = x.shape.as_slice() else {
            return Err(shapes(format!("expects [batch, seq, width], got {x}")));
        };
        let want = if self.causal {
            vec![Dim::Fixed(n / 2), *d]
        } else {
            vec![Dim::Fixed(n / 2 + 1), *d, Dim::Fixed(2)]
        };
        if param.shape != want {
            return Err(shapes(format!(
                "spectral filter parameter {param} does not fit input {x}"
            )));
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        match self.algo {
            // One multiply-add per output value and tap of the n × n matrix's row.
            SpectralAlgo::Dense => 2 * port(self.ports(), ins, "x").numel(batch, seq) * self.n,
            SpectralAlgo::Fft => 0,
        }
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        let n = self.n as usize;
        Some(if self.causal { n / 2 } else { n })
    }

    fn incremental(&self) -> bool {
        self.causal
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let ports = self.ports();
        let (x, p) = (*port(ports, ins, "x"), *port(ports, ins, self.param_port()));
        let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
        let n = self.n as usize;
        // The kernel in the time domain: the causal form stores it; the circular form's kernel
        // is the inverse transform of its gate.
        let kernel = if self.causal {
            p.clone()
        } else {
            irfft_reference(p, n)
        };
        let taps = kernel.shape[0];
        let mut out = RefTensor::zeros(&[b, s, d]);
        for bi in 0..b {
            for t in 0..s {
                for c in 0..d {
                    let mut acc = 0.0;
                    for j in 0..taps {
                        let src = if self.causal {
                            if j > t {
                                break;
                            }
                            t - j
                        } else {
                            (t + n - j % n) % n
                        };
                        if src < s {
                            acc += kernel.data[j * d + c] * x.data[(bi * s + src) * d + c];
                        }
                    }
                    out.data[(bi * s + t) * d + c] = acc;
                }
            }
        }
        Ok(out)
    }

    /// The causal form runs the fused direct convolution ([`fused::causal_conv`]) whatever the
    /// algorithm (both compute the same convolution) where [`fused::conv_is_direct`] (up to
    /// 256 positions at least): measured faster there than either. The algorithm's path runs
    /// beyond that, for the circular form, and with the fused kernels off.
    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let x = port(self.ports(), ins, "x").f3();
        let param = port(self.ports(), ins, self.param_port());
        if self.causal {
            let by_algo = |x, k| self.by_algo(x, &V::F2(k), ctx);
            return V::F3(fused::causal_conv(x, param.f2(), by_algo));
        }
        V::F3(self.by_algo(x, param, ctx))
    }

    /// The causal form: the first call (the prompt) runs the op whole; later calls convolve
    /// their positions with the inputs kept from the calls before.
    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        if !self.causal {
            return self.forward(ins, ctx);
        }
        let p = self.ports();
        let (x, kernel) = (port(p, ins, "x").f3(), port(p, ins, "kernel").f2());
        let (out, inputs) = match take_state::<FilterHistory>(state) {
            Some(h) => causal_filter_step(x, kernel, h.inputs),
            None => (
                self.forward(ins, ctx).f3(),
                filter_history(x, kernel.dims()[0]),
            ),
        };
        *state = Some(Box::new(FilterHistory { inputs }));
        V::F3(out)
    }
}

/// What the causal spectral filter keeps between decoding calls: the inputs of its latest
/// positions `[b, h, d]` (as many as its kernel has taps, less one).
pub struct FilterHistory {
    inputs: Tensor<3>,
}

impl OpState for FilterHistory {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.inputs = self.inputs.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.inputs.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

/// What the causal spectral filter's history keeps of the inputs `x [b, t, d]` for a kernel of
/// `l` taps: the last l − 1 positions (at least 1, so no axis is empty; all t when fewer).
fn filter_history(x: Tensor<3>, l: usize) -> Tensor<3> {
    let t = x.dims()[1];
    let keep = t.min(l.max(2) - 1);
    x.narrow(1, t - keep, keep)
}

/// The causal spectral filter (a causal linear convolution with the kernel `[l, d]`) at this
/// call's positions `x [b, s, d]`, continuing after `history` `[b, h, d]`, the inputs of the
/// latest earlier positions (as [`filter_history`] keeps them): output t is
/// Σ_{j<l} kernel[j] ⊙ x_{t−j}, one windowed product per position instead of an FFT over the
/// whole sequence. Returns the outputs and the new history.
fn causal_filter_step(
    x: Tensor<3>,
    kernel: Tensor<2>,
    history: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let [b, s, d] = x.dims();
    let l = kernel.dims()[0];
    let h = history.dims()[1];
    let all = Tensor::cat(vec![history, x], 1);
    // kernel[j] multiplies x_{t−j}: reversed, it lines up with a window ending at t.
    let rev = kernel.flip([0]).unsqueeze::<3>();
    let ys = (0..s)
        .map(|i| {
            let t = h + i;
            let len = (t + 1).min(l);
            let window = all.clone().narrow(1, t + 1 - len, len);
            (window * rev.clone().narrow(1, l - len, len))
                .sum_dim(1)
                .reshape([b, 1, d])
        })
        .collect();
    (Tensor::cat(ys, 1), filter_history(all, l))
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    const ALGOS: [SpectralAlgo; 2] = [SpectralAlgo::Fft, SpectralAlgo::Dense];

    /// Every check on every branch: circular and causal, FFT and dense, n = 32 and 128 (powers
    /// of two: the FFT branch runs) and n = 100 (not one: the FFT falls back to the dense
    /// product), on sequences of odd lengths shorter than the limit and as long as it; the
    /// causal form with the fused direct convolution and without.
    #[test]
    fn every_check_passes_on_every_branch() {
        let mut rng = Rng::new(31);
        for causal in [true, false] {
            for n in [32usize, 128, 100] {
                let limit = if causal { n / 2 } else { n };
                for (b, s, d) in [(2, limit / 2 - 1, 3), (1, limit, 2)] {
                    for algo in ALGOS {
                        let op = SpectralFilter {
                            n: n as u64,
                            causal,
                            algo,
                        };
                        // Parameters of scale ~0.3 keep sums over up to n taps of order 10.
                        let mut param = if causal {
                            Arg::fixed(&[n / 2, d], &mut rng)
                        } else {
                            Arg::fixed(&[n / 2 + 1, d, 2], &mut rng)
                        };
                        param.t.data.iter_mut().for_each(|v| *v *= 0.2);
                        let case = Case {
                            op: &op,
                            args: vec![Arg::seq(&[b, s, d], 1, &mut rng), param],
                            out_seq: Some(1),
                            tol: 1e-4,
                        };
                        let checks = || {
                            case.infers_the_forward_shape();
                            case.matches_the_reference();
                            case.gradients_reach_every_input(&[]);
                            case.later_positions_change_no_earlier_output();
                            if causal {
                                case.decodes_like_the_whole_sequence(3);
                            }
                        };
                        // The causal form: the fused direct convolution, then the algorithm's
                        // path (what runs with the kernels off).
                        let conv = || fused::calls(fused::Kernel::CausalConv).forward;
                        let before = conv();
                        checks();
                        if causal {
                            assert!(conv() > before, "the fused convolution ran");
                            fused::plain_on_this_thread(checks);
                        }
                    }
                }
            }
        }
    }

    /// Decoding calls of several positions after a history, which the checks above (a prompt,
    /// then single steps) do not make.
    #[test]
    fn the_causal_filter_step_matches_the_convolution_by_definition_in_chunks() {
        let dev = crate::runtime::DeviceKind::Cpu.device(false);
        let (b, t, d, l) = (2, 19, 3, 6);
        let val = |i: usize| ((i * 7919 % 101) as f64 / 50.0 - 1.0) as f32;
        let x: Vec<f32> = (0..b * t * d).map(val).collect();
        let k: Vec<f32> = (0..l * d).map(|i| val(i + 13)).collect();
        // y[b, t, c] = Σ_{j < l, j ≤ t} k[j, c] x[b, t − j, c], in f64.
        let want = |bi: usize, ti: usize, c: usize| -> f64 {
            (0..l.min(ti + 1))
                .map(|j| f64::from(k[j * d + c]) * f64::from(x[(bi * t + ti - j) * d + c]))
                .sum()
        };
        let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [b, t, d]), &dev);
        let kernel = Tensor::<2>::from_data(TensorData::new(k.clone(), [l, d]), &dev);
        // The prompt (2 positions) is the history; then chunks of 1, 3, 1, 8 and 4 positions.
        let mut history = xt.clone().narrow(1, 0, 2);
        let mut at = 2;
        for chunk in [1, 3, 1, 8, 4] {
            let (y, h) =
                causal_filter_step(xt.clone().narrow(1, at, chunk), kernel.clone(), history);
            assert_eq!(
                h.dims()[1],
                (at + chunk).min(l - 1),
                "history keeps l − 1 inputs"
            );
            let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
            for bi in 0..b {
                for i in 0..chunk {
                    for c in 0..d {
                        let got = f64::from(y[(bi * chunk + i) * d + c]);
                        let w = want(bi, at + i, c);
                        assert!(
                            (got - w).abs() < 1e-5,
                            "t {} channel {c}: {got} vs {w}",
                            at + i
                        );
                    }
                }
            }
            history = h;
            at += chunk;
        }
        assert_eq!(at, t);
    }

    #[test]
    fn decoding_state_follows_beam_rows() {
        let device = crate::runtime::DeviceKind::Cpu.device(false);
        let x = Tensor::<3>::from_data(
            TensorData::new((0..12).map(|v| v as f32).collect(), [3, 2, 2]),
            &device,
        );
        let mut h = FilterHistory { inputs: x };
        let rows = Tensor::<1, Int>::from_ints([2, 2, 0], &device);
        h.select_rows(&rows);
        let got = h.inputs.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&got[..4], &[8.0, 9.0, 10.0, 11.0]);
        assert_eq!(&got[8..], &[0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn infer_errors_and_limits() {
        let ty = |dtype, shape: Vec<Dim>| TensorType { dtype, shape };
        let x = ty(DType::F32, vec![Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        let kernel = ty(DType::F32, vec![Dim::Fixed(16), Dim::Fixed(4)]);
        let gate = ty(
            DType::F32,
            vec![Dim::Fixed(17), Dim::Fixed(4), Dim::Fixed(2)],
        );
        let ids = ty(DType::I64, vec![Dim::Batch, Dim::Seq]);
        for algo in ALGOS {
            let causal = SpectralFilter {
                n: 32,
                causal: true,
                algo,
            };
            let circular = SpectralFilter {
                causal: false,
                ..causal
            };
            assert_eq!(causal.infer(&[x.clone(), kernel.clone()]).unwrap(), x);
            assert_eq!(circular.infer(&[x.clone(), gate.clone()]).unwrap(), x);
            assert_eq!(
                causal.infer(&[ids.clone(), kernel.clone()]),
                Err(InferError::TokenIds)
            );
            for (op, p) in [(causal, &gate), (circular, &kernel)] {
                let e = op.infer(&[x.clone(), p.clone()]).unwrap_err();
                assert!(
                    matches!(&e, InferError::Shapes(m) if m.contains("does not fit")),
                    "{e:?}"
                );
            }
            let flat = ty(DType::F32, vec![Dim::Batch, Dim::Fixed(4)]);
            assert!(matches!(
                causal.infer(&[flat, kernel.clone()]),
                Err(InferError::Shapes(_))
            ));
            assert_eq!(causal.position_limit(&[]), Some(16));
            assert_eq!(circular.position_limit(&[]), Some(32));
            assert_eq!(
                (causal.incremental(), circular.incremental()),
                (true, false)
            );
            let flops = causal.matmul_flops(&[&x, &kernel], 2, 10);
            match algo {
                SpectralAlgo::Dense => assert_eq!(flops, 2 * 2 * 10 * 4 * 32),
                SpectralAlgo::Fft => assert_eq!(flops, 0),
            }
        }
    }
}
