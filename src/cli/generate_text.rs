//! `kiln generate` for text tasks: the prompt through the task's tokenizer, the output as
//! text, streamed to the terminal token by token with greedy search and sampling.

use crate::decode::{NextLogits, Settings};
use crate::spec::recipe::{Decode, Strategy};
use crate::tasks::text::Tokenizer;
use crate::train::data::TextData;
use std::io::Write;

/// The prompt's ids and the decoding settings of a text task.
pub(super) fn prompt(t: &TextData, p: &str, d: &Decode) -> Result<(Vec<i64>, Settings), String> {
    let tok = tokenizer(t)?;
    let ids: Vec<i64> = tok
        .encode(p)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(i64::from)
        .collect();
    if ids.is_empty() {
        return Err("the prompt is empty; give some text, e.g. --prompt \"To be, or not\"".into());
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= t.corpus.vocab) {
        return Err(format!(
            "the tokenizer gives the prompt the id {bad}, beyond the model's vocabulary of {}",
            t.corpus.vocab
        ));
    }
    let eos = d.eos_token_id.map(i64::from);
    Ok((
        ids.clone(),
        Settings {
            d: d.clone(),
            eos,
            pad: d.pad_token_id.map(i64::from).or(eos).unwrap_or(0),
            default_max_length: (ids.len() + 256).min(t.context.max(ids.len())),
            source_len: 0,
        },
    ))
}

fn tokenizer(t: &TextData) -> Result<&Tokenizer, String> {
    t.corpus.tokenizer.as_ref().ok_or_else(|| {
        "these nanoGPT token files have no tokenizer, so kiln cannot turn text into ids: set `task.tokenizer` to their tokenizer.json".to_string()
    })
}

/// Generate and print: streamed with greedy search and sampling of one sequence, each
/// sequence whole (with its score) for beam strategies and several return sequences.
pub(super) fn run(lm: &mut dyn NextLogits, t: &TextData, ids: Vec<i64>, s: &Settings) -> i32 {
    let Ok(tok) = tokenizer(t) else {
        return 2;
    };
    let stream = matches!(s.d.strategy, Strategy::Greedy | Strategy::Sample)
        && s.d.num_return_sequences <= 1;
    let text = |seq: &[i64]| {
        let ids: Vec<u32> = seq.iter().map(|&v| v as u32).collect();
        tok.decode(&ids)
    };
    if stream {
        let mut out = Streaming {
            inner: lm,
            tok,
            printed: String::new(),
        };
        let res = crate::decode::generate(&mut out, &[ids], s);
        let all = cut_at_eos(&res[0][0].tokens, s.eos);
        out.show(&text(all), true);
        println!();
        return 0;
    }
    let out = crate::decode::generate(lm, &[ids], s);
    let beams = !matches!(s.d.strategy, Strategy::Greedy | Strategy::Sample);
    for g in &out[0] {
        let body = text(cut_at_eos(&g.tokens, s.eos));
        if beams {
            println!("{body}\t(score {:.4})", g.score);
        } else {
            println!("{body}");
        }
    }
    0
}

/// A sequence up to and including its first EOS after the first token.
fn cut_at_eos(tokens: &[i64], eos: Option<i64>) -> &[i64] {
    let end = eos
        .and_then(|e| tokens.iter().skip(1).position(|&t| t == e).map(|i| i + 2))
        .unwrap_or(tokens.len());
    &tokens[..end]
}

/// Prints the first row's text as it grows: each call for the next logits sees one more
/// token.
struct Streaming<'a> {
    inner: &'a mut dyn NextLogits,
    tok: &'a Tokenizer,
    printed: String,
}

impl Streaming<'_> {
    /// Print what `text` adds to what is printed. Until `last`, a trailing U+FFFD (the start
    /// of a character whose other bytes are still to come) is held back.
    fn show(&mut self, text: &str, last: bool) {
        let stable = if last {
            text
        } else {
            text.trim_end_matches('\u{FFFD}')
        };
        if let Some(new) = stable.strip_prefix(self.printed.as_str()) {
            print!("{new}");
            let _ = std::io::stdout().flush();
            self.printed = stable.to_string();
        }
    }
}

impl NextLogits for Streaming<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>> {
        let ids: Vec<u32> = seqs[0].iter().map(|&v| v as u32).collect();
        let text = self.tok.decode(&ids);
        self.show(&text, false);
        self.inner.next_logits(seqs, parents)
    }

    fn reserve(&mut self, len: usize) {
        self.inner.reserve(len);
    }
}
