//! Test streams (`kiln data generate`) and the analysis of a stream (`kiln data analyze`).

use super::{histogram, most_frequent, Stream};
use crate::util::Rng;
use serde::{Deserialize, Serialize};

/// A generator of test streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// A six-sided die with faces 0..5 of probabilities 0.35, 0.25, 0.15, 0.10, 0.10, 0.05:
    /// learnable down to its entropy (top-1 0.35 at best).
    BiasedDie,
    /// A fair six-sided die: nothing to learn (top-1 1/6 at best).
    FairDie,
    /// A linear congruential sequence x ← (5x + 3) mod 64, period 64: fully predictable from
    /// one previous value.
    Prng,
}

/// `n` values of `kind` from `seed`.
pub fn generate(kind: Generator, n: usize, seed: u64) -> Vec<u16> {
    let mut rng = Rng::new(seed);
    match kind {
        Generator::BiasedDie => {
            let cdf = [0.35, 0.60, 0.75, 0.85, 0.95, 1.0];
            (0..n)
                .map(|_| {
                    let u = rng.uniform();
                    cdf.iter().position(|&c| u < c).unwrap_or(5) as u16
                })
                .collect()
        }
        Generator::FairDie => (0..n).map(|_| (rng.next_u64() % 6) as u16).collect(),
        Generator::Prng => {
            let mut x = rng.next_u64() % 64;
            (0..n)
                .map(|_| {
                    x = (5 * x + 3) % 64;
                    x as u16
                })
                .collect()
        }
    }
}

/// Little-endian bytes of `values`.
pub fn to_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// What `kiln data analyze` finds in a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    /// Number of values.
    pub values: usize,
    /// Distinct values.
    pub distinct: usize,
    /// Smallest value.
    pub min: u16,
    /// Largest value.
    pub max: u16,
    /// The most frequent values with their share, most frequent first (at most 10).
    pub top: Vec<(u16, f64)>,
    /// Entropy of the value distribution, bits.
    pub entropy_bits: f64,
    /// log2(distinct): the entropy if the values present were uniform.
    pub max_entropy_bits: f64,
    /// Conditional entropy H(x_t | x_{t-1}) from bigram counts, bits (when distinct ≤ 4096).
    pub conditional_entropy_bits: Option<f64>,
    /// Autocorrelation of the values at lags 1..=lags (over the analysed prefix).
    pub autocorrelation: Vec<f64>,
    /// |r| above this is significant at about 95 % for white noise (2/√n).
    pub autocorrelation_threshold: f64,
    /// Values used for autocorrelation and periodogram (a prefix of at most 2^20).
    pub prefix: usize,
    /// Strongest periodogram peaks: (period in steps, share of the total power).
    pub peaks: Vec<(f64, f64)>,
    /// A one-line reading of the numbers.
    pub verdict: String,
}

/// Analyse a stream: histogram, entropy, conditional entropy, autocorrelation and a
/// periodogram (rustfft) of a prefix of at most 2^20 values.
pub fn analyze(stream: &Stream, lags: usize) -> Analysis {
    let n = stream.len();
    let hist = histogram(stream.values());
    let present: Vec<usize> = (0..65536).filter(|&v| hist[v] > 0).collect();
    let distinct = present.len();
    let p = |c: u64| c as f64 / n.max(1) as f64;
    let entropy_bits: f64 = present
        .iter()
        .map(|&v| {
            let q = p(hist[v]);
            -q * q.log2()
        })
        .sum();
    let top: Vec<(u16, f64)> = most_frequent(&hist, 10)
        .into_iter()
        .map(|v| (v as u16, p(hist[v])))
        .collect();
    // H(x_t | x_{t-1}) = H(x_{t-1}, x_t) − H(x_{t-1}), from bigram counts.
    let conditional_entropy_bits = (distinct <= 4096 && n >= 2).then(|| {
        let mut index = vec![0usize; 65536];
        for (i, &v) in present.iter().enumerate() {
            index[v] = i;
        }
        let mut pairs = vec![0u64; distinct * distinct];
        let mut firsts = vec![0u64; distinct];
        for w in stream.values().windows(2) {
            let (a, b) = (index[usize::from(w[0])], index[usize::from(w[1])]);
            pairs[a * distinct + b] += 1;
            firsts[a] += 1;
        }
        let m = (n - 1) as f64;
        let h = |counts: &[u64]| -> f64 {
            counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let q = c as f64 / m;
                    -q * q.log2()
                })
                .sum()
        };
        (h(&pairs) - h(&firsts)).max(0.0)
    });
    let prefix = n.min(1 << 20);
    let xs: Vec<f64> = stream
        .ids(0..prefix)
        .into_iter()
        .map(|v| v as f64)
        .collect();
    let mean = xs.iter().sum::<f64>() / prefix.max(1) as f64;
    let centred: Vec<f64> = xs.iter().map(|x| x - mean).collect();
    let var: f64 = centred.iter().map(|x| x * x).sum();
    let autocorrelation: Vec<f64> = (1..=lags.min(prefix.saturating_sub(1)))
        .map(|lag| {
            if var == 0.0 {
                return 0.0;
            }
            centred
                .iter()
                .zip(&centred[lag..])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / var
        })
        .collect();
    let peaks = periodogram_peaks(&centred, 5);
    let autocorrelation_threshold = 2.0 / (prefix.max(1) as f64).sqrt();
    let mut reasons = Vec::new();
    if max_entropy_gap(entropy_bits, distinct) > 0.05 {
        reasons.push(format!(
            "the values are not uniform ({entropy_bits:.3} of {:.3} bits)",
            (distinct.max(1) as f64).log2()
        ));
    }
    if let Some(h) = conditional_entropy_bits {
        if entropy_bits - h > 0.05 {
            reasons.push(format!(
                "the previous value tells {:.3} bits about the next",
                entropy_bits - h
            ));
        }
    }
    if autocorrelation
        .iter()
        .any(|r| r.abs() > autocorrelation_threshold)
    {
        reasons.push("autocorrelation is significant at some lag".into());
    }
    if peaks.first().is_some_and(|&(_, share)| share > 0.05) {
        reasons.push(format!(
            "the periodogram has a strong peak at period {:.2}",
            peaks[0].0
        ));
    }
    let verdict = if distinct <= 1 {
        "constant: trivially predictable".to_string()
    } else if reasons.is_empty() {
        "no structure found: a model is unlikely to beat the unigram baseline".to_string()
    } else {
        format!("predictable: {}", reasons.join("; "))
    };
    Analysis {
        values: n,
        distinct,
        min: present.first().map_or(0, |&v| v as u16),
        max: present.last().map_or(0, |&v| v as u16),
        top,
        entropy_bits,
        max_entropy_bits: (distinct.max(1) as f64).log2(),
        conditional_entropy_bits,
        autocorrelation,
        autocorrelation_threshold,
        prefix,
        peaks,
        verdict,
    }
}

fn max_entropy_gap(entropy: f64, distinct: usize) -> f64 {
    (distinct.max(1) as f64).log2() - entropy
}

/// The `count` strongest periodogram bins of a mean-removed series (excluding frequency 0),
/// as (period, share of the total power).
fn periodogram_peaks(centred: &[f64], count: usize) -> Vec<(f64, f64)> {
    use rustfft::num_complex::Complex;
    let n = centred.len();
    if n < 4 {
        return Vec::new();
    }
    let mut buf: Vec<Complex<f64>> = centred.iter().map(|&x| Complex::new(x, 0.0)).collect();
    rustfft::FftPlanner::new()
        .plan_fft_forward(n)
        .process(&mut buf);
    let power: Vec<f64> = buf[1..=n / 2].iter().map(|c| c.norm_sqr()).collect();
    let total: f64 = power.iter().sum();
    if total == 0.0 {
        return Vec::new();
    }
    let mut bins: Vec<usize> = (0..power.len()).collect();
    bins.sort_by(|&a, &b| power[b].total_cmp(&power[a]).then(a.cmp(&b)));
    bins.into_iter()
        .take(count)
        .map(|i| (n as f64 / (i + 1) as f64, power[i] / total))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_have_their_statistics() {
        let n = 60_000;
        let die = generate(Generator::BiasedDie, n, 1);
        let zeros = die.iter().filter(|&&v| v == 0).count() as f64 / n as f64;
        assert!((zeros - 0.35).abs() < 0.01, "{zeros}");
        assert!(die.iter().all(|&v| v < 6));
        let fair = generate(Generator::FairDie, n, 1);
        for face in 0..6 {
            let f = fair.iter().filter(|&&v| v == face).count() as f64 / n as f64;
            assert!((f - 1.0 / 6.0).abs() < 0.01);
        }
        let prng = generate(Generator::Prng, 200, 1);
        assert_eq!(prng[..64], prng[64..128], "period 64");
        let mut seen = prng[..64].to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 64, "full period");
    }

    #[test]
    fn analysis_tells_structure_from_noise() {
        let dir = std::env::temp_dir();
        let run = |kind, name| {
            let p = dir.join(format!("kiln-u16-an-{name}-{}", std::process::id()));
            std::fs::write(&p, to_bytes(&generate(kind, 65_536, 3))).unwrap();
            let a = analyze(&Stream::open(&p).unwrap(), 8);
            std::fs::remove_file(p).unwrap();
            a
        };
        let fair = run(Generator::FairDie, "fair");
        assert!(fair.verdict.starts_with("no structure"), "{}", fair.verdict);
        assert!((fair.entropy_bits - 6f64.log2()).abs() < 0.01);
        let die = run(Generator::BiasedDie, "die");
        assert!(die.verdict.starts_with("predictable"), "{}", die.verdict);
        let prng = run(Generator::Prng, "prng");
        assert!(prng.conditional_entropy_bits.unwrap() < 1e-9);
        assert!((prng.entropy_bits - 6.0).abs() < 0.01);
        assert!(prng.verdict.contains("previous value"), "{}", prng.verdict);
        // Period 64 shows up as the strongest peak at a divisor of 64.
        let period = prng.peaks[0].0;
        assert!(
            (64.0 / period - (64.0 / period).round()).abs() < 1e-6,
            "{period}"
        );
    }
}
