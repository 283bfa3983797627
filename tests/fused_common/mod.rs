//! What the fused-kernel test files share: deterministic tensors, flat values, differences,
//! devices, and the lock that keeps tests that switch the kernels from interleaving.

#![allow(dead_code)]

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel};
use kiln_kernels::test_values as data;

/// A tensor of `shape` with deterministic values in about [−scale, scale].
pub fn t<const D: usize>(shape: [usize; D], seed: u64, scale: f32, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(data(n, seed, scale), shape), device)
}

/// A tensor's values, flat.
pub fn flat<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().try_to_vec::<f32>().unwrap()
}

/// The largest absolute difference of two slices; asserts both are finite in the same places.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.is_finite(), y.is_finite(), "{x} vs {y}");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// The flex device, with autodiff or without.
pub fn device(autodiff: bool) -> Device {
    if autodiff {
        Device::flex().autodiff()
    } else {
        Device::flex()
    }
}

/// The kernels switch a process-wide flag; the tests must not interleave.
pub static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn max_diff_t<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    max_diff(&flat(a), &flat(b))
}

/// Runs `f` and asserts, by the run counts of `kernels`, which path it took: with `fused`, each
/// kernel's forward pass ran, and its backward pass too exactly when `backward`; without, none
/// of them ran.
pub fn counted<T>(kernels: &[Kernel], fused: bool, backward: bool, f: impl FnOnce() -> T) -> T {
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

/// Runs `run(fused, autodiff)` with the fused kernels on and off, on plain and on autodiff
/// tensors, and asserts the flat tensors it returns (outputs, then gradients) agree within
/// `tol`; `names` labels them in the message. With the kernels on, `kernel` must have run
/// (backward too on autodiff tensors); off, it must not have.
pub fn assert_paths_agree(
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
            let d = max_diff_t(a, z);
            let name = names.get(i).copied().unwrap_or("output");
            assert!(d < tol, "{case}: {name} differs by {d}");
        }
    }
}

/// [`assert_paths_agree`] on rayon pools of 1, 2 and 3 threads. The recurrence kernels split the
/// batch over the pool's threads: one block, blocks of several rows with a shorter last one,
/// and one row per block.
pub fn assert_paths_agree_on_pools(
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
pub fn compare<const D: usize, const E: usize>(
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
    let plain = max_diff_t(a, b);
    // Autodiff: values and gradients.
    let (a, ga) = run(true, true);
    let (b, gb) = run(false, true);
    let value = max_diff_t(a, b).max(plain);
    let grads = ga
        .into_iter()
        .zip(gb)
        .map(|(x, y)| max_diff_t(x, y))
        .collect();
    (value, grads)
}

/// One run of [`compare`]: `f` on fresh inputs from `make` (requiring gradients on autodiff
/// tensors), with the fused kernels `on` or off; returns the output and the inputs' gradients.
pub fn run_once<const D: usize, const E: usize>(
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

/// Asserts by the run counts since `before` that `kernel` ran forward (and backward exactly on
/// autodiff tensors) when `on`, and not at all when off.
#[track_caller]
pub fn assert_ran(kernel: Kernel, before: fused::Calls, on: bool, autodiff: bool) {
    let after = fused::calls(kernel);
    if on {
        assert!(after.forward > before.forward, "{kernel:?} did not run");
        assert_eq!(
            after.backward > before.backward,
            autodiff,
            "{kernel:?} backward"
        );
    } else {
        assert_eq!(before, after, "{kernel:?} ran on the plain path");
    }
}
