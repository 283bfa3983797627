//! Single ops on the Burn runtime against the float64 reference interpreter: the windowed
//! spectral gate, the fused spectral filter on every algorithm branch, the mean of forecasts
//! and harmonic selection, values and gradients (projected on random directions); and spectral
//! gates under a frequency-curriculum mask (whole models on the runtime: `tests/runtime.rs`).

use kiln::ir::reference::{self, Rng};
use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};

mod runtime_common;
use runtime_common::{assert_close, host, lower, optimize, tokens};

/// Spectral gates under a frequency-curriculum mask: the runtime agrees with the float64
/// reference (causal kernel and circular gate, fused and not, dense and by FFT) and gradients
/// still reach them.
#[test]
fn frequency_masked_gates_match_the_reference_and_learn() {
    let masks = [
        kiln::ir::FreqCutoff {
            cutoff: 0.3,
            slope: None,
        },
        kiln::ir::FreqCutoff {
            cutoff: 0.5,
            slope: Some(12.0),
        },
    ];
    for sets in [
        &["vars.depth=2", "vars.max_len=16"][..],
        &[
            "vars.depth=2",
            "vars.max_len=16",
            "layers.2.body.0.body.1.causal=false",
        ][..],
        // n = 128: the fused filters take the FFT branch.
        &["vars.depth=1", "vars.max_len=64"][..],
        &[
            "vars.depth=1",
            "vars.max_len=128",
            "layers.2.body.0.body.1.causal=false",
        ][..],
    ] {
        let g = lower("models/gfnet-causal.yaml", sets);
        for graph in [g.clone(), optimize(&g)] {
            for mask in masks {
                let toks = tokens(1, 2, 12, 5);
                let mut rt = Runtime::init(graph.clone(), DeviceKind::Cpu.device(true), 7);
                rt.freq_mask = Some(mask);
                let out = rt.forward(tokens_tensor(&toks, &rt.device), true);
                let got = out.to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                let params = reference::init_params(&graph, 7);
                let want = reference::run_masked(&graph, &params, &toks, Some(mask)).unwrap();
                let plain = reference::run(&graph, &params, &toks).unwrap();
                assert!(want.max_abs_diff(&plain) > 1e-6, "the mask acts");
                assert_close(&got, &want, &format!("{sets:?} {mask:?}"));
                let grads = out.sum().backward();
                for (name, p) in rt.names.iter().zip(&rt.params) {
                    if name.contains("kernel") || name.contains("gate") {
                        let gv = p.grad(&grads).unwrap().to_vec();
                        assert!(
                            gv.iter().any(|v| *v != 0.0),
                            "{name}: no gradient under the mask"
                        );
                    }
                }
            }
        }
    }
}

fn ctx<'a>(
    device: &'a burn::tensor::Device,
    train: bool,
    aux: Option<&'a std::cell::RefCell<kiln::runtime::Aux>>,
) -> kiln::runtime::ops::Ctx<'a> {
    kiln::runtime::ops::Ctx {
        device,
        train,
        batch: 0,
        seq: 0,
        offset: 0,
        kv_capacity: None,
        matmul_dtype: None,
        soft_attention: false,
        freq_mask: None,
        aux,
        consts: None,
        keys: None,
    }
}

/// Random normal values times `scale`, as a runtime tensor and, exactly the same values, as a
/// reference tensor.
fn pair<const D: usize>(
    dims: [usize; D],
    seed: u64,
    scale: f64,
    device: &burn::tensor::Device,
) -> (burn::tensor::Tensor<D>, reference::Tensor) {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (scale * rng.normal()) as f32).collect();
    let r = reference::Tensor {
        shape: dims.to_vec(),
        data: v.iter().map(|&x| f64::from(x)).collect(),
    };
    let t = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, dims), device);
    (t, r)
}

/// Checks the gradient `grad` (of a shape `shape` input) of a loss that is linear in that
/// input: its projection on each of three random directions v must equal `loss(v)`, the
/// reference's loss at v, to a relative 1e-4 of Σ|grad_i·v_i|.
fn check_projections(
    grad: &[f32],
    shape: &[usize],
    seed: u64,
    loss: impl Fn(&reference::Tensor) -> f64,
    what: &str,
) {
    let mut rng = Rng::new(seed);
    for _ in 0..3 {
        let v = reference::Tensor {
            shape: shape.to_vec(),
            data: (0..grad.len()).map(|_| rng.normal()).collect(),
        };
        let got: f64 = grad
            .iter()
            .zip(&v.data)
            .map(|(g, v)| f64::from(*g) * v)
            .sum();
        let scale: f64 = grad
            .iter()
            .zip(&v.data)
            .map(|(g, v)| (f64::from(*g) * v).abs())
            .sum();
        let want = loss(&v);
        assert!(
            scale > 0.0 && (got - want).abs() < 1e-4 * scale,
            "{what}: gradient·v = {got}, the reference's {want} (scale {scale})"
        );
    }
}

/// With the identity gate (1 + 0i at every bin) the windowed gate returns its input, for any
/// window mix, with and without overlap, and on lengths that frames do not divide. That holds
/// whatever the window is, so with a random gate the runtime is also compared with the float64
/// reference (which has its own windows and framing) under the same mixes: a wrong window,
/// mix or frame count changes the output.
#[test]
fn the_windowed_gate_reconstructs_with_an_identity_gate_and_matches_the_reference() {
    use burn::tensor::{Tensor, TensorData};
    use kiln::ir::Op;
    use kiln::ops::spectral::WindowedGate;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(false);
    for (window, hop, len) in [
        (8, 4, 13),
        (8, 3, 20),
        (6, 6, 7),
        (5, 1, 9),
        (16, 4, 3),
        (7, 2, 16),
        (4, 4, 8),
    ] {
        let (x, xr) = pair([2, len, 3], window as u64 + len as u64, 1.0, &device);
        let f = window / 2 + 1;
        let mut gate = vec![0f32; f * 3 * 2];
        for i in 0..f * 3 {
            gate[2 * i] = 1.0;
        }
        let gate = Tensor::<3>::from_data(TensorData::new(gate, [f, 3, 2]), &device);
        let (random_gate, random_gate_r) = pair([f, 3, 2], 40 + window as u64, 1.0, &device);
        let op = Op::from(WindowedGate {
            window: window as u64,
            hop: hop as u64,
        });
        for mix in [
            [0.0f32, 0.0, 0.0],
            [3.0, -1.0, -4.0],
            [-5.0, 2.0, -6.0],
            [0.5, 1.5, -1.0],
        ] {
            let mix_r = reference::Tensor {
                shape: vec![3],
                data: mix.iter().map(|&v| f64::from(v)).collect(),
            };
            let mix = Tensor::<1>::from_data(TensorData::new(mix.to_vec(), [3]), &device);
            let y = ops::eval(
                &op,
                &[&V::F3(x.clone()), &V::F1(mix.clone()), &V::F3(gate.clone())],
                &ctx(&device, false, None),
            )
            .f3();
            let d: f32 = (y - x.clone()).abs().max().into_scalar();
            // f32 rounding, divided by Σ g² where a Hann-heavy window is near 0.
            assert!(d < 1e-4, "window {window} hop {hop} len {len}: off by {d}");
            let y = ops::eval(
                &op,
                &[&V::F3(x.clone()), &V::F1(mix), &V::F3(random_gate.clone())],
                &ctx(&device, false, None),
            )
            .f3();
            let want = reference::eval_op(&op, &[&xr, &mix_r, &random_gate_r]).unwrap();
            assert!(
                want.max_abs_diff(&xr) > 0.1,
                "a random gate changes the input"
            );
            assert_close(
                &host(y),
                &want,
                &format!("window {window} hop {hop} len {len} mix {mix_r:?}"),
            );
        }
    }
}

/// The windowed gate's gradients against the float64 reference: the op is linear in the input
/// and in the gate, so the gradient's projection on a random direction is the reference's
/// output for that direction, weighted as the loss weighs the output; the three window-mix
/// logits by central differences of the reference.
#[test]
fn the_windowed_gate_gradients_match_the_reference() {
    use kiln::ir::Op;
    use kiln::ops::spectral::WindowedGate;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    for (window, hop, len) in [(8, 3, 20), (6, 6, 7), (16, 4, 3)] {
        let f = window / 2 + 1;
        let op = Op::from(WindowedGate {
            window: window as u64,
            hop: hop as u64,
        });
        let (x, xr) = pair([2, len, 3], 1, 1.0, &device);
        let (mix, mix_r) = pair([3], 2, 1.0, &device);
        let (gate, gate_r) = pair([f, 3, 2], 3, 1.0, &device);
        let (x, mix, gate) = (x.require_grad(), mix.require_grad(), gate.require_grad());
        let y = ops::eval(
            &op,
            &[&V::F3(x.clone()), &V::F1(mix.clone()), &V::F3(gate.clone())],
            &ctx(&device, false, None),
        )
        .f3();
        let (w, wr) = pair([2, len, 3], 4, 1.0, &device);
        let grads = (y * w).sum().backward();
        let loss = |x: &reference::Tensor, m: &reference::Tensor, g: &reference::Tensor| {
            let y = reference::eval_op(&op, &[x, m, g]).unwrap();
            y.data.iter().zip(&wr.data).map(|(a, b)| a * b).sum::<f64>()
        };
        let what = format!("window {window} hop {hop} len {len}");
        let gx = host(x.grad(&grads).unwrap());
        check_projections(
            &gx,
            &xr.shape,
            5,
            |v| loss(v, &mix_r, &gate_r),
            &format!("{what}: input"),
        );
        let gg = host(gate.grad(&grads).unwrap());
        check_projections(
            &gg,
            &gate_r.shape,
            6,
            |v| loss(&xr, &mix_r, v),
            &format!("{what}: gate"),
        );
        let gm = host(mix.grad(&grads).unwrap());
        for (i, got) in gm.iter().enumerate() {
            let h = 1e-5;
            let (mut up, mut down) = (mix_r.clone(), mix_r.clone());
            up.data[i] += h;
            down.data[i] -= h;
            let want = (loss(&xr, &up, &gate_r) - loss(&xr, &down, &gate_r)) / (2.0 * h);
            assert!(
                (f64::from(*got) - want).abs() < 1e-3 * want.abs().max(1.0),
                "{what}: mix logit {i}: {got} vs {want}"
            );
        }
    }
}

/// The fused spectral filter against the float64 reference on every algorithm branch: dense
/// (n ≤ 64, as spectral fusion picks it), FFT (n = 128, a power of two above 64) and the FFT's
/// fallback to the dense product for n = 100 and 200 (not powers of two), each causal (a
/// kernel of n/2 taps) and circular (a gate of n/2 + 1 bins), on sequences shorter than the
/// transform; both algorithms are run at every size. Values, and gradients of the input and of
/// the kernel or gate (projected on random directions: the filter is linear in each).
#[test]
fn the_spectral_filter_matches_the_reference_on_every_branch() {
    use kiln::ir::Op;
    use kiln::ops::spectral::{SpectralAlgo, SpectralFilter};
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    for (n, causal, s) in [
        (64, true, 29),
        (128, true, 61),
        (200, true, 37),
        (64, false, 50),
        (128, false, 100),
        (100, false, 77),
    ] {
        let (b, d) = (2, 2);
        let (x, xr) = pair([b, s, d], n as u64, 1.0, &device);
        let (w, wr) = pair([b, s, d], 7, 1.0, &device);
        // Kernels of scale 0.3 keep outputs of order 1.
        let (p, pr) = if causal {
            let (k, kr) = pair([n / 2, d], 8, 0.3, &device);
            (V::F2(k.require_grad()), kr)
        } else {
            let (g, gr) = pair([n / 2 + 1, d, 2], 9, 0.3, &device);
            (V::F3(g.require_grad()), gr)
        };
        let x = x.require_grad();
        for algo in [SpectralAlgo::Dense, SpectralAlgo::Fft] {
            let op = Op::from(SpectralFilter {
                n: n as u64,
                causal,
                algo,
            });
            let what = format!("n {n}, s {s}, causal {causal}, {algo:?}");
            let y = ops::eval(&op, &[&V::F3(x.clone()), &p], &ctx(&device, false, None)).f3();
            let want = reference::eval_op(&op, &[&xr, &pr]).unwrap();
            assert_close(&host(y.clone()), &want, &what);
            let grads = (y * w.clone()).sum().backward();
            let loss = |x: &reference::Tensor, p: &reference::Tensor| {
                let y = reference::eval_op(&op, &[x, p]).unwrap();
                y.data.iter().zip(&wr.data).map(|(a, b)| a * b).sum::<f64>()
            };
            let gx = host(x.grad(&grads).unwrap());
            check_projections(
                &gx,
                &xr.shape,
                10,
                |v| loss(v, &pr),
                &format!("{what}: input"),
            );
            let gp = p.grad(&grads).unwrap().to_vec();
            check_projections(
                &gp,
                &pr.shape,
                11,
                |v| loss(&xr, v),
                &format!("{what}: filter"),
            );
        }
    }
}

/// A forecasting ensemble's output, the mean of its members' forecasts, against the reference.
#[test]
fn the_mean_of_forecasts_matches_the_reference() {
    use kiln::ir::Op;
    use kiln::ops::ensemble::Ensemble;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(false);
    let op = Op::Ensemble(Ensemble::MeanForecasts { members: 3 });
    let members: Vec<_> = (0..3)
        .map(|i| pair([2, 5, 3], 20 + i, 1.0, &device))
        .collect();
    let ins: Vec<V> = members.iter().map(|(t, _)| V::F3(t.clone())).collect();
    let got = ops::eval(
        &op,
        &ins.iter().collect::<Vec<_>>(),
        &ctx(&device, false, None),
    )
    .f3();
    let refs: Vec<&reference::Tensor> = members.iter().map(|(_, r)| r).collect();
    let want = reference::eval_op(&op, &refs).unwrap();
    assert_close(&host(got), &want, "mean of forecasts");
}

/// Harmonic selection keeps exactly k groups per position; in training the choice is a
/// Gumbel top-k sample (for k = 1: harmonic h with probability softmax(scores)_h), the
/// scorer gets a gradient through the relaxed top-k, and the sparsity statistic is the mass
/// of softmax(scores/τ) outside the kept harmonics.
#[test]
fn harmonic_selection_samples_gumbel_top_k_and_passes_gradients() {
    use burn::tensor::{Tensor, TensorData};
    use kiln::ir::{Op, Real};
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    let (b, s, h, g) = (4, 500, 3, 2);
    let x = Tensor::<3>::ones([b, s, h * g], &device);
    let logits = [0.0f32, 1.0, 2.0];
    let scores = Tensor::<3>::from_data(TensorData::new(logits.repeat(b * s), [b, s, h]), &device)
        .require_grad();
    let select = |scores: &Tensor<3>, k: u64, tau: f64, ctx: &kiln::runtime::ops::Ctx| {
        let op = Op::Wave(kiln::ops::wave::Wave::Select {
            k,
            temperature: Real(tau),
        });
        ops::eval(&op, &[&V::F3(x.clone()), &V::F3(scores.clone())], ctx).f3()
    };
    let host = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    // Inference: the plain top-k, k groups each.
    for k in [1, 2, 3] {
        let y = select(&scores, k, 1.0, &ctx(&device, false, None));
        let kept = host(y.sum_dim(1));
        let want: Vec<f32> = (0..b)
            .flat_map(|_| {
                (0..h * g).map(|f| {
                    if f / g >= h - k as usize {
                        s as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        assert_eq!(kept, want, "k = {k}");
    }
    // Tied scores still keep exactly k groups.
    let tied = Tensor::<3>::zeros([b, s, h], &device);
    let kept = host(select(&tied, 2, 1.0, &ctx(&device, false, None)).sum_dim(2));
    assert!(
        kept.iter().all(|&v| v == (2 * g) as f32),
        "ties: {:?}",
        &kept[..4]
    );
    // Training, k = 1: selection frequencies follow softmax(scores).
    device.seed(7);
    let aux = std::cell::RefCell::new(kiln::runtime::Aux::default());
    let y = select(&scores, 1, 0.5, &ctx(&device, true, Some(&aux)));
    let per_pos = host(y.clone().sum_dim(2));
    assert!(
        per_pos.iter().all(|&v| (v - g as f32).abs() < 1e-5),
        "one group kept each"
    );
    let freq = host(y.clone().reshape([b * s, h, g]).narrow(2, 0, 1).mean_dim(0));
    let z: f32 = logits.iter().map(|v| v.exp()).sum();
    for (j, f) in freq.iter().enumerate() {
        let p = logits[j].exp() / z;
        // 2000 draws: σ ≤ 0.011.
        assert!(
            (f - p).abs() < 0.04,
            "harmonic {j}: chosen {f}, softmax {p}"
        );
    }
    let grads = (y * Tensor::<3>::random(
        [b, s, h * g],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    ))
    .sum()
    .backward();
    let gs = host(scores.grad(&grads).unwrap());
    assert!(gs.iter().any(|v| *v != 0.0) && gs.iter().all(|v| v.is_finite()));
    // The sparsity statistic: 1 − softmax(s/τ) of the top harmonic.
    let stat: f32 = aux.borrow().harmonic_sparsity[0].clone().into_scalar();
    let e: Vec<f32> = logits.iter().map(|v| (v / 0.5).exp()).collect();
    let want = 1.0 - e[2] / e.iter().sum::<f32>();
    assert!((stat - want).abs() < 1e-5, "{stat} vs {want}");
}
