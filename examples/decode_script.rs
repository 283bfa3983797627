//! kiln's decoder on scripted logits, for `benches/vs_transformers.py` (the differential check
//! against Hugging Face transformers 4.46). Reads one JSON spec on standard input, prints one
//! JSON result on standard output.
//!
//! The scripted model: `table` holds N rows of `vocab` logits; the logits after a sequence are
//! row `h(seq)`, with h = fold over the tokens of `h · 31 + token + 1`, modulo N (the same
//! function in the Python script), so they depend on the step and on every token so far; with
//! `"key": "last"`, row `last token mod N` instead.
//!
//! Spec fields: `decode` (a recipe's decode section), `eos` (id or null), `pad`,
//! `default_max_length`, `table`, `mode`:
//! - `"generate"` with `prompts`: `{"sequences": [[{"tokens": [...], "score": x}, ...], ...]}`
//!   (per prompt, best first; a score of −∞ is printed as null).
//! - `"process"` with `rows` (`[{"seq": [...], "prompt_len": n}]`) and `log_softmax`
//!   (true for beam strategies): the scores after kiln's processors and warpers for the token
//!   after each row, `{"scores": [[...], ...]}` (−∞ as null).
//!
//! ```sh
//! cargo run --example decode_script < spec.json
//! ```

use kiln::decode::process::{log_softmax, Processors};
use kiln::decode::{generate, min_tokens_to_keep, NextLogits, Settings};
use kiln::spec::recipe::Decode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Read;

#[derive(Deserialize)]
struct Row {
    seq: Vec<i64>,
    prompt_len: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    decode: Decode,
    eos: Option<i64>,
    pad: i64,
    default_max_length: usize,
    table: Vec<Vec<f32>>,
    mode: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    prompts: Vec<Vec<i64>>,
    #[serde(default)]
    rows: Vec<Row>,
    #[serde(default)]
    log_softmax: bool,
}

/// The scripted model.
struct Script<'a> {
    table: &'a [Vec<f32>],
    by_last: bool,
}

impl Script<'_> {
    fn logits(&self, seq: &[i64]) -> Vec<f32> {
        let n = self.table.len() as u64;
        if self.by_last {
            let last = *seq.last().expect("non-empty sequence") as u64;
            return self.table[(last % n) as usize].clone();
        }
        let h = seq.iter().fold(0u64, |h, &t| (h * 31 + t as u64 + 1) % n);
        self.table[h as usize].clone()
    }
}

impl NextLogits for Script<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], _: Option<&[usize]>) -> Vec<Vec<f32>> {
        seqs.iter().map(|s| self.logits(s)).collect()
    }
}

/// A float for JSON: −∞ (and NaN) as null.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("read standard input");
    let spec: Spec = serde_json::from_str(&input).unwrap_or_else(|e| {
        eprintln!("decode_script: bad spec: {e}");
        std::process::exit(2);
    });
    let settings = Settings {
        d: spec.decode.clone(),
        eos: spec.eos,
        pad: spec.pad,
        default_max_length: spec.default_max_length,
        source_len: 0,
    };
    let mut model = Script {
        table: &spec.table,
        by_last: spec.key.as_deref() == Some("last"),
    };
    let out = match spec.mode.as_str() {
        "generate" => {
            let res = generate(&mut model, &spec.prompts, &settings);
            let seqs: Vec<Value> = res
                .iter()
                .map(|per| {
                    per.iter()
                        .map(|g| json!({"tokens": g.tokens, "score": num(g.score)}))
                        .collect()
                })
                .collect();
            json!({ "sequences": seqs })
        }
        "process" => {
            let scores: Vec<Value> = spec
                .rows
                .iter()
                .map(|row| {
                    let procs = Processors::new(
                        &spec.decode,
                        spec.eos,
                        row.prompt_len,
                        min_tokens_to_keep(&settings),
                    );
                    let raw = model.logits(&row.seq);
                    let mut sc = if spec.log_softmax {
                        log_softmax(&raw)
                    } else {
                        raw
                    };
                    procs.process(&row.seq, &mut sc, None);
                    procs.warp(&mut sc);
                    sc.iter().map(|&x| num(f64::from(x))).collect()
                })
                .collect();
            json!({ "scores": scores })
        }
        other => {
            eprintln!("decode_script: unknown mode {other:?} (generate, process)");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
