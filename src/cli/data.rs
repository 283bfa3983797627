//! `kiln data analyze`, `kiln data generate` and `kiln curriculum plot`.

use super::run::compile;
use std::path::Path;

pub fn analyze_cmd(file: &Path, lags: usize, json: bool) -> i32 {
    use crate::tasks::uint16;
    let stream = match uint16::Stream::open(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if stream.is_empty() {
        eprintln!("error: `{}` holds no values", file.display());
        return 2;
    }
    let a = uint16::analyze(&stream, lags);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&a).expect("analysis serializes")
        );
        return 0;
    }
    println!(
        "{}: {} values, {} distinct, min {}, max {}",
        file.display(),
        a.values,
        a.distinct,
        a.min,
        a.max
    );
    println!("most frequent (value: share):");
    for (v, p) in &a.top {
        println!(
            "  {v:>6}: {p:.4}  {}",
            "#".repeat((p * 50.0).round() as usize)
        );
    }
    println!(
        "entropy {:.4} bits (uniform over the values present: {:.4}); the unigram baseline's top-1 is {:.4}",
        a.entropy_bits,
        a.max_entropy_bits,
        a.top.first().map_or(0.0, |t| t.1)
    );
    match a.conditional_entropy_bits {
        Some(h) => println!("conditional entropy H(x[t] | x[t-1]) {h:.4} bits"),
        None => println!("conditional entropy: not computed (more than 4096 distinct values)"),
    }
    println!(
        "autocorrelation over the first {} values (|r| > {:.4} is significant):",
        a.prefix, a.autocorrelation_threshold
    );
    for (lag, r) in a.autocorrelation.iter().enumerate() {
        let mark = if r.abs() > a.autocorrelation_threshold {
            " *"
        } else {
            ""
        };
        println!("  lag {:>3}: {r:+.4}{mark}", lag + 1);
    }
    println!("periodogram peaks (period: share of power):");
    for (period, share) in &a.peaks {
        println!("  {period:>10.2}: {share:.4}");
    }
    println!("verdict: {}", a.verdict);
    0
}

pub fn generate_data_cmd(
    kind: crate::tasks::uint16::Generator,
    values: usize,
    seed: u64,
    out: &Path,
) -> i32 {
    let bytes = crate::tasks::uint16::to_bytes(&crate::tasks::uint16::generate(kind, values, seed));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create `{}`: {e}", dir.display());
            return 2;
        }
    }
    match crate::util::write_atomic(out, &bytes) {
        Ok(()) => {
            eprintln!("wrote {values} values to {}", out.display());
            0
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", out.display());
            2
        }
    }
}

/// One curriculum's schedule, step by step.
struct Schedule {
    /// Column name in CSV, file suffix of the PNG.
    name: &'static str,
    title: String,
    y: &'static str,
    values: Vec<f64>,
    note: Option<&'static str>,
}

/// `kiln curriculum plot`: the sequence-length and the frequency curriculum of a recipe.
pub fn curriculum_cmd(recipe: &Path, set: &[String], csv: bool, png: Option<&Path>) -> i32 {
    let (doc, _) = match compile(recipe, set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let t = &doc.spec.train;
    let (len, freq) = (&t.curriculum, &t.frequency_curriculum);
    if len.is_none() && freq.is_none() {
        eprintln!(
            "error: `{}` has no curriculum; add e.g. `curriculum: {{start: 8, steps: 200}}` or `frequency_curriculum: {{start: 0.1, steps: 200}}` under `train`",
            recipe.display()
        );
        return 2;
    }
    // An epoch-based curriculum needs the task's steps per epoch.
    let per_epoch = match len.as_ref().and_then(|c| c.epochs) {
        None => 1,
        Some(_) => match crate::train::Data::new(&doc.spec.task, t.seed) {
            Ok(d) => d.per_epoch(d.batch_size(t.batch_size as usize)),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        },
    };
    let own = len
        .as_ref()
        .map_or(0, |c| c.span(per_epoch) + 1)
        .max(freq.as_ref().map_or(0, |f| f.warmup + f.steps + 1));
    let total = t.steps.unwrap_or(own).max(1);
    let full = doc.spec.task.max_seq();
    let mut schedules = Vec::new();
    if let Some(c) = len {
        schedules.push(Schedule {
            name: "length",
            title: format!(
                "sequence-length curriculum: {:?} growth over {} steps",
                c.growth,
                c.span(per_epoch)
            )
            .to_lowercase(),
            y: "input tokens per sequence",
            values: (0..total)
                .map(|s| c.length(s, full, per_epoch) as f64)
                .collect(),
            note: None,
        });
    }
    if let Some(f) = freq {
        schedules.push(Schedule {
            name: "cutoff",
            title: format!(
                "frequency curriculum: {:?} growth over {} steps after {} warm-up, {} mask",
                f.growth,
                f.steps,
                f.warmup,
                if f.slope.is_some() { "soft" } else { "hard" }
            )
            .to_lowercase(),
            y: "cutoff (fraction of the band; 1 = unmasked)",
            values: (0..total)
                .map(|s| f.cutoff(s as f64).unwrap_or(1.0))
                .collect(),
            note: f.adaptive.as_ref().map(|_| {
                "adaptive: slowed down while the validation loss stalls, so a run's cutoffs \
                 can lag this schedule; they are logged as `freq_cutoff` in metrics.jsonl"
            }),
        });
    }
    if let Some(path) = png {
        for sc in &schedules {
            let file = if schedules.len() == 1 {
                path.to_path_buf()
            } else {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                path.with_file_name(format!("{stem}-{}.png", sc.name))
            };
            let series = [crate::plot::Series {
                name: sc.name.into(),
                points: sc
                    .values
                    .iter()
                    .enumerate()
                    .map(|(s, &v)| (s as f64, v))
                    .collect(),
            }];
            let chart = crate::plot::Chart {
                title: &sc.title,
                x: "step",
                y: sc.y,
                series: &series,
                dots: false,
            };
            if let Err(e) = crate::plot::line_chart(&file, &chart) {
                eprintln!("error: {e}");
                return 1;
            }
            eprintln!("wrote {}", file.display());
        }
    }
    if csv {
        let names: Vec<&str> = schedules.iter().map(|s| s.name).collect();
        println!("step,{}", names.join(","));
        for s in 0..total as usize {
            if s == 0 || schedules.iter().any(|sc| sc.values[s - 1] != sc.values[s]) {
                let row: Vec<String> = schedules
                    .iter()
                    .map(|sc| format!("{}", sc.values[s]))
                    .collect();
                println!("{s},{}", row.join(","));
            }
        }
        return 0;
    }
    for sc in &schedules {
        print_ascii_chart(sc, total);
    }
    0
}

/// A schedule drawn with `*` in a 64 × 12 character grid.
fn print_ascii_chart(sc: &Schedule, total: u64) {
    let (w, h) = (64usize, 12usize);
    let lo = sc.values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sc.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-9);
    let mut grid = vec![vec![' '; w]; h];
    for (x, col) in (0..w).map(|x| (x, x * (total as usize - 1) / (w - 1))) {
        let y = ((sc.values[col] - lo) / span * (h - 1) as f64).round() as usize;
        grid[h - 1 - y][x] = '*';
    }
    println!("{} ({} by step)", sc.title, sc.y);
    let label = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:>6}")
        } else {
            format!("{v:>6.3}")
        }
    };
    for (r, row) in grid.iter().enumerate() {
        let l = match r {
            0 => label(hi),
            r if r == h - 1 => label(lo),
            _ => " ".repeat(6),
        };
        println!("{l} |{}", row.iter().collect::<String>().trim_end());
    }
    println!("       +{}", "-".repeat(w));
    println!("        0{:>width$}", total - 1, width = w - 1);
    if let Some(n) = sc.note {
        println!("note: {n}");
    }
    println!();
}
