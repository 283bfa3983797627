//! Next-value prediction on binary streams of little-endian uint16 values.
//!
//! The file is memory-mapped ([`Stream`]), so a stream of 10⁹ values (2 GB) is read page by
//! page as windows are drawn, never loaded whole. The stream is cut into three contiguous
//! parts, train, validation and test, in that order; a window of `context + 1` values lies
//! inside one part, so no value is shared between the splits.
//!
//! Every accuracy is reported beside its chance level (top-k of K uniform classes is k/K),
//! the empirical unigram baseline (always predicting the k values most frequent in the
//! training part) measured on the same targets, and a 95 % Wilson confidence interval.

use crate::util::Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

#[cfg(target_endian = "big")]
compile_error!(
    "kiln reads uint16 files (little-endian) in place; big-endian hosts are not supported"
);

/// Errors of reading a uint16 stream.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be opened or mapped.
    #[error("cannot read the data file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A byte length that is not a whole number of uint16 values.
    #[error("the data file `{path}` has {bytes} bytes, not a multiple of 2: it is not a stream of uint16 values (2 bytes each, little-endian)")]
    OddSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Too few values for the splits and the context.
    #[error("{0}")]
    TooShort(String),
    /// A value the model cannot predict.
    #[error("the data file `{path}` holds the value {value} (first at index {index}), but the task's vocab is {vocab}: every value must be below vocab. Set `task.vocab` to at least {needed}")]
    VocabTooSmall {
        /// The file.
        path: PathBuf,
        /// The largest value.
        value: u16,
        /// Where it first occurs.
        index: usize,
        /// The task's vocab.
        vocab: u32,
        /// The smallest vocab that fits.
        needed: u32,
    },
}

/// A memory-mapped file of little-endian uint16 values.
pub struct Stream {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl Stream {
    /// Map `path`; fails on a missing file or a size that is not a multiple of 2.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        if bytes % 2 != 0 {
            return Err(DataError::OddSize {
                path: path.to_path_buf(),
                bytes,
            });
        }
        // SAFETY: the map is read-only; kiln never writes a file it is training on. A file
        // truncated by another process while mapped is outside what any mmap reader survives.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Stream {
            map,
            path: path.to_path_buf(),
        })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.map.len() / 2
    }

    /// Whether the stream holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The values, read in place: the map is page-aligned and the file little-endian like
    /// the host (big-endian hosts are refused at compile time).
    pub fn values(&self) -> &[u16] {
        bytemuck::cast_slice(&self.map[..])
    }

    /// Values `range` as token ids.
    pub fn ids(&self, range: Range<usize>) -> Vec<i64> {
        self.values()[range].iter().map(|&v| i64::from(v)).collect()
    }
}

/// The three contiguous parts of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training part (the start of the stream).
    pub train: Range<usize>,
    /// Validation part (after the training part).
    pub val: Range<usize>,
    /// Test part (the end of the stream).
    pub test: Range<usize>,
}

impl Splits {
    /// Cut `n` values: the last `test_fraction` for testing, the `val_fraction` before it for
    /// validation, the rest for training. Each part must hold at least one window of
    /// `window` values.
    pub fn new(
        n: usize,
        val_fraction: f64,
        test_fraction: f64,
        window: usize,
    ) -> Result<Self, DataError> {
        let n_test = (n as f64 * test_fraction).floor() as usize;
        let n_val = (n as f64 * val_fraction).floor() as usize;
        let n_train = n.saturating_sub(n_test + n_val);
        let s = Splits {
            train: 0..n_train,
            val: n_train..n_train + n_val,
            test: n_train + n_val..n,
        };
        for (name, r) in [
            ("training", &s.train),
            ("validation", &s.val),
            ("test", &s.test),
        ] {
            if r.len() < window {
                return Err(DataError::TooShort(format!(
                    "the {name} part of the stream holds {} values, fewer than one window of context + 1 = {window}; the file has {n} values. Use a longer file, a shorter `context`, or larger fractions",
                    r.len()
                )));
            }
        }
        Ok(s)
    }
}

/// Non-overlapping windows of `window` values inside `part`, at most `max` of them, spread
/// evenly over the part. Returns their start indices.
pub fn eval_windows(part: &Range<usize>, window: usize, max: usize) -> Vec<usize> {
    let count = part.len() / window;
    let take = count.min(max);
    (0..take)
        .map(|k| part.start + (k * count / take.max(1)) * window)
        .collect()
}

/// A uniformly random window start inside `part` for a window of `window` values.
pub fn random_window(part: &Range<usize>, window: usize, rng: &mut Rng) -> usize {
    let span = (part.len() - window + 1) as u64;
    part.start + (rng.next_u64() % span) as usize
}

/// What one pass over the file finds: the largest value (and where) and the histogram of the
/// training part.
pub struct Scan {
    /// Largest value in the whole file.
    pub max: u16,
    /// Index of its first occurrence.
    pub argmax: usize,
    /// Counts of each value in the training part.
    pub train_hist: Vec<u64>,
}

/// Scan the stream once (streaming, no copy).
pub fn scan(stream: &Stream, train: &Range<usize>) -> Scan {
    let values = stream.values();
    let hist = histogram(&values[train.clone()]);
    // One pass for the largest value and its first index.
    let (mut max, mut argmax) = (0u16, 0usize);
    for (i, &v) in values.iter().enumerate() {
        if v > max {
            max = v;
            argmax = i;
        }
    }
    Scan {
        max,
        argmax,
        train_hist: hist,
    }
}

/// Counts of each of the 65 536 values.
pub fn histogram(values: &[u16]) -> Vec<u64> {
    let mut hist = vec![0u64; 65536];
    for &v in values {
        hist[usize::from(v)] += 1;
    }
    hist
}

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

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kiln-u16-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_little_endian_values() {
        let p = write("le", &[1, 0, 0, 1, 0xff, 0xff]);
        let s = Stream::open(&p).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.ids(0..3), vec![1, 256, 65535]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn odd_sizes_and_missing_files_are_errors() {
        let p = write("odd", &[1, 0, 2]);
        let e = Stream::open(&p).err().unwrap().to_string();
        assert!(e.contains("3 bytes, not a multiple of 2"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = Stream::open(&p).err().unwrap().to_string();
        assert!(e.contains("cannot read the data file"), "{e}");
    }

    #[test]
    fn splits_are_contiguous_and_windows_stay_inside_them() {
        let s = Splits::new(1000, 0.1, 0.2, 11).unwrap();
        assert_eq!(s.train, 0..700);
        assert_eq!(s.val, 700..800);
        assert_eq!(s.test, 800..1000);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let w = random_window(&s.train, 11, &mut rng);
            assert!(w + 11 <= s.train.end);
        }
        let ws = eval_windows(&s.test, 11, 1000);
        assert_eq!(ws.len(), 200 / 11);
        for pair in ws.windows(2) {
            assert!(pair[0] + 11 <= pair[1], "windows overlap");
        }
        assert!(ws.iter().all(|&w| w >= 800 && w + 11 <= 1000));
        let few = eval_windows(&s.test, 11, 3);
        assert_eq!(few.len(), 3);
        assert!(Splits::new(100, 0.05, 0.05, 11)
            .unwrap_err()
            .to_string()
            .contains("validation part"));
    }

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
