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

mod analysis;
mod metrics;

pub use analysis::{analyze, generate, to_bytes, Analysis, Generator};
pub use metrics::{most_frequent, wilson, Accuracy, StreamMetrics, TopK};

use crate::util::Rng;
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
        let (n_train, n_val, _) = crate::tasks::split_lengths(n, val_fraction, test_fraction);
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
}
