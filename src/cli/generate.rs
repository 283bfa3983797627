//! `kiln eval` and `kiln generate`.

use super::run::{compile, print_metrics, print_soft_attention, RESOLVED};
use super::{exit, Which};
use crate::runtime::{DeviceKind, Runtime};
use crate::train::{self, Data};
use std::path::Path;

pub fn eval_cmd(
    run: &Path,
    which: Which,
    prompt: Option<&str>,
    set: &[String],
    ignore_memory: bool,
) -> i32 {
    if let Some(bad) = set.iter().find(|s| !s.starts_with("decode.")) {
        eprintln!("error: `--set {bad}`: `kiln generate` changes only `decode.*` settings; retrain to change anything else");
        return 2;
    }
    let (doc, graph) = match compile(&run.join(RESOLVED), set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let load = |dir: &Path| match which {
        Which::Best => {
            let path = dir.join("best.safetensors");
            crate::runtime::load_weights(&path)
                .map_err(|e| e.to_string() + train::checkpoint::checkpoint_help(&path))
        }
        Which::Last => train::load_checkpoint(&dir.join("checkpoint.safetensors"))
            .map(|(w, _, _)| w)
            .map_err(|e| e.to_string()),
    };
    // An ensemble run: one graph of all members, each with its own weights.
    let model = match &doc.spec.ensemble {
        None => load(run).map(|w| (graph, w)),
        Some(e) => train::ensemble_model(&graph, run, &e.seeds, load),
    };
    let (graph, weights) = match model {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let rt = match Runtime::with_values(graph.clone(), DeviceKind::Cpu.device(false), &weights) {
        Ok(rt) => rt,
        Err(e) => {
            // The weights do not belong to this model: the file cannot be used.
            eprintln!("error: {e}");
            return exit::UNUSABLE;
        }
    };
    let data = match Data::new(&doc.spec.task, doc.spec.train.seed) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let Some(p) = prompt else {
        print_metrics(&data.report(&rt));
        // Over the training run's evaluations (recorded while it trained).
        if let Some(h) = train::history::read(&run.join("metrics.jsonl")) {
            super::run::print_history(&h);
        }
        let mut rt = rt;
        if let Some(m) = train::soft_attention_report(&data, &mut rt) {
            print_soft_attention(&m);
        }
        return 0;
    };
    let d = &doc.spec.decode;
    let (ids, settings, show): Prompt = match &data {
        Data::Grammar(g) => {
            let symbols = symbols(g.language);
            let mut ids = vec![i64::from(crate::tasks::grammar::SOS)];
            for tok in p.split_whitespace() {
                match symbols.iter().position(|s| *s == tok) {
                    Some(i) if i >= 3 => ids.push(i as i64),
                    Some(_) => {
                        eprintln!(
                            "error: `{tok}` is a special token; a prompt holds only the language's symbols ({}); kiln starts it with <sos> itself, and <eos> and <pad> are the model's to produce",
                            crate::diag::one_of(&symbols[3..])
                        );
                        return exit::UNUSABLE;
                    }
                    None => {
                        eprintln!(
                            "error: `{tok}` is not a symbol of this language; use {}",
                            crate::diag::one_of(&symbols[3..])
                        );
                        return 2;
                    }
                }
            }
            let show = move |t: i64| symbols.get(t as usize).copied().unwrap_or("?").to_string();
            (ids, g.settings(d), Box::new(show))
        }
        Data::Stream(s) => {
            let mut ids = Vec::new();
            for tok in p.split_whitespace() {
                match tok.parse::<u32>() {
                    Ok(v) if (v as usize) < s.vocab => ids.push(i64::from(v)),
                    _ => {
                        eprintln!(
                            "error: `{tok}` is not a value of this stream; use integers below {}",
                            s.vocab
                        );
                        return 2;
                    }
                }
            }
            if ids.is_empty() {
                eprintln!("error: the prompt is empty; give values separated by spaces, e.g. --prompt \"3 1 4\"");
                return 2;
            }
            let eos = d.eos_token_id.map(i64::from);
            let settings = crate::decode::Settings {
                d: d.clone(),
                eos,
                pad: d.pad_token_id.map(i64::from).or(eos).unwrap_or(0),
                default_max_length: (ids.len() + 16).min(s.context.max(ids.len())),
                source_len: 0,
            };
            (ids, settings, Box::new(|t: i64| t.to_string()))
        }
        Data::Text(t) => match super::generate_text::prompt(t, p, d) {
            Ok((ids, settings)) => (ids, settings, Box::new(|t: i64| t.to_string())),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        Data::Forecast(_) => {
            eprintln!("error: a forecasting model has nothing to generate from a prompt; `kiln eval RUN` prints its test errors");
            return 2;
        }
        Data::Seq2seq(s) => {
            use crate::tasks::seq2seq::{source, BOS, EOS, FIRST, PAD};
            let n = s.settings(d).source_len;
            let k = s.vocab() - FIRST;
            let mut w = Vec::new();
            for tok in p.split_whitespace() {
                match tok.parse::<i64>() {
                    Ok(v) if (0..k).contains(&v) => w.push(FIRST + v),
                    _ => {
                        eprintln!(
                            "error: `{tok}` is not a symbol of this task; use integers 0 to {}",
                            k - 1
                        );
                        return 2;
                    }
                }
            }
            if w.is_empty() || w.len() > n {
                eprintln!("error: give a source of 1 to {n} symbols separated by spaces, e.g. --prompt \"3 1 4\"");
                return 2;
            }
            let mut ids = source(&w, n);
            ids.push(BOS);
            let show = |t: i64| match t {
                PAD => "<pad>".to_string(),
                BOS => "<bos>".to_string(),
                EOS => "<eos>".to_string(),
                t => (t - FIRST).to_string(),
            };
            (ids, s.settings(d), Box::new(show))
        }
    };
    if let Err(e) = check_generation(&ids, &settings, rt.max_positions()) {
        eprintln!("error: {e}");
        return exit::UNUSABLE;
    }
    if !ignore_memory {
        let d = &settings.d;
        let batch = u64::from(d.num_beams.max(1)) * u64::from(d.num_return_sequences.max(1));
        let seq = settings.max_length(ids.len()) as u64;
        if let Err(e) = train::memory::generation(rt.graph(), batch, seq).check("generation") {
            eprintln!("error: {e}");
            return exit::TOO_LARGE;
        }
    }
    if let Some(m) = rt.max_positions() {
        // Positions the decoder reads (an encoder-decoder's source is not among them).
        let want = settings.max_length(ids.len()) - settings.source_len;
        if want > m + 1 {
            eprintln!(
                "error: the model reads at most {m} positions, so it can generate sequences of at most {} tokens (prompt included), but {want} were asked for; lower `decode.max_length` / `decode.max_new_tokens` or shorten the prompt",
                m + 1
            );
            return 2;
        }
    }
    let mut lm = crate::decode::ModelLm::new(&rt, d.use_cache);
    if let Data::Text(t) = &data {
        return super::generate_text::run(&mut lm, t, ids, &settings);
    }
    let out = crate::decode::generate(&mut lm, &[ids], &settings);
    let beams = !matches!(
        d.strategy,
        crate::spec::recipe::Strategy::Greedy | crate::spec::recipe::Strategy::Sample
    );
    for g in &out[0] {
        // A finished sequence ends at its EOS (batched sequences are padded after it); an
        // encoder-decoder's output starts after its source.
        let start = settings.source_len;
        let end = settings
            .eos
            .and_then(|e| {
                g.tokens
                    .iter()
                    .skip(start + 1)
                    .position(|&t| t == e)
                    .map(|i| i + start + 2)
            })
            .unwrap_or(g.tokens.len());
        let text: Vec<String> = g.tokens[start..end].iter().map(|&t| show(t)).collect();
        if beams {
            println!("{}\t(score {:.4})", text.join(" "), g.score);
        } else {
            println!("{}", text.join(" "));
        }
    }
    0
}

/// Refuse a generation that could only echo the prompt or could never end: a prompt that
/// already fills `max_length`, one longer than the model's positions, or a minimum length
/// that the length limit leaves no room for.
fn check_generation(
    ids: &[i64],
    s: &crate::decode::Settings,
    positions: Option<usize>,
) -> Result<(), String> {
    // In decoder tokens: an encoder-decoder's source is not counted (as Hugging Face does).
    let prompt = ids.len() - s.source_len;
    let max = s.max_length(ids.len()) - s.source_len;
    if let Some(m) = positions {
        if prompt > m {
            return Err(format!(
                "the prompt has {prompt} tokens, but the model reads at most {m} positions; shorten the prompt"
            ));
        }
    }
    if prompt >= max {
        return Err(format!(
            "the prompt has {prompt} tokens and generation stops at {max} (prompt included), so nothing would be generated; raise `decode.max_length` or set `decode.max_new_tokens`"
        ));
    }
    let d = &s.d;
    let min = (d.min_length as usize).max(prompt + d.min_new_tokens as usize);
    if s.eos.is_some() && min >= max {
        return Err(format!(
            "EOS may only be generated from length {min} on (`decode.min_length` {}, `decode.min_new_tokens` {}), but generation stops at length {max}, so no sequence could end; lower them or raise `decode.max_length` / `decode.max_new_tokens`",
            d.min_length, d.min_new_tokens
        ));
    }
    Ok(())
}

/// A prompt's ids, its decoding settings, and how to print a token.
type Prompt = (
    Vec<i64>,
    crate::decode::Settings,
    Box<dyn Fn(i64) -> String>,
);

fn symbols(lang: crate::spec::recipe::Language) -> Vec<&'static str> {
    use crate::spec::recipe::Language;
    match lang {
        Language::Dyck | Language::CsDyck => vec!["<sos>", "<eos>", "<pad>", "(", ")", "[", "]"],
        Language::ANbNcN => vec!["<sos>", "<eos>", "<pad>", "a", "b", "c"],
        _ => vec!["<sos>", "<eos>", "<pad>", "a", "b"],
    }
}
