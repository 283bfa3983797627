//! Each optimization pass on vs off: forward time and peak heap memory of the same model
//! compiled with and without the pass, measured in the same run.
//!
//! `cargo bench --bench passes`:
//! - GQA repeat elimination: one causal attention layer with 16 query heads sharing 4 KV heads
//!   (width 256, head width 16), batch 1, T = 512 … 4096. Off: K and V are repeated to 16 heads
//!   (`repeat_kv`) before attention; on: the grouped formulation reads the 4 KV heads directly.
//! - Spectral fusion: one causal GFNet spectral gate (width 32), batch 8, T = 256 … 8192. Off:
//!   pad → rfft → complex multiply → irfft → crop, as lowered; on: the fused `spectral_filter`
//!   (one FFT convolution, or the dense convolution matrix where that is faster).
//!
//! Peak memory is counted by a global allocator wrapper: the largest number of heap bytes live
//! at once during the forward pass, above what was live before it. `KILN_BENCH_QUICK=1` runs
//! only the two shortest lengths of each.

use kiln::ir::Graph;
use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};
use std::time::Instant;

#[path = "common/heap.rs"]
mod heap;

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// Lower `yaml` (a model) for sequences of `seq` tokens and run the named passes.
fn compile(yaml: &str, seq: u64, passes: &[&str]) -> Graph {
    let path = std::env::temp_dir().join(format!("kiln-bench-passes-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let mut sources = kiln::diag::SourceMap::new();
    let doc = kiln::spec::load(&path, &[], &mut sources)
        .unwrap_or_else(|e| panic!("{}", kiln::diag::render_text(&e.diags, &sources, false)));
    let _ = std::fs::remove_file(&path);
    let mut g = kiln::lower::lower_document(&doc, Some(64), Some(seq))
        .unwrap_or_else(|d| panic!("{}", kiln::diag::render_text(&d, &sources, false)));
    let names: Vec<String> = passes.iter().map(|s| s.to_string()).collect();
    let selected = kiln::passes::by_name(&names).unwrap();
    kiln::passes::optimize(&mut g, &selected, true).unwrap();
    g
}

/// Median forward time (s) over `reps` runs and the peak extra heap bytes, plus the output.
fn measure(g: &Graph, batch: usize, seq: usize, reps: usize) -> (f64, usize, Vec<f32>) {
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 1);
    let toks: Vec<Vec<i64>> = (0..batch)
        .map(|b| (0..seq).map(|t| ((b * 7 + t * 13) % 64) as i64).collect())
        .collect();
    let run = || {
        rt.forward(tokens_tensor(&toks, &rt.device), false)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let out = run();
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let (_, bytes) = heap::peak_during(run);
        times.push(t.elapsed().as_secs_f64());
        peak = peak.max(bytes);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], peak, out)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn row(name: &str, t: usize, off: (f64, usize, Vec<f32>), on: (f64, usize, Vec<f32>)) {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "{:<10} {:>6} {:>11.2} {:>11.2} {:>7.2}x {:>12.1} {:>12.1} {:>7.2}x {:>10.1e}",
        name,
        t,
        off.0 * 1e3,
        on.0 * 1e3,
        off.0 / on.0,
        mib(off.1),
        mib(on.1),
        off.1 as f64 / on.1.max(1) as f64,
        max_diff(&off.2, &on.2),
    );
}

const GQA: &str = "kind: model
name: gqa-bench
layers:
  - {type: embedding, dim: 256}
  - {type: attention, heads: 16, kv_heads: 4, bias: false}
  - {type: head}
";

fn spectral(t: usize) -> String {
    format!(
        "kind: model
name: spectral-bench
layers:
  - {{type: embedding, dim: 32}}
  - {{type: spectral_gate, max_len: {t}, causal: true}}
  - {{type: head}}
"
    )
}

fn main() {
    let quick = std::env::var("KILN_BENCH_QUICK").is_ok();
    let take = |v: Vec<usize>| -> Vec<usize> {
        if quick {
            v.into_iter().take(2).collect()
        } else {
            v
        }
    };
    println!(
        "{:<10} {:>6} {:>11} {:>11} {:>8} {:>12} {:>12} {:>8} {:>10}",
        "pass", "T", "off ms", "on ms", "speedup", "off MiB", "on MiB", "memory", "max |Δ|"
    );
    for t in take(vec![512, 1024, 2048, 4096]) {
        let reps = if t >= 2048 { 2 } else { 5 };
        let off = measure(&compile(GQA, t as u64, &["cse", "dce"]), 1, t, reps);
        let on = measure(&compile(GQA, t as u64, &["gqa", "cse", "dce"]), 1, t, reps);
        row("gqa", t, off, on);
    }
    for t in take(vec![256, 1024, 4096, 8192]) {
        let reps = if t >= 4096 { 2 } else { 5 };
        let y = spectral(t);
        let off = measure(&compile(&y, t as u64, &["cse", "dce"]), 8, t, reps);
        let on = measure(
            &compile(&y, t as u64, &["spectral", "cse", "dce"]),
            8,
            t,
            reps,
        );
        row("spectral", t, off, on);
    }
    println!(
        "off/on: the model compiled without / with the pass; speedup and memory are off ÷ on; \
         memory is the peak of extra heap bytes during one forward pass; max |Δ| compares the \
         two outputs"
    );
}
