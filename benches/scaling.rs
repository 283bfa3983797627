//! How each sequence mixer's training cost grows with the length: one training step (forward,
//! backward, AdamW) at batch 1 of a one-block model (embedding, residual [LayerNorm, mixer],
//! LayerNorm, head; width 64) per mixer and length, from 1 024 positions doubling up to
//! `KILN_SCALING_MAX` (default 65 536). `KILN_SCALING_ONLY=mLSTM` runs only the mixers whose
//! name contains that text.
//!
//! `cargo bench --bench scaling`. For each (mixer, length) it prints the median step time and
//! the step's peak heap memory above what was allocated before it (a counting allocator wraps
//! the system one), then per mixer the fitted exponent of time and memory over the lengths
//! (least squares of log cost on log length over the longest three). A mixer stops growing when
//! a step took longer than `KILN_SCALING_SECS` (default 120) or when its next length would need
//! more than 20 GiB at the growth just measured.
//!
//! The mixers: causal softmax attention (the fused kernel, which keeps only each row's softmax
//! statistics for the backward pass), the causal spectral filter
//! (`spectral_gate`, an FFT convolution), Mamba's selective scan, ETS attention and the mLSTM
//! (its fused kernel in the chunkwise form: memory linear in the length).

use kiln::runtime::DeviceKind;
use kiln::train::Trainer;
use std::time::Instant;

#[path = "common/heap.rs"]
mod heap;

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// Each mixer: its name and its layer (`$len` is the length).
const MIXERS: [(&str, &str); 5] = [
    ("attention (causal, 4 heads)", "{type: attention, heads: 4}"),
    (
        "spectral filter (causal FFT)",
        "{type: spectral_gate, max_len: $len, causal: true}",
    ),
    (
        "Mamba (d_state 16)",
        "{type: mamba, d_state: 16, d_conv: 4}",
    ),
    ("ETS attention (4 heads)", "{type: ets_attention, heads: 4}"),
    ("mLSTM (4 heads)", "{type: mlstm, heads: 4}"),
];

/// A recipe of one block of `layer` trained on sequences of `len` positions, batch 1.
fn recipe(layer: &str, len: usize) -> String {
    let layer = layer.replace("$len", &len.to_string());
    format!(
        "kind: recipe\nname: scaling\nmodel:\n  kind: model\n  name: one-block\n  layers:\n    \
         - {{type: embedding, dim: 64}}\n    - type: residual\n      body:\n        \
         - {{type: layernorm}}\n        - {layer}\n    - {{type: layernorm}}\n    \
         - {{type: head}}\ntask: {{type: uint16, path: {}, vocab: 64, context: {len}}}\n\
         train:\n  batch_size: 1\n  steps: 10\n  schedule: {{type: constant}}\n",
        // Only the vocabulary and the length matter here: the tokens are made up.
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/prng.u16"),
    )
}

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Median step seconds and peak bytes of training one block of `layer` at `len` positions.
fn measure(layer: &str, len: usize, dir: &std::path::Path) -> (f64, usize) {
    let path = dir.join("scaling.yaml");
    std::fs::write(&path, recipe(layer, len)).expect("write the recipe");
    let (spec, graph) = kiln::compile::recipe(&path, &[], false).unwrap_or_else(|e| panic!("{e}"));
    let vocab = spec.spec.task.vocab() as i64;
    let mut trainer = Trainer::new(&spec.spec.train, graph, DeviceKind::Cpu.device(true));
    let tokens: Vec<i64> = (0..=len as i64).map(|i| (i * 7 + i / 3) % vocab).collect();
    let batch = vec![vec![tokens]];
    // A first step (untimed) at lengths where a step is quick; then timed steps.
    let reps = if len <= 4096 { 3 } else { 1 };
    if len <= 4096 {
        trainer.step(&batch, 100).expect("finite loss");
    }
    let (mut times, mut peak) = (Vec::new(), 0);
    for _ in 0..reps {
        let t = Instant::now();
        let (_, bytes) = heap::peak_during(|| trainer.step(&batch, 100).expect("finite loss"));
        times.push(t.elapsed().as_secs_f64());
        peak = peak.max(bytes);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], peak)
}

/// The least-squares slope of log y on log x.
fn exponent(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (lx, ly): (Vec<f64>, Vec<f64>) = points.iter().map(|&(x, y)| (x.ln(), y.ln())).unzip();
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let cov: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = lx.iter().map(|x| (x - mx) * (x - mx)).sum();
    cov / var
}

fn main() {
    let max = env("KILN_SCALING_MAX", 65_536.0) as usize;
    let secs = env("KILN_SCALING_SECS", 120.0);
    let budget = 20.0 * (1u64 << 30) as f64;
    let dir = std::env::temp_dir().join(format!("kiln-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    println!(
        "one training step at batch 1, width 64, {} threads; peak = heap above the step's start",
        rayon::current_num_threads()
    );
    let mut summary = Vec::new();
    let only = std::env::var("KILN_SCALING_ONLY").unwrap_or_default();
    for (name, layer) in MIXERS
        .into_iter()
        .filter(|(n, _)| n.contains(only.as_str()))
    {
        let mut points = Vec::new();
        let mut len = 1024;
        while len <= max {
            let (t, bytes) = measure(layer, len, &dir);
            println!(
                "{name:<30} {len:>7} positions: {:>9.3} s  {:>9.1} MiB",
                t,
                bytes as f64 / (1 << 20) as f64
            );
            points.push((len as f64, t, bytes as f64));
            let grow = match points.as_slice() {
                [.., (_, _, a), (_, _, b)] => b / a,
                _ => 4.0,
            };
            if t > secs || bytes as f64 * grow > budget {
                break;
            }
            len *= 2;
        }
        let tail = &points[points.len().saturating_sub(3)..];
        let fit = |f: fn(&(f64, f64, f64)) -> f64| {
            let pts: Vec<(f64, f64)> = tail.iter().map(|p| (p.0, f(p))).collect();
            if pts.len() >= 2 {
                format!("{:.2}", exponent(&pts))
            } else {
                "-".into()
            }
        };
        let longest = points.last().map_or(0.0, |p| p.0);
        summary.push((name, longest, fit(|p| p.1), fit(|p| p.2)));
    }
    println!("\n| mixer | longest length | time exponent | memory exponent |");
    println!("|---|---|---|---|");
    for (name, longest, te, me) in summary {
        println!("| {name} | {longest} | {te} | {me} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
