//! Generation speed with and without the KV cache.
//!
//! `cargo bench --bench decode` generates sequences of T = 64 … 1024 tokens (batch 4, from a
//! one-token prompt, greedy, no EOS) with the bundled modern Transformer (GQA, RoPE) and the
//! LSTM, once recomputing the whole prefix at every step and once incrementally with the
//! cache, checks both give the same tokens, and prints tokens/s and the ratio measured in the
//! same run.

use kiln::decode::{generate, ModelLm, Settings};
use kiln::runtime::{DeviceKind, Runtime};
use kiln::spec::recipe::Decode;
use std::path::Path;
use std::time::Instant;

fn model(file: &str, sets: &[&str]) -> Runtime {
    let sets: Vec<String> = sets.iter().map(ToString::to_string).collect();
    let (_, g) =
        kiln::compile::recipe(Path::new(file), &sets, false).unwrap_or_else(|e| panic!("{e}"));
    Runtime::init(g, DeviceKind::Cpu.device(false), 1)
}

fn main() {
    let lengths: Vec<usize> = std::env::var("KILN_BENCH_LENGTHS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 128, 256, 512, 1024]);
    let models = [
        (
            "transformer-modern (d 64, 2 layers, GQA 4/2)",
            model(
                "recipes/default.yaml",
                &["model.vars.d_model=64", "model.vars.d_ff=172"],
            ),
        ),
        ("lstm (5 × 64)", model("recipes/anbn-lstm.yaml", &[])),
    ];
    let batch = 4;
    println!(
        "{:<46} {:>6} {:>14} {:>14} {:>8}",
        "model", "T", "uncached tok/s", "cached tok/s", "ratio"
    );
    for (name, rt) in &models {
        for &t in &lengths {
            let s = Settings {
                d: Decode {
                    max_length: Some(t as u32),
                    ..Decode::default()
                },
                eos: None,
                pad: 2,
                default_max_length: t,
                source_len: 0,
            };
            let prompts = vec![vec![0i64]; batch];
            let run = |cached: bool| {
                let start = Instant::now();
                let out = generate(&mut ModelLm::new(rt, cached), &prompts, &s);
                (start.elapsed().as_secs_f64(), out)
            };
            let (tc, a) = run(true);
            let (tu, b) = run(false);
            assert_eq!(a, b, "cached and uncached decoding differ");
            let tokens = (batch * (t - 1)) as f64;
            println!(
                "{:<46} {:>6} {:>14.0} {:>14.0} {:>7.1}x",
                name,
                t,
                tokens / tu,
                tokens / tc,
                tu / tc
            );
        }
    }
}
