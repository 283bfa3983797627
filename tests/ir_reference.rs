//! The float64 reference's own definitions (windows, framing, frequency-curriculum weights,
//! the DCT, YaRN) against values worked out by hand, the runtime's helpers against those
//! definitions, the frequency mask's pieces, and the reference's windowed gate (the graph
//! IR's passes, causality and lowering checks: `tests/ir.rs`).

use kiln::diag::SourceMap;
use kiln::ir::reference::{self, definitions};
use kiln::ir::FreqCutoff;
use kiln::lower::lower_document;
use std::path::Path;

mod ir_common;
use ir_common::run;

/// The mask's pieces: the DCT-II basis is orthonormal, so an all-ones mask leaves a kernel
/// unchanged and Cᵀ·diag(m)·C keeps basis vector k with weight m_k; the weights follow the
/// hard and soft formulas.
#[test]
fn frequency_masks_scale_each_basis_vector_by_its_weight() {
    let l = 8;
    let c = kiln::ops::spectral::dct_basis(l);
    for a in 0..l {
        for b in 0..l {
            let dot: f64 = (0..l).map(|t| c[a * l + t] * c[b * l + t]).sum();
            assert!(
                (dot - f64::from(u8::from(a == b))).abs() < 1e-12,
                "rows {a}, {b}"
            );
        }
    }
    let mask = FreqCutoff {
        cutoff: 0.5,
        slope: Some(6.0),
    };
    let w = mask.weights(l);
    for k in 0..l {
        let b = &c[k * l..(k + 1) * l];
        let coef: Vec<f64> = (0..l)
            .map(|j| w[j] * (0..l).map(|t| c[j * l + t] * b[t]).sum::<f64>())
            .collect();
        for t in 0..l {
            let got: f64 = (0..l).map(|j| c[j * l + t] * coef[j]).sum();
            assert!((got - w[k] * b[t]).abs() < 1e-12, "k={k}");
        }
    }
    // Hard: bins 0, 1, 2 of 8 (f = 0, 1/7, 2/7) pass a cutoff of 0.3; soft: sigmoid.
    assert_eq!(
        FreqCutoff {
            cutoff: 0.3,
            slope: None
        }
        .weights(8),
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    let soft = FreqCutoff {
        cutoff: 0.5,
        slope: Some(4.0),
    }
    .weights(3);
    assert!(
        (soft[1] - 0.5).abs() < 1e-12 && (soft[0] - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12
    );
    assert_eq!(
        FreqCutoff {
            cutoff: 1.0,
            slope: None
        }
        .weights(5),
        [1.0; 5]
    );
}

/// YaRN frequencies against values computed by hand from Hugging Face's
/// `_compute_yarn_parameters` (head width 16, base 10000, factor 4, 64 original positions:
/// correction range [0, 3], so pair 0 keeps its frequency, pairs 1 and 2 blend, the rest are
/// divided by 4; cos and sin scale by 0.1·ln 4 + 1).
#[test]
fn yarn_frequencies_follow_the_reference_formula() {
    use kiln::ir::Real;
    use kiln::ops::positions::rope_frequencies;
    let (f, scale) = rope_frequencies(16, 10000.0, Some((Real(4.0), 64, Real(32.0), Real(1.0))));
    let want = [
        1.0,
        0.23717082451262847,
        0.05,
        0.007905694150420948,
        0.0025,
        0.0007905694150420947,
        0.00025,
        7.905694150420948e-05,
    ];
    for (a, b) in f.iter().zip(want) {
        assert!((a - b).abs() < 1e-12 * b.max(1e-3), "{f:?}");
    }
    assert!((scale - 1.138629436111989).abs() < 1e-12);
    let (plain, one) = rope_frequencies(16, 10000.0, None);
    assert_eq!(one, 1.0);
    assert!((plain[1] - 10000f64.powf(-2.0 / 16.0)).abs() < 1e-15);
    // The reference's own YaRN gives the same hand values.
    let (f, scale) =
        definitions::rope_frequencies(16, 10000.0, Some((Real(4.0), 64, Real(32.0), Real(1.0))));
    for (a, b) in f.iter().zip(want) {
        assert!((a - b).abs() < 1e-12 * b.max(1e-3), "reference {f:?}");
    }
    assert!((scale - 1.138629436111989).abs() < 1e-12);
}

/// The reference's own definitions (windows, framing, frequency-curriculum weights, the DCT)
/// against values worked out by hand from the documentation.
#[test]
fn the_reference_definitions_give_hand_computed_values() {
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        assert!(
            a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12),
            "{what}: {a:?} vs {b:?}"
        );
    };
    // Periodic windows of 4 steps: cos(2πn/4) = 1, 0, −1, 0.
    close(&definitions::hann(4), &[0.0, 0.5, 1.0, 0.5], "Hann");
    close(
        &definitions::hamming(4),
        &[0.08, 0.54, 1.0, 0.54],
        "Hamming",
    );
    // softmax(ln 1, ln 2, ln 1) = (¼, ½, ¼): ¼·Hann + ½·Hamming + ¼.
    let mix = [0.0, 2f64.ln(), 0.0];
    close(
        &definitions::learned_window(4, &mix),
        &[0.29, 0.645, 1.0, 0.645],
        "mixed window",
    );
    close(
        &definitions::learned_window(3, &[0.0; 3]),
        &[
            (0.0 + 0.08 + 1.0) / 3.0,
            (0.75 + 0.77 + 1.0) / 3.0,
            (0.75 + 0.77 + 1.0) / 3.0,
        ],
        "equal mix, odd length",
    );
    // (window, hop, len) → (steps before the sequence, frames): the first frame starts
    // window − hop early and frames follow until one reaches the last step.
    for ((window, hop, len), want) in [
        ((8, 4, 13), (4, 4)),  // frames at −4, 0, 4, 8; the last ends at 16 ≥ 13
        ((8, 3, 20), (5, 7)),  // frames at −5, −2, …, 13; the last ends at 21 ≥ 20
        ((6, 6, 7), (0, 2)),   // no overlap: 0..6, 6..12
        ((5, 1, 9), (4, 9)),   // frames at −4..4
        ((16, 4, 3), (12, 1)), // one frame covers −12..4
        ((4, 2, 4), (2, 2)),   // frames at −2, 0; the last ends at 4
    ] {
        assert_eq!(
            definitions::frame_layout(window, hop, len),
            want,
            "window {window} hop {hop} len {len}"
        );
    }
    // Frequency-curriculum weights: f_k = k/(F − 1).
    let hard = |cutoff| FreqCutoff {
        cutoff,
        slope: None,
    };
    close(
        &definitions::curriculum_weights(&hard(0.3), 8),
        &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "hard 0.3 of 8",
    );
    close(
        &definitions::curriculum_weights(&hard(0.5), 5),
        &[1.0, 1.0, 1.0, 0.0, 0.0],
        "hard 0.5 of 5: f = 0.5 is kept",
    );
    close(
        &definitions::curriculum_weights(&hard(0.1), 1),
        &[1.0],
        "one bin",
    );
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    close(
        &definitions::curriculum_weights(
            &FreqCutoff {
                cutoff: 0.5,
                slope: Some(4.0),
            },
            3,
        ),
        &[sig(2.0), 0.5, sig(-2.0)],
        "soft",
    );
    // DCT-II of 2 taps: (1, 1)/√2 and (cos π/4, cos 3π/4) = (1, −1)/√2.
    let r = 0.5f64.sqrt();
    close(
        &[
            definitions::dct(2, 0, 0),
            definitions::dct(2, 0, 1),
            definitions::dct(2, 1, 0),
            definitions::dct(2, 1, 1),
        ],
        &[r, r, r, -r],
        "DCT of 2",
    );
}

/// The runtime's helpers in `ir::op` and `ops::spectral` (which the reference does not call) against the
/// reference's own definitions over many sizes and settings, so a bug in a helper shows here by
/// name as well as in the runtime-against-reference tests.
#[test]
fn the_runtime_helpers_agree_with_the_reference_definitions() {
    use kiln::ir::Real;
    use kiln::ops::positions::rope_frequencies;
    use kiln::ops::spectral::{dct_basis, frames, window_basis};
    for w in 1..=33 {
        let basis = window_basis(w);
        let rect = vec![1.0; w];
        for (i, want) in [definitions::hann(w), definitions::hamming(w), rect]
            .iter()
            .enumerate()
        {
            let d = basis[i * w..(i + 1) * w]
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-12, "window {i} of {w} steps differs by {d}");
        }
        for hop in 1..=w {
            for len in 1..=40 {
                assert_eq!(
                    frames(w, hop, len),
                    definitions::frame_layout(w, hop, len),
                    "window {w} hop {hop} len {len}"
                );
            }
        }
        let c = dct_basis(w);
        for k in 0..w {
            for t in 0..w {
                assert!((c[k * w + t] - definitions::dct(w, k, t)).abs() < 1e-12);
            }
        }
    }
    let yarns = [
        None,
        Some((Real(4.0), 64, Real(32.0), Real(1.0))),
        Some((Real(2.0), 32, Real(32.0), Real(1.0))),
        Some((Real(8.0), 4096, Real(32.0), Real(1.0))),
        Some((Real(1.5), 100, Real(8.0), Real(2.0))),
        // An empty correction range (low = high = 0: even one rotation over 6 positions is
        // too fast): the ramp's end moves up by 0.001.
        Some((Real(3.0), 6, Real(32.0), Real(1.0))),
        Some((Real(1.0), 64, Real(32.0), Real(1.0))),
    ];
    for head_dim in [2, 8, 16, 64] {
        for base in [100.0, 10000.0, 500000.0] {
            for yarn in yarns {
                let (a, sa) = rope_frequencies(head_dim, base, yarn);
                let (b, sb) = definitions::rope_frequencies(head_dim, base, yarn);
                assert_eq!(a.len(), b.len());
                let rel = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs() / y.abs())
                    .fold((sa - sb).abs(), f64::max);
                assert!(
                    rel < 1e-12,
                    "head {head_dim} base {base} {yarn:?}: {a:?} vs {b:?}, {sa} vs {sb}"
                );
            }
        }
    }
    // Hard and soft masks at cutoffs on and between bins (k/20 is exactly k/(F − 1) for
    // F = 21, 11, 5, …).
    for bins in 1..=21 {
        for k in 0..=20 {
            for slope in [None, Some(1.0), Some(12.0), Some(40.0)] {
                let m = FreqCutoff {
                    cutoff: f64::from(k) / 20.0,
                    slope,
                };
                let (a, b) = (m.weights(bins), definitions::curriculum_weights(&m, bins));
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(d < 1e-12, "{m:?} over {bins} bins: {a:?} vs {b:?}");
            }
        }
    }
}

/// In float64 the windowed gate with the identity gate returns its input to rounding error,
/// for several windows, hops and window mixes (the reference computes frames, DFTs and the
/// overlap-add by their definitions). That holds for any window, so the gate is then set to a
/// one-step delay, whose output depends on the window, and checked against a hand formula
/// with the window written out here.
#[test]
fn the_reference_windowed_gate_reconstructs_exactly_and_follows_its_window() {
    for (window, hop) in [(8, 4), (8, 3), (6, 6), (5, 1), (16, 4)] {
        let text = format!("kind: model\nvocab: 3\nlayers:\n  - {{type: embedding, dim: 3}}\n  - {{type: windowed_spectral_gate, window: {window}, hop: {hop}}}\n");
        let mut sources = SourceMap::new();
        let doc =
            kiln::spec::load::load_bytes(Path::new("m.yaml"), text.into_bytes(), &[], &mut sources)
                .unwrap();
        let g = lower_document(&doc, None, None).unwrap();
        let mut params = reference::init_params(&g, 3);
        let f = window / 2 + 1;
        for (name, t) in params.iter_mut() {
            if name.ends_with("gate") {
                assert_eq!(t.shape, vec![f, 3, 2]);
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v = if i % 2 == 0 { 1.0 } else { 0.0 };
                }
            } else if name.ends_with("window_mix") {
                t.data = vec![2.0, -1.0, -3.0];
            }
        }
        let toks = vec![
            vec![0, 2, 1, 1, 0, 2, 2, 1, 0, 1, 2],
            vec![1, 1, 1, 0, 0, 0, 2, 2, 2, 1, 0],
        ];
        let out = run(&g, &params, &toks);
        let table = params["layers.0.weight"].clone();
        for (r, row) in toks.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                for c in 0..3 {
                    let got = out.data[(r * row.len() + t) * 3 + c];
                    let want = table.data[id as usize * 3 + c];
                    assert!(
                        (got - want).abs() < 1e-9,
                        "window {window} hop {hop}: {got} vs {want}"
                    );
                }
            }
        }
        // The delay gate e^{−2πik/w} turns each windowed frame into its circular shift by one
        // step, so output t is Σ g[n]·g[n − 1]·x[start + n − 1] / Σ g[n]² over the frames that
        // hold t at step n (n − 1 taken mod w, x zero outside the sequence).
        let w = window;
        for (name, t) in params.iter_mut() {
            if name.ends_with("gate") {
                for k in 0..f {
                    let a = 2.0 * std::f64::consts::PI * k as f64 / w as f64;
                    for c in 0..3 {
                        t.data[(k * 3 + c) * 2] = a.cos();
                        t.data[(k * 3 + c) * 2 + 1] = -a.sin();
                    }
                }
            }
        }
        let out = run(&g, &params, &toks);
        let e = [2f64.exp(), (-1f64).exp(), (-3f64).exp()];
        let z: f64 = e.iter().sum();
        let window_at = |n: usize| {
            let c = (2.0 * std::f64::consts::PI * n as f64 / w as f64).cos();
            (e[0] * (0.5 - 0.5 * c) + e[1] * (0.54 - 0.46 * c) + e[2]) / z
        };
        let len = toks[0].len();
        let pad = w - hop;
        let count = (0..).find(|&c| c * hop + w >= pad + len).unwrap() + 1;
        let mut moved = 0.0f64;
        for (r, row) in toks.iter().enumerate() {
            let x = |p: usize, c: usize| match p.checked_sub(pad).filter(|&t| t < len) {
                Some(t) => table.data[row[t] as usize * 3 + c],
                None => 0.0,
            };
            for t in 0..len {
                for c in 0..3 {
                    let (mut num, mut den) = (0.0, 0.0);
                    for frame in 0..count {
                        let start = frame * hop;
                        if start <= pad + t && pad + t < start + w {
                            let n = pad + t - start;
                            let m = (n + w - 1) % w;
                            num += window_at(n) * window_at(m) * x(start + m, c);
                            den += window_at(n).powi(2);
                        }
                    }
                    let got = out.data[(r * len + t) * 3 + c];
                    assert!(
                        (got - num / den).abs() < 1e-9,
                        "delay, window {window} hop {hop}, position {t}: {got} vs {}",
                        num / den
                    );
                    moved = moved.max((got - x(pad + t, c)).abs());
                }
            }
        }
        assert!(moved > 1e-3, "the delay gate changes the output");
    }
}
