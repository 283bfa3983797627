//! Logit processors and warpers, in Hugging Face's order (reference §2.2): Hamming diversity →
//! repetition penalty → no-repeat n-gram → bad words → min_length → min_new_tokens, then,
//! when sampling, temperature → top-k → top-p → min-p → typical-p. Scores are f32 as in
//! PyTorch; a removed token gets −∞.

use crate::spec::recipe::Decode;

const NEG: f32 = f32::NEG_INFINITY;

/// Softmax of `x` (−∞ → 0).
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(NEG, f32::max);
    if m == NEG {
        return vec![1.0 / x.len() as f32; x.len()];
    }
    let e: Vec<f32> = x.iter().map(|&v| (v - m).exp()).collect();
    // Times the reciprocal of the sum, as torch's CPU softmax.
    let r = 1.0 / e.iter().sum::<f32>();
    e.into_iter().map(|v| v * r).collect()
}

/// Log-softmax of `x`.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(NEG, f32::max);
    // (x − max) − log Σ exp(x − max), in torch's CPU order of operations.
    let log_sum = x.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
    x.iter().map(|&v| (v - m) - log_sum).collect()
}

/// The processors and warpers of one decoding configuration.
pub struct Processors {
    d: Decode,
    eos: Option<i64>,
    prompt_len: usize,
    min_keep: usize,
    skip: usize,
}

impl Processors {
    /// For sequences whose prompt has `prompt_len` tokens; warpers keep at least `min_keep`
    /// tokens (2 with beam sampling and an EOS, else 1).
    pub fn new(d: &Decode, eos: Option<i64>, prompt_len: usize, min_keep: usize) -> Self {
        Processors {
            d: d.clone(),
            eos,
            prompt_len,
            min_keep,
            skip: 0,
        }
    }

    /// Ignore the first `n` ids of every sequence (an encoder-decoder's source): the
    /// processors and `min_length` see only the decoder's tokens.
    pub fn skipping(mut self, n: usize) -> Self {
        self.skip = n;
        self.prompt_len = self.prompt_len.saturating_sub(n);
        self
    }

    /// Apply the processors to the `scores` of the token after `seq`. `diversity` holds the
    /// tokens earlier beam groups chose at this step and the penalty.
    pub fn process(&self, seq: &[i64], scores: &mut [f32], diversity: Option<(&[i64], f64)>) {
        let d = &self.d;
        let seq = &seq[self.skip.min(seq.len())..];
        if let Some((chosen, penalty)) = diversity {
            if penalty > 0.0 {
                // One subtraction of penalty · count per token, as transformers (bincount).
                let mut count = vec![0u32; scores.len()];
                for &t in chosen {
                    if let Some(c) = count.get_mut(t as usize) {
                        *c += 1;
                    }
                }
                for (s, &c) in scores.iter_mut().zip(&count) {
                    if c > 0 {
                        *s -= penalty as f32 * c as f32;
                    }
                }
            }
        }
        if d.repetition_penalty != 1.0 {
            let p = d.repetition_penalty as f32;
            let mut seen = vec![false; scores.len()];
            for &t in seq {
                let t = t as usize;
                if t < scores.len() && !seen[t] {
                    seen[t] = true;
                    scores[t] = if scores[t] < 0.0 {
                        scores[t] * p
                    } else {
                        scores[t] / p
                    };
                }
            }
        }
        let n = d.no_repeat_ngram_size as usize;
        if n > 0 && seq.len() + 1 >= n {
            let prefix = &seq[seq.len() + 1 - n..];
            for w in seq.windows(n) {
                if &w[..n - 1] == prefix {
                    if let Some(s) = scores.get_mut(w[n - 1] as usize) {
                        *s = NEG;
                    }
                }
            }
        }
        // As `NoBadWordsLogitsProcessor`: a word equal to [eos] is dropped, and one longer
        // than the sequence so far is skipped (`SequenceBiasLogitsProcessor`).
        for bad in &d.bad_words_ids {
            if bad.len() == 1 && self.eos == Some(i64::from(bad[0])) {
                continue;
            }
            let (last, before) = bad.split_last().expect("validated non-empty");
            let matches = (bad.len() == 1 || bad.len() <= seq.len())
                && seq[seq.len() - before.len()..]
                    .iter()
                    .zip(before)
                    .all(|(&a, &b)| a == i64::from(b));
            if matches {
                if let Some(s) = scores.get_mut(*last as usize) {
                    *s = NEG;
                }
            }
        }
        if let Some(e) = self.eos {
            let short = seq.len() < d.min_length as usize
                || seq.len() - self.prompt_len < d.min_new_tokens as usize;
            if short {
                if let Some(s) = scores.get_mut(e as usize) {
                    *s = NEG;
                }
            }
        }
    }

    /// Apply the sampling warpers.
    pub fn warp(&self, scores: &mut [f32]) {
        let d = &self.d;
        let v = scores.len();
        if d.temperature != 1.0 {
            for s in scores.iter_mut() {
                *s /= d.temperature as f32;
            }
        }
        if d.top_k > 0 {
            let k = (d.top_k as usize).max(self.min_keep).min(v);
            let mut sorted: Vec<f32> = scores.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for s in scores.iter_mut() {
                if *s < kth {
                    *s = NEG;
                }
            }
        }
        if d.top_p < 1.0 {
            // Ascending order; drop tokens whose cumulative mass is ≤ 1 − top_p, keeping the
            // last `min_keep`. As torch: the bound is computed in f64 and compared in f32, and
            // the cumulative sum is accumulated in f64 (CPU `cumsum` of f32) and rounded.
            let order = ascending(scores);
            let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
            let mut cum = 0.0f64;
            let limit = (1.0 - d.top_p) as f32;
            let mut remove = Vec::new();
            for (rank, (&i, &p)) in order.iter().zip(&probs).enumerate() {
                cum += f64::from(p);
                if cum as f32 <= limit && rank < v.saturating_sub(self.min_keep) {
                    remove.push(i);
                }
            }
            for i in remove {
                scores[i] = NEG;
            }
        }
        if let Some(min_p) = d.min_p {
            let probs = softmax(scores);
            let top = probs.iter().copied().fold(0.0f32, f32::max);
            let keep: Vec<usize> = descending(&probs)[..self.min_keep.min(v)].to_vec();
            for (i, p) in probs.iter().enumerate() {
                if *p < min_p as f32 * top && !keep.contains(&i) {
                    scores[i] = NEG;
                }
            }
        }
        if d.typical_p < 1.0 {
            let logp = log_softmax(scores);
            let ent: f32 = logp
                .iter()
                .filter(|l| l.is_finite())
                .map(|&l| -l * l.exp())
                .sum();
            let shifted: Vec<f32> = logp.iter().map(|&l| (-l - ent).abs()).collect();
            let order = ascending(&shifted);
            // As transformers: the softmax of the scores in that order, accumulated in f64
            // (torch's CPU cumsum) and compared in f32.
            let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
            let mut cum = 0.0f64;
            let mut last = 0;
            for &p in &probs {
                cum += f64::from(p);
                if (cum as f32) < d.typical_p as f32 {
                    last += 1;
                }
            }
            let last = last.min(v - 1);
            let threshold = shifted[order[last]];
            for (rank, &i) in order.iter().enumerate() {
                if shifted[i] > threshold && rank >= self.min_keep {
                    scores[i] = NEG;
                }
            }
        }
    }
}

/// Compared as torch compares: −0.0 equals 0.0 (NaN, which no score is, as equal).
fn ieee(a: f32, b: f32) -> std::cmp::Ordering {
    a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
}

/// Indices in ascending order of `x`; equal values in index order (torch's CPU sort is stable
/// for short rows; for long ones the order of equal values is its own).
fn ascending(x: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| ieee(x[a], x[b]).then(a.cmp(&b)));
    idx
}

fn descending(x: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| ieee(x[b], x[a]).then(a.cmp(&b)));
    idx
}
