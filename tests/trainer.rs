//! The optimizer step's numerics: label smoothing against a hand computation, gradient
//! accumulation against one large batch, and AdamW steps against a float64 AdamW.

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

/// The gradient of the mean next-token loss of `data` at the trainer's current parameters, per
/// parameter (flat, in `rt.names` order), from the same autodiff graph the trainer runs.
fn gradients(tr: &Trainer, data: &[Vec<i64>]) -> Vec<Vec<f64>> {
    let device = &tr.rt.device;
    let x: Vec<Vec<i64>> = data.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
    let y: Vec<Vec<i64>> = data.iter().map(|s| s[1..].to_vec()).collect();
    let (x, y) = (
        kiln::runtime::tokens_tensor(&x, device),
        kiln::runtime::tokens_tensor(&y, device),
    );
    let grads = cross_entropy(tr.rt.forward(x, true), y, 0.0).backward();
    tr.rt
        .params
        .iter()
        .zip(&tr.rt.shapes)
        .map(|(p, s)| match p.grad(&grads) {
            Some(g) => g.to_vec().into_iter().map(f64::from).collect(),
            None => vec![0.0; s.iter().product()],
        })
        .collect()
}

/// Several clipped, decayed AdamW steps against a float64 AdamW with PyTorch's semantics
/// (`torch.optim.AdamW` after `clip_grad_norm_`): clip coefficient max_norm/(‖g‖ + 1e-6)
/// capped at 1 over all gradients together; decoupled decay θ ← θ·(1 − lr·λ) of the decayed
/// parameters (matrices other than the embedding); bias-corrected moments; ε added to
/// √v̂. Non-default betas and ε, so that a kiln ignoring them (or placing ε inside the
/// root, or decaying every parameter, or not clipping) fails.
#[test]
fn adamw_steps_follow_pytorch_adamw() {
    // Clipped at every step; and never (the coefficient is capped at 1, not max_norm/‖g‖).
    assert_eq!(adamw_against_float64(0.05, 4), 4);
    assert_eq!(adamw_against_float64(100.0, 2), 0);
}

/// Trains `steps` AdamW steps with `clip_grad_norm: max_norm`, checking every parameter after
/// every step against the float64 AdamW; returns how many steps were clipped.
fn adamw_against_float64(max_norm: f64, steps: u64) -> usize {
    let (lr, b1, b2, eps, wd): (f64, f64, f64, f64, f64) = (0.01, 0.8, 0.95, 1e-5, 0.3);
    let (spec, g) = recipe(&[
        "model.vars.depth=1",
        "train.schedule={type: constant}",
        &format!(
            "train.optimizer={{type: adamw, lr: {lr}, beta1: {b1}, beta2: {b2}, eps: {eps}, weight_decay: {wd}}}"
        ),
        &format!("train.clip_grad_norm={max_norm}"),
    ]);
    let mut tr = Trainer::new(&spec.train, g, DeviceKind::Cpu.device(true));
    let names = tr.rt.names.clone();
    let shapes = tr.rt.shapes.clone();
    // Embedding tables are not decayed (nor are vectors: norm gains, biases).
    let decayed: Vec<bool> = names
        .iter()
        .zip(&shapes)
        .map(|(n, s)| s.len() >= 2 && n != "layers.0.weight")
        .collect();
    assert!(names.iter().any(|n| n == "layers.0.weight"), "{names:?}");
    assert!(decayed.iter().filter(|&&d| d).count() >= 4, "{names:?}");
    assert!(decayed.iter().any(|&d| !d));
    let init = tr.rt.values();
    let mut p: Vec<Vec<f64>> = names
        .iter()
        .map(|n| init[n].0.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|x| vec![0.0; x.len()]).collect();
    let mut v = m.clone();
    let mut clipped = 0;
    for step in 1..=steps {
        let data = batch(20 + step, 4, 13);
        let grads = gradients(&tr, &data);
        let stats = tr.step(std::slice::from_ref(&data), 10).unwrap();
        let norm = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (stats.grad_norm - norm).abs() < 1e-4 * norm,
            "step {step}: grad norm {} vs {norm}",
            stats.grad_norm
        );
        let clip = (max_norm / (norm + 1e-6)).min(1.0);
        clipped += usize::from(clip < 1.0);
        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for i in 0..p.len() {
            for j in 0..p[i].len() {
                let g = grads[i][j] * clip;
                m[i][j] = b1 * m[i][j] + (1.0 - b1) * g;
                v[i][j] = b2 * v[i][j] + (1.0 - b2) * g * g;
                if decayed[i] {
                    p[i][j] *= 1.0 - lr * wd;
                }
                p[i][j] -= lr * (m[i][j] / bc1) / ((v[i][j] / bc2).sqrt() + eps);
            }
        }
        let got = tr.rt.values();
        for (i, name) in names.iter().enumerate() {
            for (j, (&x, &want)) in got[name].0.iter().zip(&p[i]).enumerate() {
                let d = (f64::from(x) - want).abs();
                assert!(
                    d < 2e-6 + 1e-5 * want.abs(),
                    "step {step}: {name}[{j}] is {x}, float64 AdamW says {want}"
                );
            }
        }
    }
    clipped
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
