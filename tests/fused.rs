//! kiln's fused CPU kernels against the plain Burn path they replace: the same values and the
//! same gradients, on plain and autodiff tensors, for shapes that exercise every edge (rows
//! shorter than a vector, causal offsets, grouped rows, non-contiguous inputs). Each comparison
//! also checks, by the kernels' run counts, that the fused path really ran (an op silently takes
//! the plain path when the kernels cannot take its inputs) and that the plain path ran none.

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel, Visible};

mod fused_common;
use fused_common::{
    assert_paths_agree, compare, counted, device, max_diff_t as max_diff, run_once, t, LOCK,
};

fn vis(queries: usize, causal: bool, offset: usize) -> Visible {
    Visible {
        queries,
        causal,
        offset,
    }
}

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
            |x: Vec<Tensor<4>>| fused::softmax_rows(x[0].clone(), vis, None),
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
        |x: Vec<Tensor<4>>| {
            fused::softmax_rows(x[0].clone().swap_dims(2, 3), vis(6, true, 0), None)
        },
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
                    fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis, None)
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
            fused::attention_dropout(
                x[0].clone(),
                x[1].clone(),
                x[2].clone(),
                0.7,
                vis,
                p,
                key,
                None,
            )
        };
        // The separate ops, the G query heads of a KV head as G·s rows ([b, hk, G·s, t] has
        // the row-major order of [b, h, s, t]).
        let separate = |x: Vec<Tensor<4>>| {
            let q = x[0]
                .clone()
                .mul_scalar(0.7)
                .reshape([b, hk, (h / hk) * s, d]);
            let probs = fused::softmax_rows(q.matmul(x[1].clone().swap_dims(2, 3)), vis, None);
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
        let plain = fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis, None);
        assert!(
            max_diff(fused_attn(x), plain) > 1e-3,
            "{case}: nothing dropped"
        );
    }
}

/// Hard attention in the fused kernel against its plain path (masked scores, one-hot weights
/// on each row's maximum, straight-through in training, the dropout of the weights): values
/// and every gradient, with and without dropout. Outside training the fused kernel serves
/// plain tensors only (hard weights give q and k no gradient there).
#[test]
fn hard_attention_matches_its_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // ([b, query heads, KV heads, s, t, d], causal, offset, dropout)
    let cases = [
        ([2, 4, 2, 3, 3, 4], true, 0, None),
        ([1, 3, 3, 5, 9, 7], true, 4, Some(0.5)),
        ([3, 2, 2, 7, 11, 5], false, 0, None),
        ([2, 4, 2, 37, 37, 8], true, 0, Some(0.1)),
        ([1, 2, 1, 35, 45, 8], true, 10, None),
    ];
    for (i, ([b, h, hk, s, tk, d], causal, offset, p)) in cases.into_iter().enumerate() {
        let vis = vis(s, causal, offset);
        let drop = p.map(|p| (p, 2000 + i as u64));
        let case = format!("({b},{h},{hk},{s},{tk},{d}) {vis:?} {drop:?}");
        let make = |dev: &Device| {
            vec![
                t([b, s, h, d], 22, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, d], 23, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, d], 24, 1.5, dev).swap_dims(1, 2),
            ]
        };
        let hard = |train: bool| {
            move |x: Vec<Tensor<4>>| {
                let qkv = (x[0].clone(), x[1].clone(), x[2].clone());
                fused::attention_hard(qkv, 0.7, vis, drop, train, None)
            }
        };
        let (v, g) = compare(Kernel::Attention, make, hard(true));
        assert!(v < 1e-5, "{case}: values differ by {v}");
        for (name, g) in ["q", "k", "v"].iter().zip(&g) {
            assert!(*g < 1e-5, "{case}: {name} gradients differ by {g}");
        }
        // Outside training (dropout is a training matter).
        let infer = |x: Vec<Tensor<4>>| {
            let qkv = (x[0].clone(), x[1].clone(), x[2].clone());
            fused::attention_hard(qkv, 0.7, vis, None, false, None)
        };
        let (a, _) = counted(&[Kernel::Attention], true, false, || {
            run_once(&make, &infer, true, false)
        });
        let (z, _) = counted(&[Kernel::Attention], false, false, || {
            run_once(&make, &infer, false, false)
        });
        let v = max_diff(a.clone(), z);
        assert!(v < 1e-5, "{case}: inference values differ by {v}");
        // The weights are hard: the output differs from soft attention's.
        let x = make(&Device::flex());
        let soft = fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 0.7, vis, None);
        assert!(max_diff(a, soft) > 1e-3, "{case}: the weights are soft");
    }
}

/// Values of another width than the queries and keys (phase-coherent attention's queries and
/// keys carry its phases as extra features): values and every gradient against the plain path.
#[test]
fn attention_with_values_of_another_width_matches_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // ([b, query heads, KV heads, s, t, d, e], causal, offset)
    for ([b, h, hk, s, tk, d, e], causal, offset) in [
        ([2, 4, 4, 65, 65, 14, 6], true, 0),
        ([1, 4, 2, 3, 9, 5, 8], true, 6),
        ([2, 2, 1, 7, 5, 3, 4], false, 0),
    ] {
        let vis = vis(s, causal, offset);
        let make = |dev: &Device| {
            vec![
                t([b, s, h, d], 32, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, d], 33, 1.5, dev).swap_dims(1, 2),
                t([b, tk, hk, e], 34, 1.5, dev).swap_dims(1, 2),
            ]
        };
        let (v, g) = compare(Kernel::Attention, make, |x: Vec<Tensor<4>>| {
            fused::attention(x[0].clone(), x[1].clone(), x[2].clone(), 1.0, vis, None)
        });
        let case = format!("({b},{h},{hk},{s},{tk},{d},{e}) {vis:?}");
        assert!(v < 4e-6, "{case}: values differ by {v}");
        for (name, g) in ["q", "k", "v"].iter().zip(&g) {
            assert!(*g < 5e-6, "{case}: {name} gradients differ by {g}");
        }
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
fn empty_tensors_take_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    let x = Tensor::<3>::zeros([2, 0, 5], &dev).require_grad();
    let y = counted(&[Kernel::Silu, Kernel::RmsNorm], false, false, || {
        fused::silu(x.clone()) + fused::rmsnorm(x, Tensor::ones([5], &dev), 1e-6)
    });
    assert_eq!(y.dims(), [2, 0, 5]);
}
