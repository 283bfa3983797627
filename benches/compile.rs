//! Compile latency of every bundled model and recipe.
//!
//! `cargo bench --bench compile` prints, per file, the median time of kiln's front end (read,
//! parse with spans, compose the model file, substitute variables, validate, deserialize), of
//! lowering to the IR, and of all optimization passes, beside a reference measured in the same
//! run: the `jsonschema` crate validating the already-parsed JSON (another validator's cost for
//! the schema part alone).

use kiln::diag::SourceMap;
use kiln::spec::{schema, yaml};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn median(mut f: impl FnMut()) -> Duration {
    for _ in 0..5 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) || samples.len() < 20 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["recipes", "models"] {
        for e in std::fs::read_dir(dir).unwrap() {
            v.push(e.unwrap().path());
        }
    }
    v.sort();
    v
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let validators: Vec<(String, jsonschema::Validator)> = schema::all()
        .into_iter()
        .map(|(n, s)| (n.to_string(), jsonschema::draft7::new(&s).unwrap()))
        .collect();
    let all_passes: Vec<_> = kiln::passes::ALL.iter().collect();
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "file", "front(µs)", "lower(µs)", "passes(µs)", "total(µs)", "ops", "jsonschema(µs)"
    );
    let mut worst = Duration::ZERO;
    for f in files() {
        let front = median(|| {
            let mut sm = SourceMap::new();
            assert!(kiln::spec::load(&f, &[], &mut sm).is_ok());
        });
        let mut sm = SourceMap::new();
        let doc = kiln::spec::load(&f, &[], &mut sm).unwrap();
        let lower = median(|| {
            assert!(kiln::lower::lower_document(&doc, None, None).is_ok());
        });
        let graph = kiln::lower::lower_document(&doc, None, None).unwrap();
        let passes = median(|| {
            let mut g = graph.clone();
            kiln::passes::optimize(&mut g, &all_passes, false).unwrap();
        });
        let clone = median(|| {
            std::hint::black_box(graph.clone());
        });
        let passes = passes.saturating_sub(clone);
        let mut opt = graph.clone();
        kiln::passes::optimize(&mut opt, &all_passes, false).unwrap();
        let text = std::fs::read(&f).unwrap();
        let id = kiln::spec::load::add_source(Path::new("x.yaml"), text, &mut sm).unwrap();
        let json = yaml::parse(&sm, id).0.unwrap().to_json();
        let kind = json["kind"].as_str().unwrap().to_string();
        let v = &validators
            .iter()
            .find(|(n, _)| n.starts_with(&kind))
            .unwrap()
            .1;
        let js = median(|| assert!(v.is_valid(&json)));
        let total = front + lower + passes;
        worst = worst.max(total);
        println!(
            "{:<38} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>14.1}",
            f.display().to_string(),
            us(front),
            us(lower),
            us(passes),
            us(total),
            opt.g.node_count(),
            us(js)
        );
    }
    println!(
        "slowest validate + lower + optimize: {:.2} ms (target: well under 10 ms)",
        worst.as_secs_f64() * 1e3
    );
}
