//! The n-gram baselines of the text task: a unigram model with add-one smoothing and an
//! interpolated Kneser-Ney model (Chen & Goodman 1999, §3.5), both fitted on the training
//! part.
//!
//! Kneser-Ney of order n: the highest order uses raw counts, every lower order continuation
//! counts N₁₊(• g) (the number of distinct tokens seen before g), and each order interpolates
//! with the next lower one:
//!
//! P(w | h) = (max(c(h w) − D, 0) + D · N₁₊(h •) · P(w | h′)) / c(h •),
//!
//! where h′ drops h's first token, c(h •) = Σ_w c(h w) and N₁₊(h •) counts the distinct w
//! after h; an unseen history falls back to P(w | h′) whole, and the order-1 model
//! interpolates with the uniform distribution over the vocabulary, so every token has a
//! probability. A history shorter than n − 1 (the start of a window) is scored with raw
//! counts at its own order. The discount of each order is D = n₁ / (n₁ + 2 n₂) over its
//! count-of-counts (Ney et al. 1994).

use rustc_hash::FxHashMap;

const BITS: usize = 25;

/// Pack an n-gram (ids below 2²⁵ − 1, at most 5 of them) into a key: id + 1 in 25 bits each,
/// the first token lowest.
fn pack(ids: &[u32]) -> u128 {
    ids.iter()
        .enumerate()
        .fold(0, |k, (i, &w)| k | (u128::from(w) + 1) << (BITS * i))
}

/// Counts of one order: for each n-gram its count, for each history (sum, distinct types).
#[derive(Default)]
struct Order {
    count: FxHashMap<u128, u64>,
    context: FxHashMap<u128, (u64, u64)>,
    discount: f64,
}

impl Order {
    fn from_counts(count: FxHashMap<u128, u64>, k: usize, discount: Option<f64>) -> Self {
        let mut context: FxHashMap<u128, (u64, u64)> = FxHashMap::default();
        let (mut n1, mut n2) = (0u64, 0u64);
        let prefix_mask = if k == 1 {
            0
        } else {
            (1u128 << (BITS * (k - 1))) - 1
        };
        for (&g, &c) in &count {
            let e = context.entry(g & prefix_mask).or_default();
            e.0 += c;
            e.1 += 1;
            n1 += u64::from(c == 1);
            n2 += u64::from(c == 2);
        }
        let estimated = if n1 > 0 && n2 > 0 {
            n1 as f64 / (n1 as f64 + 2.0 * n2 as f64)
        } else {
            0.75
        };
        Order {
            count,
            context,
            discount: discount.unwrap_or(estimated),
        }
    }
}

/// An interpolated Kneser-Ney model.
pub struct KneserNey {
    order: usize,
    vocab: usize,
    /// `raw[k-1]`: raw counts of k-grams.
    raw: Vec<Order>,
    /// `cont[k-1]`: continuation counts of k-grams, k < n.
    cont: Vec<Order>,
    tokens: usize,
}

impl KneserNey {
    /// Fit a model of `order` (1 to 5) over `vocab` ids (below 2²⁵ − 1) on `tokens`; `discount`
    /// fixes every order's D instead of estimating it.
    pub fn fit(tokens: &[u32], order: usize, vocab: usize, discount: Option<f64>) -> Self {
        assert!((1..=5).contains(&order) && vocab < (1 << BITS) - 1);
        let mut raw = Vec::with_capacity(order);
        for k in 1..=order {
            let mut count: FxHashMap<u128, u64> = FxHashMap::default();
            for g in tokens.windows(k) {
                *count.entry(pack(g)).or_default() += 1;
            }
            raw.push(count);
        }
        // Continuation counts of k-grams: distinct (k+1)-grams ending in them.
        let mut cont = Vec::with_capacity(order.saturating_sub(1));
        for (k, higher) in raw.iter().enumerate().skip(1) {
            let mut count: FxHashMap<u128, u64> = FxHashMap::default();
            for &g in higher.keys() {
                *count.entry(g >> BITS).or_default() += 1;
            }
            cont.push(Order::from_counts(count, k, discount));
        }
        let raw = raw
            .into_iter()
            .enumerate()
            .map(|(i, c)| Order::from_counts(c, i + 1, discount))
            .collect();
        KneserNey {
            order,
            vocab,
            raw,
            cont,
            tokens: tokens.len(),
        }
    }

    /// The order.
    pub fn order(&self) -> usize {
        self.order
    }

    /// Training tokens it was fitted on.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// P(w | history): the last `order − 1` tokens of `history` are used.
    pub fn prob(&self, history: &[u32], w: u32) -> f64 {
        let h = &history[history.len().saturating_sub(self.order - 1)..];
        self.prob_at(h, w, true)
    }

    fn prob_at(&self, h: &[u32], w: u32, top: bool) -> f64 {
        let k = h.len() + 1;
        let lower = if k == 1 {
            1.0 / self.vocab as f64
        } else {
            self.prob_at(&h[1..], w, false)
        };
        let o = if top || k == self.order {
            &self.raw[k - 1]
        } else {
            &self.cont[k - 1]
        };
        let Some(&(den, types)) = o.context.get(&pack(h)) else {
            return lower;
        };
        let key = pack(h) | (u128::from(w) + 1) << (BITS * h.len());
        let c = o.count.get(&key).copied().unwrap_or(0) as f64;
        let d = o.discount;
        ((c - d).max(0.0) + d * types as f64 * lower) / den as f64
    }
}

/// The unigram model: training frequencies with add-one smoothing, (c(w) + 1) / (N + V).
pub struct Unigram {
    counts: Vec<u64>,
    total: u64,
}

impl Unigram {
    /// Count `tokens` over `vocab` ids.
    pub fn fit(tokens: impl Iterator<Item = u32>, vocab: usize) -> Self {
        let mut counts = vec![0u64; vocab];
        let mut total = 0;
        for t in tokens {
            counts[t as usize] += 1;
            total += 1;
        }
        Unigram { counts, total }
    }

    /// P(w).
    pub fn prob(&self, w: u32) -> f64 {
        (self.counts[w as usize] + 1) as f64 / (self.total + self.counts.len() as u64) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "a b a b c a" with D = 0.5, worked by hand:
    /// bigrams ab ×2, ba, bc, ca; continuation counts a 2 (after b, c), b 1, c 1 (total 4,
    /// 3 types), so P₁(a) = (2 − .5)/4 + .5·3/4·1/3 = 0.5, P₁(b) = P₁(c) = 0.25;
    /// P(b | a) = (2 − .5)/2 + .5·1/2·P₁(b) = 0.8125, P(c | a) = .25·P₁(c) = 0.0625,
    /// P(a | b) = (1 − .5)/2 + .5·2/2·P₁(a) = 0.5, P(a | c) = .5 + .5·P₁(a) = 0.75;
    /// with no history, raw unigram counts (a 3, b 2, c 1 of 6):
    /// P(a) = (3 − .5)/6 + .5·3/6·1/3 = 0.5.
    #[test]
    fn kneser_ney_matches_a_hand_computed_bigram_model() {
        let kn = KneserNey::fit(&[0, 1, 0, 1, 2, 0], 2, 3, Some(0.5));
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(kn.prob(&[0], 1), 0.8125);
        close(kn.prob(&[0], 2), 0.0625);
        close(kn.prob(&[0], 0), 0.125);
        close(kn.prob(&[1], 0), 0.5);
        close(kn.prob(&[2], 0), 0.75);
        close(kn.prob(&[], 0), 0.5);
        // A longer history uses its last token only.
        close(kn.prob(&[2, 2, 0], 1), 0.8125);
    }

    #[test]
    fn kneser_ney_distributions_sum_to_one_with_estimated_discounts() {
        let text: Vec<u32> = "the cat sat on the mat and the dog sat on the cat"
            .bytes()
            .map(|b| u32::from(b % 32))
            .collect();
        for order in 1..=5 {
            let kn = KneserNey::fit(&text, order, 32, None);
            for h in [
                &[][..],
                &[20],
                &[20, 8],
                &[8, 5, 0],
                &[31, 31, 31, 31],
                &[3, 1, 20, 0],
            ] {
                let s: f64 = (0..32).map(|w| kn.prob(h, w)).sum();
                assert!((s - 1.0).abs() < 1e-9, "order {order} history {h:?}: {s}");
            }
        }
    }

    #[test]
    fn unigram_is_add_one_smoothed() {
        let u = Unigram::fit([0, 0, 1].into_iter(), 3);
        assert_eq!(u.prob(0), 3.0 / 6.0);
        assert_eq!(u.prob(2), 1.0 / 6.0);
    }
}
