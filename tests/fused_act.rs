//! The fused activations (ReLU, GELU, tanh) and the fused dropout against the plain Burn path:
//! the same values and gradients, on plain and autodiff tensors, at odd sizes and on a
//! non-contiguous input; by the kernels' run counts, the fused path really ran (and the plain
//! path ran none). Dropout is compared with the same mask applied by plain tensor ops, and its
//! masks are checked for their kept fraction and their dependence on the key. The fused
//! cross-entropy (a language model's loss) against `log_softmax` and `gather`.

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel};
mod fused_common;
use fused_common::{assert_ran, flat, max_diff, t, LOCK};

/// `f(x)` with the fused kernels `on` or off, on plain or autodiff tensors: the output and, on
/// autodiff tensors, x's gradient for the loss `Σ w·y` (w fixed, so each element weighs
/// differently). Asserts by the run counts that `kernel` ran forward (and backward on autodiff
/// tensors) exactly when on.
fn run(
    kernel: Kernel,
    x: &dyn Fn(&Device) -> Tensor<3>,
    f: &dyn Fn(Tensor<3>) -> Tensor<3>,
    on: bool,
    autodiff: bool,
) -> (Vec<f32>, Vec<f32>) {
    fused::set_enabled(on);
    let device = if autodiff {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    let before = fused::calls(kernel);
    let x = if autodiff {
        x(&device).require_grad()
    } else {
        x(&device)
    };
    let y = f(x.clone());
    let grad = if autodiff {
        let w = t(y.dims(), 99, 1.0, &device);
        let g = (y.clone() * w).sum().backward();
        flat(x.grad(&g).expect("x gets a gradient"))
    } else {
        vec![]
    };
    fused::set_enabled(true);
    assert_ran(kernel, before, on, autodiff);
    (flat(y.without_autodiff()), grad)
}

/// The largest differences between the fused and plain paths: values (plain and autodiff
/// tensors) and gradients.
fn compare(
    kernel: Kernel,
    x: &dyn Fn(&Device) -> Tensor<3>,
    f: &dyn Fn(Tensor<3>) -> Tensor<3>,
) -> (f32, f32) {
    let (a, _) = run(kernel, x, f, true, false);
    let (b, _) = run(kernel, x, f, false, false);
    let (c, gc) = run(kernel, x, f, true, true);
    let (d, gd) = run(kernel, x, f, false, true);
    (max_diff(&a, &b).max(max_diff(&c, &d)), max_diff(&gc, &gd))
}

type Op = fn(Tensor<3>) -> Tensor<3>;

#[test]
fn activations_match_the_plain_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let acts: [(Kernel, Op); 3] = [
        (Kernel::Relu, fused::relu),
        (Kernel::Gelu, fused::gelu),
        (Kernel::Tanh, fused::tanh_tensor),
    ];
    for (kernel, f) in acts {
        // Small, more than one task's worth with a short last task, one element.
        for (shape, scale) in [([2, 3, 5], 3.0), ([4, 33, 127], 6.0), ([1, 1, 1], 0.7)] {
            let (v, g) = compare(kernel, &|d| t(shape, 1, scale, d), &f);
            assert!(
                v < 2e-6 * scale,
                "{kernel:?} {shape:?}: values differ by {v}"
            );
            assert!(
                g < 2e-6 * scale,
                "{kernel:?} {shape:?}: gradients differ by {g}"
            );
        }
        // A non-contiguous input (a transposed view).
        let (v, g) = compare(kernel, &|d| t([3, 7, 9], 2, 4.0, d), &|x| {
            f(x.swap_dims(1, 2))
        });
        assert!(v < 1e-5 && g < 1e-5, "{kernel:?} transposed: {v} {g}");
    }
}

#[test]
fn dropout_matches_the_same_mask_by_plain_ops() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (shape, p, key) in [
        ([2, 3, 5], 0.1, 1),
        ([4, 33, 127], 0.4, 2),
        ([1, 1, 1], 0.5, 3),
    ] {
        // Off, `fused::dropout` applies the same mask by plain ops (`dropout_plain`).
        let (v, g) = compare(Kernel::Dropout, &|d| t(shape, 1, 2.0, d), &|x| {
            fused::dropout(x, p, key)
        });
        assert!(v < 1e-6 && g < 1e-6, "{shape:?}: {v} {g}");
        // And spelled out: x · mask / (1 − p), gradient w · mask / (1 − p).
        let dev = Device::flex();
        let x = t(shape, 1, 2.0, &dev);
        let plain = x.clone() * fused::dropout_mask(&x, p, key) / (1.0 - p);
        let fused_y = fused::dropout(x, p, key);
        assert!(max_diff(&flat(fused_y), &flat(plain)) < 1e-6);
    }
    // A non-contiguous input: the mask follows the row-major order of the view.
    let (v, g) = compare(Kernel::Dropout, &|d| t([3, 7, 9], 2, 2.0, d), &|x| {
        fused::dropout(x.swap_dims(1, 2), 0.3, 9)
    });
    assert!(v < 1e-6 && g < 1e-6, "transposed: {v} {g}");
}

#[test]
fn dropout_masks_keep_one_minus_p_and_depend_on_the_key_only() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex();
    let x = Tensor::<3>::ones([8, 64, 129], &dev);
    let n = x.shape().num_elements() as f64;
    let mask = |p: f64, key: u64| flat(fused::dropout(x.clone(), p, key));
    for p in [0.1, 0.4] {
        let m = mask(p, 11);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n;
        let se = (p * (1.0 - p) / n).sqrt();
        assert!((kept - (1.0 - p)).abs() < 4.0 * se, "p {p}: kept {kept}");
        assert!(m
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p) as f32).abs() < 1e-6));
        // The same key, the same mask; another key (another op or step), another mask.
        assert_eq!(m, mask(p, 11));
        let other = mask(p, 12);
        let differ = m.iter().zip(&other).filter(|(a, b)| a != b).count() as f64 / n;
        assert!(
            (differ - 2.0 * p * (1.0 - p)).abs() < 0.01,
            "p {p}: {differ}"
        );
    }
    // p = 0 is the identity.
    assert!(mask(0.0, 5).iter().all(|&v| v == 1.0));
}

#[test]
fn cross_entropy_matches_log_softmax_and_gather() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Rows shorter than a vector, several tasks' worth of long rows, one element; with and
    // without label smoothing.
    for (shape, eps) in [([2, 3, 5], 0.0), ([3, 17, 1000], 0.1), ([1, 1, 1], 0.2)] {
        let [b, s, v] = shape;
        let f = move |x: Tensor<3>| {
            let ids: Vec<i64> = (0..b * s).map(|i| ((i * 7 + 3) % v) as i64).collect();
            let y = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, s]), &x.device());
            fused::cross_entropy(x, y, eps).unsqueeze_dim::<3>(2)
        };
        let (v, g) = compare(Kernel::CrossEntropy, &|d| t(shape, 1, 4.0, d), &f);
        assert!(v < 2e-5 && g < 1e-6, "{shape:?} ε {eps}: {v} {g}");
    }
    // A non-contiguous input (a transposed view).
    let f = |x: Tensor<3>| {
        let y = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 0, 6, 2, 3, 4], [2, 3]),
            &x.device(),
        );
        fused::cross_entropy(x.swap_dims(1, 2), y, 0.1).unsqueeze_dim::<3>(2)
    };
    let (v, g) = compare(Kernel::CrossEntropy, &|d| t([2, 7, 3], 2, 3.0, d), &f);
    assert!(v < 1e-5 && g < 1e-6, "transposed: {v} {g}");
}
