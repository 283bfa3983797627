//! The metrics computed on greedy completions, and the authors' chance levels.

use super::{grammatical, rule1, rule2, rule2_completion, EOS};
use crate::spec::recipe::Language;

/// Metrics of completed sequences (prompt + generated tokens).
///
/// A rate over zero sequences (0/0) is undefined: `None` (null in summary.json, "-" in the
/// printed table), never 0. The rule rates are over the finished sequences, so they are all
/// `None` when nothing finished; `finished_n` says over how many they are taken.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredMetrics")]
pub struct Metrics {
    /// Number of sequences.
    pub n: usize,
    /// Number of sequences that contain EOS (the denominator of the rule rates).
    pub finished_n: usize,
    /// Fraction that contain EOS (`finished_n / n`).
    pub finished: Option<f64>,
    /// Among finished: fraction satisfying rule 1.
    pub rule1: Option<f64>,
    /// Among finished: fraction satisfying rule 2.
    pub rule2: Option<f64>,
    /// Among finished: fraction whose completion satisfies rule 2.
    pub rule2_completion: Option<f64>,
    /// Among finished: fraction in the language.
    pub grammatical: Option<f64>,
}

/// `Metrics` as summary.json stores it, including summaries written before `finished_n`
/// existed (the count is then recovered from the fraction) and before undefined rates were
/// stored as null (their 0.0 over zero finished sequences becomes `None`).
#[derive(serde::Deserialize)]
struct StoredMetrics {
    n: usize,
    #[serde(default)]
    finished_n: Option<usize>,
    finished: Option<f64>,
    rule1: Option<f64>,
    rule2: Option<f64>,
    rule2_completion: Option<f64>,
    grammatical: Option<f64>,
}

impl From<StoredMetrics> for Metrics {
    fn from(s: StoredMetrics) -> Self {
        let finished_n = s
            .finished_n
            .unwrap_or_else(|| s.finished.map_or(0, |f| (f * s.n as f64).round() as usize));
        let over_finished = |x: Option<f64>| x.filter(|_| finished_n > 0);
        Metrics {
            n: s.n,
            finished_n,
            finished: s.finished.filter(|_| s.n > 0),
            rule1: over_finished(s.rule1),
            rule2: over_finished(s.rule2),
            rule2_completion: over_finished(s.rule2_completion),
            grammatical: over_finished(s.grammatical),
        }
    }
}

impl Metrics {
    /// Whether some rate is undefined (nothing to take it over).
    pub fn has_undefined(&self) -> bool {
        [
            self.finished,
            self.rule1,
            self.rule2,
            self.rule2_completion,
            self.grammatical,
        ]
        .iter()
        .any(Option::is_none)
    }
}

/// `k / n`, or `None` when `n` is 0: a rate over nothing is undefined, not 0.
pub fn frac(k: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

/// Compute the metrics of `sequences` (SOS, prompt, then generated tokens), as the reference
/// does: a sequence is finished if it contains EOS after the prompt; for finished ones,
/// everything after the first EOS becomes EOS and the checks run on the whole sequence.
pub fn metrics(lang: Language, sequences: &[Vec<u8>]) -> Metrics {
    let mut finished = 0;
    let (mut r1, mut r2, mut r2c, mut gram) = (0, 0, 0, 0);
    for s in sequences {
        let Some(end) = s.iter().position(|&t| t == EOS) else {
            continue;
        };
        finished += 1;
        let s = &s[..end];
        r1 += usize::from(rule1(lang, s));
        r2 += usize::from(rule2(lang, s));
        r2c += usize::from(rule2_completion(lang, s));
        gram += usize::from(grammatical(lang, s));
    }
    Metrics {
        n: sequences.len(),
        finished_n: finished,
        finished: frac(finished, sequences.len()),
        rule1: frac(r1, finished),
        rule2: frac(r2, finished),
        rule2_completion: frac(r2c, finished),
        grammatical: frac(gram, finished),
    }
}

/// The authors' chance levels for a uniform random next-token model: (OOD R1, OOD R2
/// completion) (reference §1.5).
pub fn chance(lang: Language) -> (f64, f64) {
    match lang {
        Language::BaN => (0.5, 1.0 / 3.0),
        Language::BbaN => (0.5, 0.75),
        Language::ANbN => (0.154, 0.4445),
        Language::Dyck | Language::CsDyck => (0.1273, 0.382),
        Language::ANbNcN => (0.00334, 0.5925),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::grammar::{A, B, SOS};

    #[test]
    fn metrics_truncate_at_the_first_eos() {
        // aNbN prompt "aaaaaaab" (ID) completed with 7 b's then EOS: grammatical.
        let mut seq = vec![SOS];
        seq.extend([A; 7]);
        seq.push(B);
        seq.extend([B; 6]);
        seq.push(EOS);
        seq.extend([A, A]); // after EOS: ignored
        let unfinished = vec![SOS, A, B, A];
        let m = metrics(Language::ANbN, &[seq, unfinished]);
        assert_eq!((m.n, m.finished_n), (2, 1));
        assert_eq!(m.finished, Some(0.5));
        assert_eq!(
            (m.rule1, m.rule2, m.grammatical, m.rule2_completion),
            (Some(1.0), Some(1.0), Some(1.0), Some(1.0))
        );
    }

    #[test]
    fn metrics_over_zero_finished_sequences_are_undefined_not_zero() {
        // baN prompts that never reach EOS: 0/0 for every rule rate.
        let unfinished = vec![vec![SOS, B, A, A, B]; 3];
        let m = metrics(Language::BaN, &unfinished);
        assert_eq!((m.n, m.finished_n, m.finished), (3, 0, Some(0.0)));
        assert_eq!(
            (m.rule1, m.rule2, m.rule2_completion, m.grammatical),
            (None, None, None, None)
        );
        assert!(m.has_undefined());
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["finished_n"], 0);
        assert_eq!(v["finished"], 0.0);
        for k in ["rule1", "rule2", "rule2_completion", "grammatical"] {
            assert!(v[k].is_null(), "{k}: {v}");
        }
        assert_eq!(serde_json::from_value::<Metrics>(v).unwrap(), m);
        // No sequences at all: even the finished fraction is undefined.
        let none = metrics(Language::BaN, &[]);
        assert_eq!((none.n, none.finished_n, none.finished), (0, 0, None));
        assert!(serde_json::to_value(none).unwrap()["finished"].is_null());
    }

    #[test]
    fn mixed_metrics_count_only_the_finished_sequences() {
        let s = |w: &[u8], end: bool| {
            let mut v = vec![SOS];
            v.extend_from_slice(w);
            if end {
                v.push(EOS);
                v.push(EOS);
            }
            v
        };
        let seqs = [
            s(&[B, A, A], true),     // R1, R2: grammatical
            s(&[B, A], true),        // R2 only
            s(&[A, A], true),        // R1 only
            s(&[B, A, A, B], false), // unfinished: not counted
        ];
        let m = metrics(Language::BaN, &seqs);
        assert_eq!((m.n, m.finished_n), (4, 3));
        assert_eq!(m.finished, Some(0.75));
        assert_eq!(m.rule1, Some(2.0 / 3.0));
        assert_eq!(m.rule2, Some(2.0 / 3.0));
        assert_eq!(m.grammatical, Some(1.0 / 3.0));
        assert!(!m.has_undefined());
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["finished_n"], 3);
        assert_eq!(v["rule1"], 2.0 / 3.0);
        assert_eq!(frac(0, 0), None);
        assert_eq!(frac(0, 5), Some(0.0));
    }

    #[test]
    fn summaries_written_before_undefined_rates_still_load() {
        // The old form: no finished_n, and 0.0 for a rate over zero finished sequences.
        let old = serde_json::json!({"n": 128, "finished": 0.0, "rule1": 0.0, "rule2": 0.0,
            "rule2_completion": 0.0, "grammatical": 0.0});
        let m: Metrics = serde_json::from_value(old).unwrap();
        assert_eq!(
            (m.n, m.finished_n, m.finished, m.rule1),
            (128, 0, Some(0.0), None)
        );
        let old = serde_json::json!({"n": 4, "finished": 0.75, "rule1": 0.5, "rule2": 0.25,
            "rule2_completion": 1.0, "grammatical": 0.25});
        let m: Metrics = serde_json::from_value(old).unwrap();
        assert_eq!((m.finished_n, m.rule1, m.rule2), (3, Some(0.5), Some(0.25)));
    }
}
