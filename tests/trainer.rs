//! The optimizer step's numerics: label smoothing against a hand computation, gradient
//! accumulation against one large batch, and AdamW's first step against its formula.

use burn::prelude::*;
use kiln::ir::reference::Rng;
use kiln::runtime::DeviceKind;
use kiln::spec::recipe::RecipeSpec;
use kiln::train::{cross_entropy, distribution_loss, Trainer};
use std::path::Path;

fn recipe(sets: &[&str]) -> (RecipeSpec, kiln::ir::Graph) {
    let sets: Vec<String> = sets.iter().map(ToString::to_string).collect();
    let (r, g) = kiln::compile::recipe(Path::new("recipes/default.yaml"), &sets, false)
        .unwrap_or_else(|e| panic!("{e}"));
    (r.spec, g)
}

fn batch(seed: u64, n: usize, len: usize) -> Vec<Vec<i64>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (0..len).map(|_| (rng.next_u64() % 5) as i64).collect())
        .collect()
}

#[test]
fn label_smoothing_matches_a_hand_computation() {
    let device = DeviceKind::Cpu.device(false);
    let logits = [[0.5f64, -1.0, 2.0], [0.0, 0.3, -0.7]];
    let targets = [2usize, 0];
    for eps in [0.0, 0.1, 0.5] {
        let t = Tensor::<3>::from_data(
            TensorData::new(
                logits
                    .iter()
                    .flatten()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
                [1, 2, 3],
            ),
            &device,
        );
        let y = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 0], [1, 2]), &device);
        let got: f32 = cross_entropy(t, y, eps).into_scalar();
        // PyTorch: loss = (1-ε)·(−log p_y) + ε·mean_k(−log p_k).
        let mut want = 0.0;
        for (row, &y) in logits.iter().zip(&targets) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            let nll = lse - row[y];
            let smooth = row.iter().map(|v| lse - v).sum::<f64>() / 3.0;
            want += (1.0 - eps) * nll + eps * smooth;
        }
        want /= 2.0;
        assert!(
            (f64::from(got) - want).abs() < 1e-6,
            "ε = {eps}: {got} vs {want}"
        );
    }
}

#[test]
fn the_distribution_loss_matches_a_hand_computation() {
    let device = DeviceKind::Cpu.device(false);
    let mut rng = Rng::new(11);
    let (n, v) = (6usize, 7usize);
    let logits: Vec<f64> = (0..n * v).map(|_| rng.normal()).collect();
    let targets: Vec<i64> = vec![0, 6, 3, 3, 5, 1];
    let t = Tensor::<3>::from_data(
        TensorData::new(
            logits.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            [2, 3, v],
        ),
        &device,
    );
    let y = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [2, 3]), &device);
    let scales = [2u32, 3, 7];
    let got: f32 = distribution_loss(t, y, &scales).into_scalar();
    // Mean predicted probability per class, then per bin (class c in bin ⌊c·s/V⌋).
    let mut pbar = vec![0f64; v];
    for row in logits.chunks(v) {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        for (c, x) in row.iter().enumerate() {
            pbar[c] += x.exp() / z / n as f64;
        }
    }
    let mut want = 0.0;
    for &s in &scales {
        let s = s as usize;
        let (mut p, mut t) = (vec![0f64; s], vec![0f64; s]);
        for c in 0..v {
            p[c * s / v] += pbar[c];
        }
        for &y in &targets {
            t[y as usize * s / v] += 1.0 / n as f64;
        }
        want += (0..s)
            .filter(|&b| t[b] > 0.0)
            .map(|b| t[b] * (t[b] / p[b]).ln())
            .sum::<f64>()
            / scales.len() as f64;
    }
    assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn gradient_accumulation_equals_one_large_batch() {
    let (spec, g) = recipe(&["model.vars.depth=1", "train.clip_grad_norm=0.5"]);
    let data = batch(3, 8, 13);
    let device = DeviceKind::Cpu.device(true);
    let mut one = Trainer::new(&spec.train, g.clone(), device.clone());
    let mut cfg = spec.train.clone();
    cfg.grad_accum = 2;
    let mut two = Trainer::new(&cfg, g, device);
    for _ in 0..3 {
        let a = one.step(std::slice::from_ref(&data), 100).unwrap();
        let b = two
            .step(&[data[..4].to_vec(), data[4..].to_vec()], 100)
            .unwrap();
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
    }
    let (wa, wb) = (one.rt.values(), two.rt.values());
    for (name, (va, _)) in &wa {
        let d = va
            .iter()
            .zip(&wb[name].0)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "{name} differs by {d}");
    }
}

#[test]
fn adamw_first_step_follows_its_formula() {
    // Step 1 of Adam with bias correction moves every parameter with a non-zero gradient by
    // lr·g/(|g| + ε) ≈ ±lr, after decoupled decay θ·(1 − lr·λ) on decayed matrices.
    let (spec, g) = recipe(&[
        "model.vars.depth=1",
        "train.schedule={type: constant}",
        "train.optimizer={type: adamw, lr: 0.01, weight_decay: 0.5}",
    ]);
    let mut tr = Trainer::new(&spec.train, g, DeviceKind::Cpu.device(true));
    let before = tr.rt.values();
    tr.step(&[batch(5, 4, 13)], 10).unwrap();
    let after = tr.rt.values();
    let (mut checked, mut full) = (0, 0);
    for (name, (b, shape)) in &before {
        let a = &after[name].0;
        let decayed = shape.len() >= 2 && name != "layers.0.weight";
        for (x0, x1) in b.iter().zip(a) {
            let start = if decayed {
                x0 * (1.0 - 0.01 * 0.5)
            } else {
                *x0
            };
            let moved = (x1 - start).abs();
            // |g|/(|g| + ε) ≤ 1: never more than lr; exactly lr unless |g| is tiny (or zero,
            // as for embedding rows of tokens absent from the batch).
            assert!(moved < 0.01 + 2e-5, "{name}: moved by {moved}");
            full += usize::from((moved - 0.01).abs() < 2e-5);
            checked += 1;
        }
    }
    assert!(checked > 1000);
    assert!(full * 10 > checked * 9, "{full} of {checked} moved by lr");
}

/// The frequency curriculum's clock advances one per step, `rate` while the validation loss
/// has stalled for `patience` evaluations, and each step reports the cutoff it trained with.
#[test]
fn the_frequency_curriculum_clock_slows_down_while_validation_stalls() {
    let (r, g) = kiln::compile::recipe(
        Path::new("recipes/anbn-gfnet-frequency.yaml"),
        &[
            "model.vars.depth=1".into(),
            "model.vars.max_len=16".into(),
            "task.max_length=14".into(),
            "train.frequency_curriculum={start: 0.2, warmup: 1, steps: 4, adaptive: {patience: 2, rate: 0.25}}".into(),
        ],
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut tr = Trainer::new(&r.spec.train, g, DeviceKind::Cpu.device(true));
    let data = batch(1, 4, 9);
    let mut cutoffs = Vec::new();
    for since_best in [0, 0, 2, 2, 0, 0, 0, 0] {
        tr.state.since_best = since_best;
        let s = tr.step(std::slice::from_ref(&data), 100).unwrap();
        cutoffs.push(s.freq_cutoff);
        assert_eq!(
            tr.rt.freq_mask, None,
            "evaluation after the step sees unmasked gates"
        );
    }
    // Clock before each step: 0, 1, 2, 2.25, 2.5, 3.5, 4.5, 5.5 (lifted from 5 on).
    let want = [0.2, 0.2, 0.4, 0.45, 0.5, 0.7, 0.9];
    for (i, w) in want.iter().enumerate() {
        let got = cutoffs[i].unwrap();
        assert!((got - w).abs() < 1e-9, "step {i}: cutoff {got}, want {w}");
    }
    assert_eq!(cutoffs[7], None);
    assert!((tr.state.freq_clock - 6.5).abs() < 1e-12);
    // The clock is part of the checkpoint.
    let dir = std::env::temp_dir().join(format!("kiln-freq-clock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    tr.save(&path).unwrap();
    let (_, _, state) = kiln::train::load_checkpoint(&path).unwrap();
    assert_eq!(state.freq_clock, 6.5);
    let _ = std::fs::remove_dir_all(dir);
}
