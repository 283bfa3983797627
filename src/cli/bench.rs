//! `kiln bench`: training and generation throughput of a recipe's model on a device.
//!
//! The binary-only counterpart of `cargo bench` (which needs the source tree and a toolchain):
//! it is what runs on a GPU machine, and what `benches/torch_reference.py` is compared with.

use crate::decode::{generate, ModelLm, NextLogits, Settings};
use crate::runtime::{DeviceKind, Runtime};
use crate::spec::recipe::Decode;
use crate::train::{Batch, Data, Trainer};
use burn::tensor::FloatDType;
use std::path::Path;
use std::time::Instant;

/// Tokens generated per sequence when `--gen-tokens` is not given.
const DEFAULT_GEN_TOKENS: usize = 256;

/// What `kiln bench` measures.
pub struct BenchArgs<'a> {
    /// The recipe.
    pub recipe: &'a Path,
    /// Overrides.
    pub set: &'a [String],
    /// Where.
    pub device: DeviceKind,
    /// Mixed precision.
    pub matmul_dtype: Option<FloatDType>,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed training steps.
    pub steps: usize,
    /// Generated tokens per sequence (0: no generation benchmark); `None`: 256, or the model's
    /// positions where it reads fewer.
    pub gen_tokens: Option<usize>,
    /// Sequences generated at once.
    pub gen_batch: usize,
    /// Time every op of the timed steps' forward passes.
    pub profile: bool,
    /// Without kiln's fused CPU kernels.
    pub unfused: bool,
    /// CubeCL's compilation log, to count the kernels each step compiles.
    pub compile_log: Option<&'a Path>,
    /// Preallocate the generation's KV cache (`Some(true)`) or let it grow; `None`: the
    /// device's default (growing on the CPU, static on a GPU).
    pub static_kv_cache: Option<bool>,
    /// Pad token inputs to a multiple of this many positions (`None`: the device's default).
    pub pad_to: Option<usize>,
}

/// Run the benchmark; prints one JSON object on stdout. Returns the exit code.
pub fn bench_cmd(a: &BenchArgs) -> i32 {
    crate::runtime::fused::set_enabled(!a.unfused);
    let (doc, graph) = match super::run::compile(a.recipe, a.set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let t = &doc.spec.train;
    let mut data = match Data::new(&doc.spec.task, t.seed) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let params = graph.param_count();
    let mut tr = Trainer::new(t, graph.clone(), a.device.device(true));
    tr.rt.matmul_dtype = a.matmul_dtype;
    if let Some(p) = a.pad_to {
        tr.rt.pad_to = p;
        if let Some(note) = tr.rt.pad_note() {
            eprintln!("{note}");
        }
    }
    // Generation starts from a one-token prompt: it reads gen_tokens positions.
    let forecaster = matches!(data, Data::Forecast(_));
    let limit = tr.rt.max_positions().filter(|_| !forecaster);
    let gen_tokens = match (a.gen_tokens, limit) {
        (Some(n), Some(m)) if n > m => {
            eprintln!(
                "error: the model reads at most {m} positions, so it can generate at most {m} tokens after the one-token prompt, but --gen-tokens asked for {n}; lower --gen-tokens"
            );
            return 2;
        }
        (Some(n), _) => n,
        (None, Some(m)) if m < DEFAULT_GEN_TOKENS => {
            eprintln!("generating {m} tokens per sequence: the model reads at most {m} positions");
            m
        }
        (None, _) => DEFAULT_GEN_TOKENS,
    };
    let bs = data.batch_size(t.batch_size as usize);
    let total = (a.warmup + a.steps) as u64;
    let mut tokens = 0usize;
    let mut flops = 0u64;
    let mut times = Vec::with_capacity(a.steps);
    // Warm-up steps' times: on a GPU the first steps compile the kernels.
    let mut warm_ms = Vec::with_capacity(a.warmup);
    let mut loss = f64::NAN;
    // A forecaster's batches are windows of a series: it reports windows/s, and has neither
    // tokens nor generation.
    let mut windows = 0usize;
    // The length the last timed step's token inputs ran at, padded.
    let mut padded_len = None;
    // Kernels compiled before the first step (the log may hold an earlier run's), and per step.
    let mut compiled_so_far = a.compile_log.map_or(0, compilations);
    let mut per_step_compiled = Vec::new();
    for i in 0..a.warmup + a.steps {
        let micro: Vec<Batch> = (0..u64::from(t.grad_accum))
            .map(|k| data.train_batch(&mut tr.state, t.seed, k, bs))
            .collect();
        if a.profile && i == a.warmup {
            tr.rt.op_times = Some(Default::default());
        }
        let start = Instant::now();
        // The loss is read back to the host, which waits for the device. On a GPU the step is
        // the training loop's (no read inside it; its statistics read once after it).
        let result = if a.device == DeviceKind::Cpu {
            tr.step_batches(&micro, total)
        } else {
            let p = tr.step_deferred(&micro, total);
            let s = crate::train::pending::read(std::slice::from_ref(&p))[0];
            if s.loss.is_finite() {
                Ok(s)
            } else {
                Err(s.loss)
            }
        };
        match result {
            Ok(s) => loss = s.loss,
            Err(l) => {
                eprintln!("error: the loss became {l} at benchmark step {i}");
                return 1;
            }
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let compiled = a.compile_log.map(|path| {
            let now = compilations(path);
            let n = now.saturating_sub(compiled_so_far);
            compiled_so_far = now;
            n
        });
        per_step_compiled.extend(compiled);
        eprintln!(
            "kiln bench: step {}/{total} ({}) {ms:.1} ms, loss {loss:.4}{}",
            i + 1,
            if i < a.warmup { "warm-up" } else { "timed" },
            compiled.map_or(String::new(), |n| format!(", {n} kernels compiled")),
        );
        if i < a.warmup {
            warm_ms.push(ms);
        } else {
            times.push(ms / 1e3);
            for b in &micro {
                match b {
                    Batch::Tokens(m) => {
                        tokens += m.iter().map(|s| s.len().saturating_sub(1)).sum::<usize>();
                        let len = m.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1);
                        flops += 3 * graph.matmul_flops(m.len() as u64, len as u64);
                        padded_len = Some(tr.rt.padded_len(len));
                    }
                    Batch::Series { x_dims, .. } => windows += x_dims[0],
                }
            }
        }
    }
    let train_s: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted.get(sorted.len() / 2).map_or(f64::NAN, |m| m * 1e3);
    let mut out = serde_json::json!({
        "recipe": a.recipe.display().to_string(),
        "device": format!("{:?}", a.device),
        "fused_kernels": !a.unfused,
        "precision": a.matmul_dtype.map_or("f32".to_string(), |d| format!("{d:?}").to_lowercase()),
        "params": params,
        "batch": bs * t.grad_accum as usize,
        "train_steps": a.steps,
        "train_steps_per_s": a.steps as f64 / train_s,
        "train_tokens_per_s": tokens as f64 / train_s,
        "train_step_ms_median": median_ms,
        "train_step_ms_fastest": sorted.first().map_or(f64::NAN, |m| m * 1e3),
        "warmup_step_ms": warm_ms,
        "last_loss": loss,
        "pad_to": tr.rt.pad_to,
        "train_padded_len": padded_len,
        "train_matmul_gflops": flops as f64 / train_s / 1e9,
        "device_matmul_peak_gflops": matmul_peak(&a.device.device(false), a.matmul_dtype),
    });
    if a.compile_log.is_some() {
        // The steady state: the timed steps after the last one that compiled a kernel.
        let last = per_step_compiled.iter().rposition(|&n| n > 0);
        let steady: Vec<f64> = times
            .iter()
            .enumerate()
            .filter(|(k, _)| last.is_none_or(|l| a.warmup + k > l))
            .map(|(_, s)| s * 1e3)
            .collect();
        out["kernels_compiled_per_step"] = per_step_compiled.clone().into();
        out["last_step_compiling"] = last.map(|l| l + 1).into();
        out["steady_steps"] = steady.len().into();
        out["steady_step_ms_median"] = median(steady).into();
    }
    if let Some(times) = tr.rt.op_times.take() {
        // Per timed step: each op kind's forward time, slowest first; the rest of the step
        // is the backward pass and the optimizer.
        let mut ops: Vec<(&str, (f64, usize))> = times.into_inner().into_iter().collect();
        ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let per = |s: f64| s * 1e3 / a.steps.max(1) as f64;
        let forward: f64 = ops.iter().map(|(_, (s, _))| per(*s)).sum();
        out["profile"] = serde_json::json!({
            "forward_ms": forward,
            "backward_and_update_ms": train_s * 1e3 / a.steps.max(1) as f64 - forward,
            "forward_ops": ops
                .iter()
                .map(|(op, (s, n))| serde_json::json!({"op": op, "ms": per(*s), "calls": n / a.steps.max(1)}))
                .collect::<Vec<_>>(),
        });
    }
    if forecaster {
        out["train_windows_per_s"] = (windows as f64 / train_s).into();
        out["train_tokens_per_s"] = serde_json::Value::Null;
        out["train_matmul_gflops"] = serde_json::Value::Null;
    }
    if gen_tokens > 0 && !forecaster {
        let weights = tr.rt.values();
        let rt = match Runtime::with_values(graph, a.device.device(false), &weights) {
            Ok(mut rt) => {
                rt.matmul_dtype = a.matmul_dtype;
                rt
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        let len = gen_tokens + 1;
        // An encoder-decoder's rows start with its source (all zeros here), which the
        // lengths do not count.
        let src = rt.source_len().unwrap_or(0);
        let s = Settings {
            d: Decode {
                max_length: Some(len as u32),
                ..Decode::default()
            },
            eos: None,
            pad: 0,
            default_max_length: src + len,
            source_len: src,
        };
        let prompts = vec![vec![0i64; src + 1]; a.gen_batch.max(1)];
        // One short warm-up generation compiles the kernels of every shape used (with a
        // preallocated cache, its capacity is the timed generation's: the same shapes).
        let warm = Settings {
            d: Decode {
                max_length: Some(4),
                ..Decode::default()
            },
            ..s.clone()
        };
        let lm = || {
            let lm = ModelLm::new(&rt, true);
            match a.static_kv_cache {
                Some(on) => lm.static_cache(on),
                None => lm,
            }
        };
        generate(&mut Reserved(lm(), src + len), &prompts, &warm);
        let start = Instant::now();
        let mut lm = lm();
        let got = generate(&mut lm, &prompts, &s);
        let secs = start.elapsed().as_secs_f64();
        let n: usize = got
            .iter()
            .flatten()
            .map(|g| g.tokens.len().saturating_sub(src + 1))
            .sum();
        out["gen_batch"] = prompts.len().into();
        out["gen_tokens"] = n.into();
        out["gen_cached"] = rt.cache_support().is_ok().into();
        out["gen_kv_cache"] = if lm.is_static() { "static" } else { "growing" }.into();
        out["gen_tokens_per_s"] = (n as f64 / secs).into();
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("json serializes")
    );
    0
}

/// The kernels CubeCL's compilation log at `path` records (one header per compilation, at its
/// `basic` or `full` level); 0 while the file does not exist.
pub fn compilations(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| {
        t.matches("[Compiling kernel]").count() + t.matches("[START_KERNEL_COMPILATION]").count()
    })
}

/// The median of `v` (the upper one of an even count); NaN when empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The device's matrix-product speed in GFLOP/s: the best of a few square products (n = 1024
/// on the CPU, 4096 on a GPU) in the given precision, each waited for with `Device::sync`.
fn matmul_peak(device: &burn::prelude::Device, dtype: Option<FloatDType>) -> f64 {
    use burn::prelude::*;
    let n = if *device == Device::flex() {
        1024
    } else {
        4096
    };
    let make = |scale: f64| {
        let t = Tensor::<2>::ones([n, n], device).mul_scalar(scale);
        match dtype {
            Some(dt) => t.cast(dt),
            None => t,
        }
    };
    let (x, y) = (make(0.5), make(0.25));
    let mut best = 0.0f64;
    for _ in 0..4 {
        let start = Instant::now();
        let z = x.clone().matmul(y.clone());
        if device.sync().is_err() {
            return f64::NAN;
        }
        drop(z);
        let secs = start.elapsed().as_secs_f64();
        best = best.max(2.0 * (n as f64).powi(3) / secs / 1e9);
    }
    best
}

/// A [`ModelLm`] that reserves room for `.1` tokens whatever a generation announces: the
/// warm-up generation then preallocates the timed one's cache.
struct Reserved<'a>(ModelLm<'a>, usize);

impl NextLogits for Reserved<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>> {
        self.0.next_logits(seqs, parents)
    }

    fn reserve(&mut self, len: usize) {
        self.0.reserve(len.max(self.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compilations_count_both_log_levels_and_a_missing_log_as_none() {
        let dir = std::env::temp_dir().join(format!("kiln-compile-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        assert_eq!(compilations(&path), 0);
        std::fs::write(
            &path,
            "[Compiling kernel] a\n[Compiling kernel]\n[START_KERNEL_COMPILATION]\nname: b\nsource\n[END_KERNEL_COMPILATION]\n",
        )
        .unwrap();
        assert_eq!(compilations(&path), 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_median_is_the_upper_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
    }
}
