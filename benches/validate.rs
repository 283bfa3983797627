//! Validation latency of the bundled recipes and models.
//!
//! `cargo bench --bench validate` prints, per file, the median time of kiln's whole front end
//! (read, parse with spans, compose the model file, substitute variables, validate against the
//! schema, deserialize) beside two references measured in the same run: parsing alone (the
//! floor), and the `jsonschema` crate validating the already-parsed JSON (another validator's
//! cost for the schema part only).

use kiln::diag::SourceMap;
use kiln::spec::{schema, yaml};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn median(mut f: impl FnMut()) -> Duration {
    // Warm up, then time batches until ~300 ms have passed.
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

fn main() {
    let schemas: Vec<(String, jsonschema::Validator)> = schema::all()
        .into_iter()
        .map(|(n, s)| (n.to_string(), jsonschema::draft7::new(&s).unwrap()))
        .collect();
    println!(
        "{:<40} {:>12} {:>12} {:>14} {:>10}",
        "file", "kiln (µs)", "parse (µs)", "jsonschema(µs)", "kiln/parse"
    );
    let mut total = Duration::ZERO;
    let all = files();
    for f in &all {
        let full = median(|| {
            let mut sm = SourceMap::new();
            let r = kiln::spec::load(f, &[], &mut sm);
            assert!(r.is_ok());
        });
        let text = std::fs::read(f).unwrap();
        let parse = median(|| {
            let mut sm = SourceMap::new();
            let id = kiln::spec::load::add_source(Path::new("x.yaml"), text.clone(), &mut sm).unwrap();
            let (n, _) = yaml::parse(&sm, id);
            assert!(n.is_some());
        });
        let mut sm = SourceMap::new();
        let id = kiln::spec::load::add_source(Path::new("x.yaml"), text.clone(), &mut sm).unwrap();
        let json = yaml::parse(&sm, id).0.unwrap().to_json();
        let kind = json["kind"].as_str().unwrap().to_string();
        let v = &schemas.iter().find(|(n, _)| n.starts_with(&kind)).unwrap().1;
        let js = median(|| assert!(v.is_valid(&json)));
        total += full;
        println!(
            "{:<40} {:>12.1} {:>12.1} {:>14.1} {:>9.1}x",
            f.display(),
            full.as_secs_f64() * 1e6,
            parse.as_secs_f64() * 1e6,
            js.as_secs_f64() * 1e6,
            full.as_secs_f64() / parse.as_secs_f64()
        );
    }
    println!(
        "mean kiln validate over {} files: {:.2} ms",
        all.len(),
        total.as_secs_f64() * 1e3 / all.len() as f64
    );
}
