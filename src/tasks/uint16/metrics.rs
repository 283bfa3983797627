//! Test metrics: top-k accuracy beside chance and the unigram baseline, with 95 % Wilson
//! intervals.

use serde::{Deserialize, Serialize};

/// The `k` most frequent values of a histogram (ties: the smaller value first).
pub fn most_frequent(hist: &[u64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..hist.len()).filter(|&v| hist[v] > 0).collect();
    idx.sort_by(|&a, &b| hist[b].cmp(&hist[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// 95 % Wilson score interval of a proportion `k/n`.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = k as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One accuracy beside its references.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accuracy {
    /// k of top-k.
    pub k: usize,
    /// The model's top-k accuracy.
    pub model: f64,
    /// 95 % Wilson interval of the model's accuracy.
    pub ci95: (f64, f64),
    /// Chance: k / vocab.
    pub chance: f64,
    /// Always predicting the k values most frequent in the training part.
    pub unigram: f64,
    /// Whether the interval lies above both chance and the unigram baseline.
    pub beats_baselines: bool,
}

/// Test metrics of a uint16 task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamMetrics {
    /// Predictions scored (every position of every test window).
    pub predictions: u64,
    /// Test windows used.
    pub windows: usize,
    /// Mean cross-entropy on them, in nats.
    pub loss: f64,
    /// Top-1 and top-k accuracy.
    pub top: Vec<Accuracy>,
}

/// Accumulates top-k hits of predictions against targets.
pub struct TopK {
    ks: Vec<usize>,
    unigram: Vec<Vec<usize>>,
    hits: Vec<u64>,
    base_hits: Vec<u64>,
    n: u64,
    loss_sum: f64,
}

impl TopK {
    /// Counters for each k, with the training histogram for the unigram baseline.
    pub fn new(ks: &[usize], train_hist: &[u64]) -> Self {
        TopK {
            ks: ks.to_vec(),
            unigram: ks.iter().map(|&k| most_frequent(train_hist, k)).collect(),
            hits: vec![0; ks.len()],
            base_hits: vec![0; ks.len()],
            n: 0,
            loss_sum: 0.0,
        }
    }

    /// Score one prediction: `logits` over the vocabulary and the true `target`.
    pub fn add(&mut self, logits: &[f32], target: usize) {
        let t = logits[target];
        // Rank of the target: values strictly above it, ties resolved in the target's favour
        // only when they come later (a stable order by value, then index).
        let above = logits
            .iter()
            .enumerate()
            .filter(|&(i, &v)| v > t || (v == t && i < target))
            .count();
        for (j, &k) in self.ks.iter().enumerate() {
            self.hits[j] += u64::from(above < k);
            self.base_hits[j] += u64::from(self.unigram[j].contains(&target));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = f64::from(max)
            + logits
                .iter()
                .map(|&v| f64::from(v - max).exp())
                .sum::<f64>()
                .ln();
        self.loss_sum += lse - f64::from(t);
        self.n += 1;
    }

    /// The metrics for a vocabulary of `vocab` values.
    pub fn finish(&self, vocab: usize, windows: usize) -> StreamMetrics {
        let top = self
            .ks
            .iter()
            .enumerate()
            .map(|(j, &k)| {
                let model = self.hits[j] as f64 / self.n.max(1) as f64;
                let ci95 = wilson(self.hits[j], self.n);
                let chance = k as f64 / vocab as f64;
                let unigram = self.base_hits[j] as f64 / self.n.max(1) as f64;
                Accuracy {
                    k,
                    model,
                    ci95,
                    chance,
                    unigram,
                    beats_baselines: ci95.0 > chance && ci95.0 > unigram,
                }
            })
            .collect();
        StreamMetrics {
            predictions: self.n,
            windows,
            loss: self.loss_sum / self.n.max(1) as f64,
            top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_known_values() {
        // 50/100: 0.4038 .. 0.5962 (standard tables).
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4);
        let (lo, hi) = wilson(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-4);
    }

    #[test]
    fn top_k_counts_hits_and_the_unigram_baseline() {
        let mut hist = vec![0u64; 4];
        hist[2] = 10;
        hist[0] = 5;
        let mut t = TopK::new(&[1, 2], &hist);
        t.add(&[0.0, 1.0, 3.0, 2.0], 2); // top-1 hit; baseline {2} hit
        t.add(&[0.0, 1.0, 3.0, 2.0], 3); // top-2 hit; baselines miss ({2}, {2, 0})
        t.add(&[5.0, 1.0, 3.0, 2.0], 1); // miss; miss
        let m = t.finish(4, 1);
        assert_eq!(m.predictions, 3);
        assert_eq!(m.top[0].model, 1.0 / 3.0);
        assert_eq!(m.top[1].model, 2.0 / 3.0);
        assert_eq!(m.top[0].unigram, 1.0 / 3.0);
        assert_eq!(m.top[1].unigram, 1.0 / 3.0);
        assert_eq!(m.top[0].chance, 0.25);
        assert_eq!(m.top[1].chance, 0.5);
        // Loss of the first prediction: logsumexp - 3.
        let lse = |l: &[f64]| l.iter().map(|v| v.exp()).sum::<f64>().ln();
        let want = (lse(&[0.0, 1.0, 3.0, 2.0]) - 3.0 + lse(&[0.0, 1.0, 3.0, 2.0]) - 2.0
            + lse(&[5.0, 1.0, 3.0, 2.0])
            - 1.0)
            / 3.0;
        assert!((m.loss - want).abs() < 1e-6);
    }
}
