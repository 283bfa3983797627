//! Test metrics of the text task: the model's loss in nats per token, bits per character (or
//! byte) and perplexity per token, beside the unigram and Kneser-Ney baselines scored on the
//! same targets, with a 95 % interval of the model's advantage over the n-gram.
//!
//! Every position of every test window is scored; a baseline sees the same history the model
//! sees (the window's tokens before the target, none from before the window). The interval
//! treats the test windows (non-overlapping, spread over the test part) as independent units:
//! the mean over windows of each window's mean loss difference, ± 1.96 standard errors.

use super::ngram::{KneserNey, Unigram};
use serde::{Deserialize, Serialize};

/// One model's scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    /// Mean cross-entropy per token, in nats.
    pub nats_per_token: f64,
    /// Bits per unit (character or byte): nats per token / ln 2 / units per token; `None`
    /// for token files without text.
    pub bits_per_unit: Option<f64>,
    /// Perplexity per token, exp(nats per token).
    pub perplexity: f64,
}

impl Scores {
    fn new(nats: f64, units_per_token: Option<f64>) -> Self {
        Scores {
            nats_per_token: nats,
            bits_per_unit: units_per_token.map(|u| nats / std::f64::consts::LN_2 / u),
            perplexity: nats.exp(),
        }
    }
}

/// Test metrics of a text task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextMetrics {
    /// Predictions scored (every position of every test window).
    pub predictions: u64,
    /// Test windows used.
    pub windows: usize,
    /// What `bits_per_unit` counts: `char`, `byte`, or `token` for token files.
    pub unit: String,
    /// Characters (or bytes) per token over the corpus; 1 at the char and byte levels.
    pub units_per_token: Option<f64>,
    /// The model.
    pub model: Scores,
    /// Add-one smoothed unigram frequencies of the training part.
    pub unigram: Scores,
    /// Interpolated Kneser-Ney n-gram.
    pub ngram: Scores,
    /// Its order.
    pub ngram_order: usize,
    /// Training tokens it was fitted on.
    pub ngram_train_tokens: usize,
    /// Model minus n-gram, nats per token (negative: the model is better).
    pub vs_ngram: f64,
    /// 95 % interval of `vs_ngram` over the test windows.
    pub vs_ngram_ci95: (f64, f64),
    /// Whether the interval lies below 0: the model beats the n-gram.
    pub beats_ngram: bool,
}

/// Score the test windows: `windows[j]` holds context + 1 ids, `model[j]` the model's loss in
/// nats at each of the context positions (predicting ids 1..).
pub fn score(
    windows: &[Vec<u32>],
    model: &[Vec<f64>],
    unigram: &Unigram,
    kn: &KneserNey,
    unit: &str,
    units_per_token: Option<f64>,
) -> TextMetrics {
    let (mut m_sum, mut u_sum, mut k_sum, mut n) = (0.0, 0.0, 0.0, 0u64);
    let mut diffs = Vec::with_capacity(windows.len());
    for (w, nll) in windows.iter().zip(model) {
        let mut d = 0.0;
        for (t, &m) in nll.iter().enumerate() {
            let target = w[t + 1];
            let k = -kn.prob(&w[..=t], target).ln();
            m_sum += m;
            u_sum -= unigram.prob(target).ln();
            k_sum += k;
            d += m - k;
            n += 1;
        }
        diffs.push(d / nll.len().max(1) as f64);
    }
    let nf = n.max(1) as f64;
    let mean = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
    let ci = if diffs.len() > 1 {
        let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (diffs.len() - 1) as f64;
        let half = 1.959_963_984_540_054 * (var / diffs.len() as f64).sqrt();
        (mean - half, mean + half)
    } else {
        (f64::NEG_INFINITY, f64::INFINITY)
    };
    TextMetrics {
        predictions: n,
        windows: windows.len(),
        unit: unit.to_string(),
        units_per_token,
        model: Scores::new(m_sum / nf, units_per_token),
        unigram: Scores::new(u_sum / nf, units_per_token),
        ngram: Scores::new(k_sum / nf, units_per_token),
        ngram_order: kn.order(),
        ngram_train_tokens: kn.tokens(),
        vs_ngram: mean,
        vs_ngram_ci95: ci,
        beats_ngram: ci.1 < 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_compare_the_model_with_baselines_on_the_same_targets() {
        let train = [0u32, 1, 0, 1, 2, 0];
        let kn = KneserNey::fit(&train, 2, 3, Some(0.5));
        let uni = Unigram::fit(train.iter().copied(), 3);
        let windows = vec![vec![0, 1, 0], vec![1, 0, 1]];
        // A perfect model: loss 0 everywhere.
        let model = vec![vec![0.0, 0.0], vec![0.0, 0.0]];
        let m = score(&windows, &model, &uni, &kn, "char", Some(1.0));
        assert_eq!(m.predictions, 4);
        assert_eq!(m.model.nats_per_token, 0.0);
        assert_eq!(m.model.perplexity, 1.0);
        // n-gram: P(b|a) = .8125, P(a|b) = .5, twice each.
        let want = -(0.8125f64.ln() + 0.5f64.ln()) / 2.0;
        assert!((m.ngram.nats_per_token - want).abs() < 1e-12);
        assert!((m.ngram.bits_per_unit.unwrap() - want / std::f64::consts::LN_2).abs() < 1e-12);
        // unigram: a 3/6... add-one: (3+1)/(6+3), (2+1)/(6+3).
        let u = -((4.0f64 / 9.0).ln() + (3.0f64 / 9.0).ln()) / 2.0;
        assert!((m.unigram.nats_per_token - u).abs() < 1e-12);
        assert!((m.vs_ngram + want).abs() < 1e-12);
        assert!(m.beats_ngram, "{m:?}");
        // A useless model does not beat it.
        let bad = vec![vec![5.0, 5.0], vec![5.0, 5.1]];
        assert!(!score(&windows, &bad, &uni, &kn, "char", Some(1.0)).beats_ngram);
    }
}
