//! kiln's fused CPU kernels against the plain Burn path they replace: the same values and the
//! same gradients, on plain and autodiff tensors, for shapes that exercise every edge (rows
//! shorter than a vector, causal offsets, grouped rows, non-contiguous inputs). Each comparison
//! also checks, by the kernels' run counts, that the fused path really ran (an op silently takes
//! the plain path when the kernels cannot take its inputs) and that the plain path ran none.

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel, Visible};

use kiln_kernels::test_values as data;

fn t<const D: usize>(shape: [usize; D], seed: u64, scale: f32, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(data(n, seed, scale), shape), device)
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert_eq!(x.is_finite(), y.is_finite(), "{x} vs {y}");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// Runs `f` and asserts, by the run counts of `kernels`, which path it took: with `fused`, each
/// kernel's forward pass ran, and its backward pass too exactly when `backward`; without, none
/// of them ran.
fn counted<T>(kernels: &[Kernel], fused: bool, backward: bool, f: impl FnOnce() -> T) -> T {
    let calls = || kernels.iter().map(|&k| fused::calls(k)).collect::<Vec<_>>();
    let before = calls();
    let out = f();
    for ((kernel, a), b) in kernels.iter().zip(before).zip(calls()) {
        if fused {
            assert!(
                b.forward > a.forward,
                "{kernel:?}: the fused kernel did not run"
            );
            assert_eq!(
                b.backward > a.backward,
                backward,
                "{kernel:?}: its fused backward pass ran {} times",
                b.backward - a.backward
            );
        } else {
            assert_eq!(a, b, "{kernel:?}: a fused kernel ran on the plain path");
        }
    }
    out
}

fn device(autodiff: bool) -> Device {
    if autodiff {
        Device::flex().autodiff()
    } else {
        Device::flex()
    }
}

/// Runs `run(fused, autodiff)` with the fused kernels on and off, on plain and on autodiff
/// tensors, and asserts the flat tensors it returns (outputs, then gradients) agree within
/// `tol`; `names` labels them in the message. With the kernels on, `kernel` must have run
/// (backward too on autodiff tensors); off, it must not have.
fn assert_paths_agree(
    kernel: Kernel,
    run: &dyn Fn(bool, bool) -> Vec<Tensor<1>>,
    tol: f32,
    case: &str,
    names: &[&str],
) {
    for autodiff in [false, true] {
        let a = counted(&[kernel], true, autodiff, || run(true, autodiff));
        let z = counted(&[kernel], false, false, || run(false, autodiff));
        assert_eq!(a.len(), z.len());
        for (i, (a, z)) in a.into_iter().zip(z).enumerate() {
            let d = max_diff(a, z);
            let name = names.get(i).copied().unwrap_or("output");
            assert!(d < tol, "{case}: {name} differs by {d}");
        }
    }
}

/// [`assert_paths_agree`] on rayon pools of 1, 2 and 3 threads. The recurrence kernels split the
/// batch over the pool's threads: one block, blocks of several rows with a shorter last one,
/// and one row per block.
fn assert_paths_agree_on_pools(
    kernel: Kernel,
    run: &(dyn Fn(bool, bool) -> Vec<Tensor<1>> + Sync),
    tol: f32,
    case: &str,
    names: &[&str],
) {
    for threads in [1, 2, 3] {
        let case = format!("{case}, {threads} threads");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| assert_paths_agree(kernel, run, tol, &case, names));
    }
}

/// Runs `f` on inputs built by `make` with the fused kernels on and off; returns the largest
/// differences of the outputs and of the gradients of every input (a random linear functional
/// of the output is the loss, so every output element carries a different weight). Asserts
/// that `kernel` ran with the kernels on (backward too on autodiff tensors), and not off.
fn compare<const D: usize, const E: usize>(
    kernel: Kernel,
    make: impl Fn(&Device) -> Vec<Tensor<D>>,
    f: impl Fn(Vec<Tensor<D>>) -> Tensor<E>,
) -> (f32, Vec<f32>) {
    let run = |on: bool, autodiff: bool| {
        counted(&[kernel], on, autodiff, || {
            run_once(&make, &f, on, autodiff)
        })
    };
    // Plain tensors: values only.
    let (a, _) = run(true, false);
    let (b, _) = run(false, false);
    let plain = max_diff(a, b);
    // Autodiff: values and gradients.
    let (a, ga) = run(true, true);
    let (b, gb) = run(false, true);
    let value = max_diff(a, b).max(plain);
    let grads = ga
        .into_iter()
        .zip(gb)
        .map(|(x, y)| max_diff(x, y))
        .collect();
    (value, grads)
}

/// One run of [`compare`]: `f` on fresh inputs from `make` (requiring gradients on autodiff
/// tensors), with the fused kernels `on` or off; returns the output and the inputs' gradients.
fn run_once<const D: usize, const E: usize>(
    make: &impl Fn(&Device) -> Vec<Tensor<D>>,
    f: &impl Fn(Vec<Tensor<D>>) -> Tensor<E>,
    on: bool,
    autodiff: bool,
) -> (Tensor<E>, Vec<Tensor<D>>) {
    fused::set_enabled(on);
    let device = device(autodiff);
    let ins: Vec<Tensor<D>> = make(&device)
        .into_iter()
        .map(|x| if autodiff { x.require_grad() } else { x })
        .collect();
    let out = f(ins.clone());
    let grads = if autodiff {
        let w = t(out.dims(), 99, 1.0, &device);
        let g = (out.clone() * w).sum().backward();
        ins.iter()
            .map(|x| x.grad(&g).expect("every input gets a gradient"))
            .collect()
    } else {
        vec![]
    };
    fused::set_enabled(true);
    (out.without_autodiff(), grads)
}

fn vis(queries: usize, causal: bool, offset: usize) -> Visible {
    Visible {
        queries,
        causal,
        offset,
    }
}

// The kernels switch a process-wide flag; the tests must not interleave.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn silu_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (shape, scale) in [([2, 3, 5], 3.0), ([4, 33, 344], 8.0), ([1, 1, 1], 100.0)] {
        let (v, g) = compare(
            Kernel::Silu,
            |d| vec![t(shape, 1, scale, d)],
            |x: Vec<Tensor<3>>| fused::silu(x[0].clone()),
        );
        assert!(v < 2e-6 * scale, "{shape:?}: values differ by {v}");
        assert!(
            g[0] < 2e-6 * scale,
            "{shape:?}: gradients differ by {}",
            g[0]
        );
    }
    // A non-contiguous input (a transposed view).
    let (v, g) = compare(
        Kernel::Silu,
        |d| vec![t([3, 7, 9], 2, 4.0, d)],
        |x: Vec<Tensor<3>>| fused::silu(x[0].clone().swap_dims(1, 2)),
    );
    assert!(v < 1e-5 && g[0] < 1e-5, "{v} {g:?}");
}

#[test]
fn softmax_matches_mask_fill_and_softmax() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // [b, h, G·s, t]: grouped rows, causal with and without a decoding offset, full rows,
    // rows shorter and longer than a vector.
    let cases = [
        ([2, 2, 6, 3], vis(3, true, 0)),
        ([1, 3, 5, 9], vis(5, true, 4)),
        ([2, 1, 2, 40], vis(1, true, 39)),
        ([2, 4, 17, 17], vis(17, true, 0)),
        ([3, 2, 4, 21], vis(4, false, 0)),
        ([8, 2, 254, 127], vis(127, true, 0)),
    ];
    for (shape, vis) in cases {
        let (v, g) = compare(
            Kernel::Softmax,
            |d| vec![t(shape, 3, 6.0, d)],
            |x: Vec<Tensor<4>>| fused::softmax_rows(x[0].clone(), vis),
        );
        assert!(v < 1e-6, "{shape:?} {vis:?}: values differ by {v}");
        assert!(
            g[0] < 1e-6,
            "{shape:?} {vis:?}: gradients differ by {}",
            g[0]
        );
    }
    // Rows with huge and tiny scores, and a non-contiguous input.
    let (v, g) = compare(
        Kernel::Softmax,
        |d| vec![t([2, 3, 6, 6], 4, 80.0, d)],
        |x: Vec<Tensor<4>>| fused::softmax_rows(x[0].clone().swap_dims(2, 3), vis(6, true, 0)),
    );
    assert!(v < 1e-6 && g[0] < 1e-5, "{v} {g:?}");
}

#[test]
fn rmsnorm_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (b, s, d) in [(2, 3, 5), (4, 31, 128), (1, 1, 1)] {
        let (v, g) = compare(
            Kernel::RmsNorm,
            |dev| vec![t([b, s, d], 5, 3.0, dev)],
            |x: Vec<Tensor<3>>| {
                let w = t([d], 6, 1.5, &x[0].device());
                fused::rmsnorm(x[0].clone(), w, 1e-6)
            },
        );
        assert!(v < 1e-5, "({b},{s},{d}): values differ by {v}");
        assert!(g[0] < 1e-5, "({b},{s},{d}): x gradients differ by {}", g[0]);
    }
}

#[test]
fn layernorm_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Rows shorter than a vector, one element (variance 0), a row of 128 with an offset.
    for (b, s, d) in [(2, 3, 5), (4, 31, 128), (1, 1, 1), (3, 2, 9)] {
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let grad = |x: Tensor<1>| if autodiff { x.require_grad() } else { x };
            let x = t([b, s, d], 70, 3.0, &dev).add_scalar(2.0);
            let x = if autodiff { x.require_grad() } else { x };
            let (w, bias) = (grad(t([d], 71, 1.5, &dev)), grad(t([d], 72, 1.0, &dev)));
            let y = fused::layernorm(x.clone(), w.clone(), bias.clone(), 1e-5);
            fused::set_enabled(true);
            let mut out = vec![y.clone().without_autodiff().reshape([-1])];
            if autodiff {
                let g = (y * t([b, s, d], 73, 1.0, &dev)).sum().backward();
                out.push(x.grad(&g).unwrap().reshape([-1]));
                out.push(w.grad(&g).unwrap());
                out.push(bias.grad(&g).unwrap());
            }
            out
        };
        let case = format!("({b},{s},{d})");
        assert_paths_agree(
            Kernel::LayerNorm,
            &run,
            5e-5,
            &case,
            &["y", "dx", "dw", "db"],
        );
    }
}

#[test]
fn rmsnorm_weight_gradient_matches() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let grads = |on: bool| {
        counted(&[Kernel::RmsNorm], on, true, || {
            fused::set_enabled(on);
            let dev = Device::flex().autodiff();
            let x = t([3, 20, 48], 7, 2.0, &dev).require_grad();
            let w = t([48], 8, 1.0, &dev).require_grad();
            let y = fused::rmsnorm(x.clone(), w.clone(), 1e-5);
            let g = (y * t([3, 20, 48], 9, 1.0, &dev)).sum().backward();
            fused::set_enabled(true);
            (x.grad(&g).unwrap(), w.grad(&g).unwrap())
        })
    };
    let (xa, wa) = grads(true);
    let (xb, wb) = grads(false);
    let (dx, dw) = (max_diff(xa, xb), max_diff(wa, wb));
    assert!(dx < 1e-5, "x gradients differ by {dx}");
    assert!(dw < 1e-4, "w gradients differ by {dw}");
}

#[test]
fn rope_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cases = [(2, 2, 5, 4), (3, 4, 33, 32), (1, 1, 1, 2)];
    for ((b, h, s, d), heads_last) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let (v, g) = compare(
            Kernel::Rope,
            |dev| {
                // Dense, or a transposed view of [b, s, h, d] as the head split makes it.
                vec![if heads_last {
                    t([b, s, h, d], 10, 2.0, dev).swap_dims(1, 2)
                } else {
                    t([b, h, s, d], 10, 2.0, dev)
                }]
            },
            |x: Vec<Tensor<4>>| {
                let dev = x[0].device();
                // A real table: cos and sin of angles, [s, d/2, 2].
                let ang = t::<2>([s, d / 2], 11, 3.0, &dev);
                let table = Tensor::stack::<3>(vec![ang.clone().cos(), ang.sin()], 2);
                fused::rope(x[0].clone(), table)
            },
        );
        let case = format!("({b},{h},{s},{d}) heads last {heads_last}");
        assert!(v < 1e-6, "{case}: values differ by {v}");
        assert!(g[0] < 1e-6, "{case}: gradients differ by {}", g[0]);
    }
}

#[test]
fn fast_exp_is_accurate() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let e = fused::exp(x) as f64;
        let r = (x as f64).exp();
        worst = worst.max(((e - r) / r).abs());
        x += 0.0137;
    }
    assert!(worst < 4e-7, "relative error {worst}");
    assert!(fused::exp(f32::NAN).is_nan());
    assert_eq!(fused::exp(-1e9), 0.0);
    assert_eq!(fused::exp(f32::NEG_INFINITY), 0.0);
    assert!(fused::exp(1e9).is_finite());
    assert_eq!(fused::exp(0.0), 1.0);
}

#[test]
fn fast_tanh_and_log_sigmoid_are_accurate() {
    let (mut worst_tanh, mut worst_ls) = (0.0f64, 0.0f64);
    let mut x = -60.0f32;
    while x < 60.0 {
        let xd = x as f64;
        worst_tanh = worst_tanh.max((fused::tanh(x) as f64 - xd.tanh()).abs());
        // ln σ(x) = −ln(1 + e^{−x}); relative to its size where that is above 1.
        let ls = -(-xd).exp().ln_1p();
        let err = (fused::log_sigmoid(x) as f64 - ls).abs() / ls.abs().max(1.0);
        worst_ls = worst_ls.max(err);
        x += 0.00731;
    }
    assert!(worst_tanh < 2e-7, "tanh absolute error {worst_tanh}");
    assert!(worst_ls < 2e-7, "log_sigmoid error {worst_ls}");
    assert_eq!(fused::tanh(0.0), 0.0);
    assert_eq!(fused::tanh(1e9), 1.0);
    assert_eq!(fused::tanh(-1e9), -1.0);
    assert_eq!(fused::log_sigmoid(1e9), 0.0);
    assert_eq!(fused::log_sigmoid(-1e9), -1e9);
}

#[test]
fn attention_matches_matmul_softmax_matmul() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // ([b, query heads, KV heads, s, t, d], causal, offset): grouped heads, a decoding offset
    // (t > s), non-causal cross attention (t ≠ s), several causal blocks, sizes off the vector
    // width.
    let cases = [
        ([2, 4, 2, 3, 3, 4], true, 0),
        ([1, 3, 3, 5, 9, 8], true, 4),
        ([2, 2, 1, 1, 40, 16], true, 39),
        ([3, 2, 2, 7, 11, 5], false, 0),
        ([4, 4, 2, 127, 127, 32], true, 0),
        ([1, 4, 2, 35, 45, 8], true, 10),
        ([2, 1, 1, 100, 100, 4], false, 0),
    ];
    for ([b, h, hk, s, tk, d], causal, offset) in cases {
        let vis = vis(s, causal, offset);
        for heads_last in [false, true] {
            // q, k, v either dense [b, h, s, d] or, as the head split makes them, transposed
            // views of [b, s, h, d].
            let make = |shape: [usize; 4], seed: u64, dev: &Device| {
                let [b, h, s, d] = shape;
                if heads_last {
                    t([b, s, h, d], seed, 1.5, dev).swap_dims(1, 2)
                } else {
                    t(shape, seed, 1.5, dev)
                }
            };
            let (v, g) = compare(
                Kernel::Attention,
                |dev| {
                    vec![
                        make([b, h, s, d], 12, dev),
                        make([b, hk, tk, d], 13, dev),
                        make([b, hk, tk, d], 14, dev),
                    ]
                },
                |x: Vec<Tensor<4>>| {
                    fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis)
                },
            );
            let case = format!("({b},{h},{hk},{s},{tk},{d}) {vis:?} heads last {heads_last}");
            assert!(v < 4e-6, "{case}: values differ by {v}");
            for (name, g) in ["q", "k", "v"].iter().zip(&g) {
                assert!(*g < 5e-6, "{case}: {name} gradients differ by {g}");
            }
        }
    }
}

/// Attention's dropout of the probabilities inside the fused kernel against the separate ops
/// it replaces, softmax → `fused::dropout` (same key) → product with v: the same mask element
/// for element, so the same values and gradients; by the run counts, the fused attention ran
/// forward and backward (and the separate path ran the dropout kernel, not attention's).
#[test]
fn attention_dropout_matches_softmax_dropout_matmul() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // ([b, query heads, KV heads, s, t, d], causal, offset, p): grouped heads, a decoding
    // offset, non-causal cross attention, several causal blocks, odd sizes.
    let cases = [
        ([2, 4, 2, 3, 3, 4], true, 0, 0.1),
        ([1, 3, 3, 5, 9, 7], true, 4, 0.5),
        ([3, 2, 2, 7, 11, 5], false, 0, 0.3),
        ([2, 6, 2, 37, 37, 9], true, 0, 0.1),
        ([1, 4, 1, 35, 45, 8], true, 10, 0.25),
        ([2, 1, 1, 33, 31, 3], false, 0, 0.9),
    ];
    for (i, ([b, h, hk, s, tk, d], causal, offset, p)) in cases.into_iter().enumerate() {
        let vis = vis(s, causal, offset);
        let key = 1000 + i as u64;
        let case = format!("({b},{h},{hk},{s},{tk},{d}) {vis:?} p {p}");
        // As the head split makes them: transposed views of [b, s, heads, d].
        let make = |dev: &Device| {
            vec![
                t([b, s, h, d], 12, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, d], 13, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, d], 14, 1.5, dev).swap_dims(1, 2),
            ]
        };
        let fused_attn = |x: Vec<Tensor<4>>| {
            fused::attention_dropout(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis, p, key)
        };
        // The separate ops, the G query heads of a KV head as G·s rows ([b, hk, G·s, t] has
        // the row-major order of [b, h, s, t]).
        let separate = |x: Vec<Tensor<4>>| {
            let q = x[0]
                .clone()
                .mul_scalar(0.7)
                .reshape([b, hk, (h / hk) * s, d]);
            let probs = fused::softmax_rows(q.matmul(x[1].clone().swap_dims(2, 3)), vis);
            fused::dropout(probs, p, key)
                .matmul(x[2].clone())
                .reshape([b, h, s, d])
        };
        for autodiff in [false, true] {
            let (a, ga) = counted(&[Kernel::Attention], true, autodiff, || {
                run_once(&make, &fused_attn, true, autodiff)
            });
            let (z, gz) = counted(&[Kernel::Dropout, Kernel::Softmax], true, autodiff, || {
                counted(&[Kernel::Attention], false, false, || {
                    run_once(&make, &separate, true, autodiff)
                })
            });
            let v = max_diff(a, z);
            assert!(v < 1e-5, "{case}: values differ by {v}");
            for ((name, a), z) in ["q", "k", "v"].iter().zip(ga).zip(gz) {
                let g = max_diff(a, z);
                assert!(g < 1e-5, "{case}: {name} gradients differ by {g}");
            }
        }
        // The fused kernels off: the plain path applies the same mask by tensor ops.
        let (v, g) = compare(Kernel::Attention, make, fused_attn);
        assert!(v < 1e-5, "{case}: plain values differ by {v}");
        for (name, g) in ["q", "k", "v"].iter().zip(&g) {
            assert!(*g < 1e-5, "{case}: plain {name} gradients differ by {g}");
        }
        // Dropout really drops: the output differs from attention without it.
        let dev = Device::flex();
        let x = make(&dev);
        let plain = fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis);
        assert!(
            max_diff(fused_attn(x), plain) > 1e-3,
            "{case}: nothing dropped"
        );
    }
}

#[test]
fn linear_matches_matmul_and_bias() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (b, s, i, o, bias, transposed input)
    for (b, s, i, o, bias, tr) in [
        (2, 3, 5, 7, true, false),
        (4, 33, 128, 344, false, false),
        (1, 1, 1, 1, true, false),
        (3, 6, 4, 9, true, true),
    ] {
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let grad = |x: Tensor<3>| if autodiff { x.require_grad() } else { x };
            let x = if tr {
                grad(t([b, i, s], 20, 2.0, &dev))
            } else {
                grad(t([b, s, i], 20, 2.0, &dev))
            };
            let w = t([i, o], 21, 1.0, &dev);
            let w = if autodiff { w.require_grad() } else { w };
            let bv = t([o], 22, 1.0, &dev);
            let bv = if autodiff { bv.require_grad() } else { bv };
            let xin = if tr {
                x.clone().swap_dims(1, 2)
            } else {
                x.clone()
            };
            let y = fused::linear(xin, w.clone(), bias.then(|| bv.clone()));
            fused::set_enabled(true);
            let mut out = vec![y.clone().without_autodiff().reshape([-1])];
            if autodiff {
                let g = (y.clone() * t(y.dims(), 23, 1.0, &dev)).sum().backward();
                out.push(x.grad(&g).unwrap().reshape([-1]));
                out.push(w.grad(&g).unwrap().reshape([-1]));
                if bias {
                    out.push(bv.grad(&g).unwrap());
                }
            }
            out
        };
        let case = format!("({b},{s},{i},{o}) bias {bias} transposed {tr}");
        assert_paths_agree(Kernel::Linear, &run, 1e-5, &case, &["y", "dx", "dw", "db"]);
    }
}

#[test]
fn adamw_matches_the_tensor_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex();
    let n = 40_000 + 3;
    for (decay, clip, step) in [(1.0, 1.0, 1), (0.995, 0.3, 7), (0.9, 1.0, 1000)] {
        let h = fused::AdamW {
            lr: 0.003,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bc1: 1.0 - 0.9f32.powi(step),
            bc2: 1.0 - 0.999f32.powi(step),
            decay,
            clip,
        };
        let ins = || {
            let v = t([n], 33, 0.01, &dev);
            [
                t([n], 30, 1.0, &dev),
                t([n], 31, 2.0, &dev),
                t([n], 32, 0.1, &dev),
                v.clone() * v,
            ]
        };
        let [p, g, m, v] = ins();
        let fused_out = counted(&[Kernel::AdamW], true, false, || {
            fused::adamw(p, g, m, v, &h)
        });
        let [p, g, m, v] = ins();
        let plain = counted(&[Kernel::AdamW], false, false, || {
            fused::adamw_plain(p, g, m, v, &h)
        });
        for (name, (a, b)) in ["p", "m", "v"].iter().zip(fused_out.into_iter().zip(plain)) {
            let d = max_diff(a, b);
            assert!(
                d < 1e-6,
                "decay {decay} clip {clip} step {step}: {name} differs by {d}"
            );
        }
    }
}

#[test]
fn selective_scan_matches_the_step_by_step_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (b, s, e, n, nonzero initial state)
    for (b, s, e, n, warm) in [
        (2, 5, 3, 4, false),
        (3, 17, 8, 16, true),
        (1, 1, 1, 1, true),
    ] {
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let grad = |x: Tensor<3>| if autodiff { x.require_grad() } else { x };
            // Step sizes > 0 and a < 0, as Mamba makes them (softplus, −exp).
            let dt = grad(t([b, s, e], 40, 1.0, &dev).exp().mul_scalar(0.3));
            let a = grad(t([1, e, n], 41, 1.0, &dev).exp().neg());
            let ins = [
                dt,
                a,
                grad(t([b, s, e], 42, 1.0, &dev)),
                grad(t([b, s, n], 43, 1.0, &dev)),
                grad(t([b, s, n], 44, 1.0, &dev)),
            ];
            let h0 = if warm {
                t([b, e, n], 45, 1.0, &dev)
            } else {
                Tensor::zeros([b, e, n], &dev)
            };
            let (y, h) = fused::selective_scan(ins.clone(), h0);
            fused::set_enabled(true);
            let mut out = vec![
                y.clone().without_autodiff().reshape([-1]),
                h.without_autodiff().reshape([-1]),
            ];
            if autodiff {
                let g = (y.clone() * t(y.dims(), 46, 1.0, &dev)).sum().backward();
                out.extend(ins.iter().map(|x| x.grad(&g).unwrap().reshape([-1])));
            }
            out
        };
        let names = ["y", "final state", "dt", "a", "dtx", "b", "c"];
        let case = format!("({b},{s},{e},{n}) warm {warm}");
        assert_paths_agree(Kernel::Scan, &run, 5e-6, &case, &names);
    }
}

#[test]
fn empty_tensors_take_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    let x = Tensor::<3>::zeros([2, 0, 5], &dev).require_grad();
    let y = counted(&[Kernel::Silu, Kernel::RmsNorm], false, false, || {
        fused::silu(x.clone()) + fused::rmsnorm(x, Tensor::ones([5], &dev), 1e-6)
    });
    assert_eq!(y.dims(), [2, 0, 5]);
}

#[test]
fn lstm_matches_the_step_by_step_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (batch, positions, hidden, nonzero initial state): a batch that does not split evenly
    // over the threads, a width shorter than a vector, one position.
    for (b, s, w, warm) in [
        (3, 7, 5, false),
        (4, 12, 16, true),
        (1, 1, 1, true),
        (5, 9, 11, false),
    ] {
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let grad = |x: Tensor<3>| if autodiff { x.require_grad() } else { x };
            let xw = grad(t([b, s, 4 * w], 50, 2.0, &dev));
            let w_hh = t([w, 4 * w], 51, 0.8, &dev);
            let w_hh = if autodiff { w_hh.require_grad() } else { w_hh };
            let (h0, c0) = if warm {
                (t([b, w], 52, 1.0, &dev), t([b, w], 53, 1.5, &dev))
            } else {
                (Tensor::zeros([b, w], &dev), Tensor::zeros([b, w], &dev))
            };
            let (y, h, c) = fused::lstm(xw.clone(), w_hh.clone(), h0, c0);
            fused::set_enabled(true);
            let mut out = vec![
                y.clone().without_autodiff().reshape([-1]),
                h.clone().without_autodiff().reshape([-1]),
                c.without_autodiff().reshape([-1]),
            ];
            if autodiff {
                // The loss reads every output and the final h.
                let loss = (y.clone() * t(y.dims(), 54, 1.0, &dev)).sum()
                    + (h * t([b, w], 55, 1.0, &dev)).sum();
                let g = loss.backward();
                out.push(xw.grad(&g).unwrap().reshape([-1]));
                out.push(w_hh.grad(&g).unwrap().reshape([-1]));
            }
            out
        };
        let names = ["y", "final h", "final c", "xw", "w_hh"];
        let case = format!("({b},{s},{w}) warm {warm}");
        assert_paths_agree_on_pools(Kernel::Lstm, &run, 5e-6, &case, &names);
    }
}

#[test]
fn slstm_matches_the_step_by_step_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (batch, positions, heads, width per head, nonzero initial state)
    for (b, s, nh, dh, warm) in [
        (3, 6, 2, 3, false),
        (4, 10, 4, 8, true),
        (1, 1, 1, 1, true),
        (5, 7, 1, 12, false),
    ] {
        let d = nh * dh;
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let xw = t([b, s, 4 * d], 60, 2.0, &dev);
            let r = t([nh, dh, 4 * dh], 61, 0.7, &dev);
            let (xw, r) = if autodiff {
                (xw.require_grad(), r.require_grad())
            } else {
                (xw, r)
            };
            let state: [Tensor<4>; 4] = if warm {
                // c, n > 0 (n is a sum of positive terms), m, h.
                let shape = [b, nh, 1, dh];
                [
                    t(shape, 62, 1.0, &dev),
                    t(shape, 63, 1.0, &dev).abs().add_scalar(0.5),
                    t(shape, 64, 1.0, &dev),
                    t(shape, 65, 0.5, &dev),
                ]
            } else {
                std::array::from_fn(|_| Tensor::zeros([b, nh, 1, dh], &dev))
            };
            let (y, st) = fused::slstm(xw.clone(), r.clone(), state);
            fused::set_enabled(true);
            let mut out = vec![y.clone().without_autodiff().reshape([-1])];
            out.extend(
                st.iter()
                    .map(|x| x.clone().without_autodiff().reshape([-1])),
            );
            if autodiff {
                let loss = (y.clone() * t(y.dims(), 66, 1.0, &dev)).sum()
                    + (st[3].clone() * t([b, nh, 1, dh], 67, 1.0, &dev)).sum();
                let g = loss.backward();
                out.push(xw.grad(&g).unwrap().reshape([-1]));
                out.push(r.grad(&g).unwrap().reshape([-1]));
            }
            out
        };
        let names = ["y", "final c", "final n", "final m", "final h", "xw", "r"];
        let case = format!("({b},{s},{nh},{dh}) warm {warm}");
        assert_paths_agree_on_pools(Kernel::Slstm, &run, 5e-6, &case, &names);
    }
}

/// An initial state computed from a parameter carries a gradient: the recurrences then take the
/// plain path, and the parameter's gradient is the same with the kernels on and off.
#[test]
fn recurrences_with_a_differentiable_state_take_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (b, s, w) = (2, 5, 4);
    let run = |on: bool| {
        fused::set_enabled(on);
        let dev = device(true);
        let p = t([b, w], 80, 1.0, &dev).require_grad();
        let xw = t([b, s, 4 * w], 81, 1.0, &dev).require_grad();
        let w_hh = t([w, 4 * w], 82, 0.5, &dev).require_grad();
        // LSTM from (2p, p), sLSTM (one head) from c = p, n = 1 + p², m = 0, h = p, the scan
        // from p.
        let (y1, _, _) = fused::lstm(xw.clone(), w_hh.clone(), p.clone() * 2.0, p.clone());
        let st = |x: Tensor<2>| x.reshape([b, 1, 1, w]);
        let state = [
            st(p.clone()),
            st(p.clone().powi_scalar(2) + 1.0),
            st(p.clone().zeros_like()),
            st(p.clone()),
        ];
        let r = t([1, w, 4 * w], 83, 0.5, &dev);
        let (y2, _) = fused::slstm(xw.clone(), r, state);
        let e = t([b, s, w], 84, 1.0, &dev).exp().mul_scalar(0.3);
        let a = t([1, w, 1], 85, 1.0, &dev).exp().neg();
        let ins = [
            e.clone(),
            a,
            e.clone(),
            t([b, s, 1], 86, 1.0, &dev),
            t([b, s, 1], 87, 1.0, &dev),
        ];
        let (y3, _) = fused::selective_scan(ins, p.clone().reshape([b, w, 1]));
        let loss = (y1 * t([b, s, w], 88, 1.0, &dev)).sum()
            + (y2 * t([b, s, w], 89, 1.0, &dev)).sum()
            + (y3 * t([b, s, w], 90, 1.0, &dev)).sum();
        let g = loss.backward();
        fused::set_enabled(true);
        p.grad(&g).unwrap()
    };
    // Neither with the kernels on nor off does a recurrence kernel run.
    let recurrences = [Kernel::Lstm, Kernel::Slstm, Kernel::Scan];
    let on = counted(&recurrences, false, false, || run(true));
    let off = counted(&recurrences, false, false, || run(false));
    assert!(
        on.clone().abs().max().into_scalar::<f32>() > 1e-3,
        "the state gets a gradient"
    );
    let d = max_diff(on, off);
    assert!(d < 1e-5, "the initial state's gradient differs by {d}");
}

#[test]
fn mlstm_matches_the_parallel_form_in_burn_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (batch, heads, positions, width per head)
    for (b, nh, s, dh) in [(2, 2, 5, 3), (3, 1, 17, 8), (1, 1, 1, 1), (2, 4, 64, 8)] {
        let run = |on: bool, autodiff: bool| {
            fused::set_enabled(on);
            let dev = device(autodiff);
            let grad4 = |x: Tensor<4>| if autodiff { x.require_grad() } else { x };
            let grad3 = |x: Tensor<3>| if autodiff { x.require_grad() } else { x };
            let shape = [b, nh, s, dh];
            let qkv = [
                grad4(t(shape, 100, 1.0, &dev)),
                grad4(t(shape, 101, 0.5, &dev)),
                grad4(t(shape, 102, 1.0, &dev)),
            ];
            // ĩ free, ln f < 0.
            let gates = [
                grad3(t([b, nh, s], 103, 3.0, &dev)),
                grad3(t([b, nh, s], 104, 1.0, &dev).exp().neg().mul_scalar(0.5)),
            ];
            let (y, st) = fused::mlstm(qkv.clone(), gates.clone());
            fused::set_enabled(true);
            let mut out = vec![y.clone().without_autodiff().reshape([-1])];
            out.extend(
                st.iter()
                    .map(|x| x.clone().without_autodiff().reshape([-1])),
            );
            if autodiff {
                let g = (y.clone() * t(y.dims(), 105, 1.0, &dev)).sum().backward();
                out.extend(qkv.iter().map(|x| x.grad(&g).unwrap().reshape([-1])));
                out.extend(gates.iter().map(|x| x.grad(&g).unwrap().reshape([-1])));
            }
            out
        };
        let names = [
            "h",
            "final C",
            "final n",
            "final m",
            "q",
            "k",
            "v",
            "input gate",
            "ln f",
        ];
        let case = format!("({b},{nh},{s},{dh})");
        // Gradients reach ~40 at s = 64 (sums over 64 positions): 1e-4 is ~3e-6 relative.
        assert_paths_agree(Kernel::Mlstm, &run, 1e-4, &case, &names);
    }
}

/// RetNet's retention with its GroupNorm against the plain path (the host-built decay matrix,
/// the products, the norm ops): values and the gradients of q, k, v and the norm's weight and
/// bias, with q, k, v dense or transposed views of `[b, s, h, d]` as the head split makes them.
#[test]
fn retention_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // (batch, heads, positions, d_k, d_v): one position; widths off the vector lanes; several
    // row blocks (the last short); anbn-retnet's sizes.
    for (b, h, s, dk, dv) in [
        (1, 1, 1, 2, 2),
        (2, 3, 7, 4, 5),
        (1, 2, 70, 6, 3),
        (4, 4, 65, 8, 8),
    ] {
        for heads_last in [false, true] {
            let run = |on: bool, autodiff: bool| {
                fused::set_enabled(on);
                let dev = device(autodiff);
                let make = |d: usize, seed: u64| {
                    let x = if heads_last {
                        t([b, s, h, d], seed, 1.5, &dev).swap_dims(1, 2)
                    } else {
                        t([b, h, s, d], seed, 1.5, &dev)
                    };
                    if autodiff {
                        x.require_grad()
                    } else {
                        x
                    }
                };
                let qkv = [make(dk, 110), make(dk, 111), make(dv, 112)];
                let g1 = |x: Tensor<1>| if autodiff { x.require_grad() } else { x };
                let wb = [
                    g1(t([h * dv], 113, 1.5, &dev)),
                    g1(t([h * dv], 114, 1.0, &dev)),
                ];
                let [q, k, v] = qkv.clone();
                let [w, bias] = wb.clone();
                let y = fused::retention(q, k, v, w, bias, 1e-5);
                fused::set_enabled(true);
                let mut out = vec![y.clone().without_autodiff().reshape([-1])];
                if autodiff {
                    let g = (y.clone() * t(y.dims(), 115, 1.0, &dev)).sum().backward();
                    out.extend(qkv.iter().map(|x| x.grad(&g).unwrap().reshape([-1])));
                    out.extend(wb.iter().map(|x| x.grad(&g).unwrap()));
                }
                out
            };
            let case = format!("({b},{h},{s},{dk},{dv}) heads last {heads_last}");
            let names = ["y", "q", "k", "v", "weight", "bias"];
            // At 65 positions the gradients reach ~25, sums of ~65 terms that cancel (the norm's
            // gradient and the products each sum in their own order): 1e-3 is ~4e-5 of that.
            assert_paths_agree(Kernel::Retention, &run, 1e-3, &case, &names);
        }
    }
}
