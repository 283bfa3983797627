//! Sequence-to-sequence transduction of random words (copy, reverse, sort) for
//! encoder-decoder models. A row of ids is the source (the word, PAD-padded to `max_length`)
//! followed by the target `BOS f(word) EOS`, PAD-padded to `max_length + 2`.

use crate::spec::recipe::Problem;
use crate::util::Rng;
use serde::{Deserialize, Serialize};

pub use crate::spec::recipe::seq2seq_ids::{BOS, EOS, FIRST, PAD};

/// The target word of `w`.
pub fn apply(problem: Problem, w: &[i64]) -> Vec<i64> {
    let mut t = w.to_vec();
    match problem {
        Problem::Copy => {}
        Problem::Reverse => t.reverse(),
        Problem::Sort => t.sort_unstable(),
    }
    t
}

/// `n` random words of `min..=max` symbols (ids FIRST..FIRST + symbols).
pub fn words(n: usize, symbols: u32, min: usize, max: usize, rng: &mut Rng) -> Vec<Vec<i64>> {
    (0..n)
        .map(|_| {
            let len = min + (rng.next_u64() % (max - min + 1) as u64) as usize;
            (0..len)
                .map(|_| FIRST + (rng.next_u64() % u64::from(symbols)) as i64)
                .collect()
        })
        .collect()
}

/// The source part of a row: `w` padded to `max`.
pub fn source(w: &[i64], max: usize) -> Vec<i64> {
    let mut s = w.to_vec();
    s.resize(max, PAD);
    s
}

/// A whole row: source, then `BOS f(w) EOS` padded to `max + 2`.
pub fn row(problem: Problem, w: &[i64], max: usize) -> Vec<i64> {
    let mut r = source(w, max);
    r.push(BOS);
    r.extend(apply(problem, w));
    r.push(EOS);
    r.resize(2 * max + 2, PAD);
    r
}

/// Metrics of a model on the test pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seq2seqReport {
    /// Test pairs.
    pub n: usize,
    /// Fraction of test sources whose greedy decoding is exactly `f(w) EOS`.
    pub exact_match: f64,
    /// Teacher-forced: fraction of target tokens (f(w) and EOS, not padding) that are the
    /// argmax prediction.
    pub token_accuracy: f64,
    /// Token accuracy of guessing a symbol uniformly: 1 / symbols.
    pub chance_token_accuracy: f64,
}

/// Whether a generated row (source, BOS, generated ids) decodes `w` exactly.
pub fn is_exact(problem: Problem, w: &[i64], generated: &[i64], max: usize) -> bool {
    let mut want = apply(problem, w);
    want.push(EOS);
    generated.get(max + 1..max + 1 + want.len()) == Some(&want[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_hold_source_then_target() {
        let w = vec![5, 3, 4];
        assert_eq!(row(Problem::Reverse, &w, 4), [5, 3, 4, 0, 1, 4, 3, 5, 2, 0]);
        assert_eq!(apply(Problem::Sort, &w), [3, 4, 5]);
        assert!(is_exact(Problem::Copy, &w, &[5, 3, 4, 0, 1, 5, 3, 4, 2], 4));
        assert!(!is_exact(
            Problem::Copy,
            &w,
            &[5, 3, 4, 0, 1, 5, 3, 4, 4],
            4
        ));
        let mut rng = Rng::new(1);
        let ws = words(200, 5, 2, 6, &mut rng);
        assert!(ws.iter().all(|w| (2..=6).contains(&w.len())));
        assert!(ws
            .iter()
            .flatten()
            .all(|&t| (FIRST..FIRST + 5).contains(&t)));
    }
}
