//! The fused exponential smoothing (ETS attention) and the fused causal depthwise convolution
//! (the causal spectral filter) against the plain Burn paths they replace (a convolution by a
//! dense matrix or an FFT): the same values and gradients, on plain and autodiff tensors, at
//! lengths on both sides of the plain path's dense/FFT switch; by the kernels' run counts, the
//! fused path really ran (and the plain path ran none).

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel};
mod fused_common;
use fused_common::{assert_ran, device, flat, max_diff, t, LOCK};

/// `run(autodiff)` with the fused kernels `on` or off; asserts by the run counts that `kernel`
/// ran forward (and backward on autodiff tensors) exactly when on.
fn counted(
    kernel: Kernel,
    on: bool,
    autodiff: bool,
    run: &dyn Fn(bool) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    fused::set_enabled(on);
    let before = fused::calls(kernel);
    let out = run(autodiff);
    fused::set_enabled(true);
    assert_ran(kernel, before, on, autodiff);
    out
}

/// Asserts the fused and plain paths agree within `tol` on every flat output of `run` (values,
/// then gradients on autodiff tensors), on plain and autodiff tensors.
fn assert_paths_agree(
    kernel: Kernel,
    run: &dyn Fn(bool) -> Vec<Vec<f32>>,
    tol: f32,
    case: &str,
    names: &[&str],
) {
    for autodiff in [false, true] {
        let a = counted(kernel, true, autodiff, run);
        let z = counted(kernel, false, autodiff, run);
        assert_eq!(a.len(), z.len());
        assert_eq!(a.len(), if autodiff { names.len() } else { 1 });
        for ((a, z), name) in a.iter().zip(&z).zip(names) {
            let d = max_diff(a, z);
            assert!(d < tol, "{case}: {name} differs by {d}");
        }
    }
}

#[test]
fn smoothing_matches_the_convolution() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (b, s, d, initial state broadcast from one parameter vector as ETS's v₀ is): lengths on
    // both sides of the plain path's dense/FFT switch, one position and one channel.
    let long = kiln::passes::DENSE_MAX as usize + 6;
    for (b, s, d, broadcast) in [
        (2, 5, 3, false),
        (3, 17, 8, true),
        (1, 1, 1, false),
        (2, long, 4, true),
    ] {
        let run = |autodiff: bool| {
            let dev = device(autodiff);
            let grad = |x: Tensor<3>| if autodiff { x.require_grad() } else { x };
            let v = grad(t([b, s, d], 1, 1.0, &dev));
            // Logits spread over (−2, 2): rates from 0.12 to 0.88.
            let a = if autodiff {
                t([d], 2, 2.0, &dev).require_grad()
            } else {
                t([d], 2, 2.0, &dev)
            };
            let (init, leaf) = if broadcast {
                let v0 = t([1, d], 3, 1.0, &dev);
                let v0 = if autodiff { v0.require_grad() } else { v0 };
                (v0.clone().expand([b, d]), v0)
            } else {
                let init = t([b, d], 3, 1.0, &dev);
                let init = if autodiff { init.require_grad() } else { init };
                (init.clone(), init)
            };
            let es = fused::smooth(v.clone(), a.clone(), init);
            let mut out = vec![flat(es.clone().without_autodiff())];
            if autodiff {
                let g = (es.clone() * t(es.dims(), 4, 1.0, &dev)).sum().backward();
                out.push(flat(v.grad(&g).unwrap()));
                out.push(flat(a.grad(&g).unwrap()));
                out.push(flat(leaf.grad(&g).unwrap()));
            }
            out
        };
        let case = format!("({b},{s},{d}) broadcast {broadcast}");
        let names = ["es", "v", "logits", "initial state"];
        assert_paths_agree(Kernel::Smooth, &run, 1e-4, &case, &names);
    }
}

#[test]
fn causal_conv_matches_the_dense_and_fft_convolutions() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (b, s, d, taps, x non-contiguous): more taps than positions (the spectral filter's
    // kernel), fewer, one of each; lengths on both sides of the plain path's dense/FFT switch.
    let long = kiln::passes::DENSE_MAX as usize + 6;
    for (b, s, d, taps, strided) in [
        (2, 5, 3, 8, false),
        (3, 17, 8, 4, true),
        (1, 1, 1, 1, false),
        (2, long, 5, 2 * long, true),
        (2, long, 3, 7, false),
    ] {
        let run = |autodiff: bool| {
            let dev = device(autodiff);
            let (x, k) = (t([b, s, d], 5, 1.0, &dev), t([taps, d], 6, 0.3, &dev));
            let (x, k) = if autodiff {
                (x.require_grad(), k.require_grad())
            } else {
                (x, k)
            };
            // A transposed copy read back through a transposed view.
            let xin = if strided {
                x.clone().swap_dims(1, 2) * 1.0
            } else {
                x.clone().swap_dims(1, 2)
            }
            .swap_dims(1, 2);
            let y = fused::causal_conv(xin, k.clone(), fused::causal_conv_plain);
            let mut out = vec![flat(y.clone().without_autodiff())];
            if autodiff {
                let g = (y.clone() * t(y.dims(), 7, 1.0, &dev)).sum().backward();
                out.push(flat(x.grad(&g).unwrap()));
                out.push(flat(k.grad(&g).unwrap()));
            }
            out
        };
        let case = format!("({b},{s},{d},{taps}) strided {strided}");
        assert_paths_agree(Kernel::CausalConv, &run, 1e-4, &case, &["y", "x", "kernel"]);
    }
}

/// Where `conv_is_direct` says the FFT is faster, the convolution takes the caller's plain
/// path even with the kernels on; a short kernel on the same long sequence stays direct.
#[test]
fn long_kernels_on_long_sequences_take_the_plain_convolution() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(fused::conv_is_direct(256, 256) && !fused::conv_is_direct(512, 512));
    assert!(fused::conv_is_direct(4096, 64) && fused::conv_is_direct(1, 1000));
    let dev = Device::flex();
    let s = 600;
    for (taps, direct) in [(s, false), (8, true)] {
        let (x, k) = (t([1, s, 2], 8, 1.0, &dev), t([taps, 2], 9, 1.0, &dev));
        let before = fused::calls(Kernel::CausalConv);
        let mut called = false;
        let y = fused::causal_conv(x.clone(), k.clone(), |x, k| {
            called = true;
            fused::causal_conv_plain(x, k)
        });
        assert_eq!(called, !direct, "{taps} taps: the plain path ran");
        let ran = fused::calls(Kernel::CausalConv).forward > before.forward;
        assert_eq!(ran, direct, "{taps} taps: the fused kernel ran");
        // Position 1 is the definition's: k[0] x[1] + k[1] x[0].
        let (xs, ks, ys) = (flat(x), flat(k), flat(y));
        for c in 0..2 {
            let want = ks[c] * xs[2 + c] + ks[2 + c] * xs[c];
            assert!((ys[2 + c] - want).abs() < 1e-4, "{} vs {want}", ys[2 + c]);
        }
    }
}
