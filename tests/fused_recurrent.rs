//! kiln's fused recurrence and retention kernels against the plain Burn path they replace:
//! Mamba's selective scan, the LSTM, sLSTM and mLSTM recurrences, and RetNet's retention; the
//! same values and gradients on plain and autodiff tensors, on rayon pools of several sizes
//! where the kernels split the batch over threads, and by the kernels' run counts the fused
//! path really ran.

use burn::prelude::*;
use kiln::runtime::fused::{self, Kernel};

mod fused_common;
use fused_common::{
    assert_paths_agree, assert_paths_agree_on_pools, counted, device, max_diff_t as max_diff, t,
    LOCK,
};

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
    // (batch, heads, positions, width per head): up to one chunk of the kernel's chunkwise form
    // (64 positions), and three chunks with a shorter last one.
    for (b, nh, s, dh) in [
        (2, 2, 5, 3),
        (3, 1, 17, 8),
        (1, 1, 1, 1),
        (2, 4, 64, 8),
        (2, 2, 150, 4),
    ] {
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
            let (y, st) = fused::mlstm(qkv.clone(), gates.clone(), None);
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
        // Gradients reach ~40 at s = 64 (sums over 64 positions): 1e-4 is ~3e-6 relative. At
        // 150 positions the plain path's running sums F of ln f reach about −90, so its
        // exponents F_t − F_u round at ~1e-5 (the kernel sums ln f within each chunk): 1e-3 is
        // ~1e-4 relative to gradients of ~13.
        let tol = if s > 64 { 1e-3 } else { 1e-4 };
        assert_paths_agree(Kernel::Mlstm, &run, tol, &case, &names);
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
