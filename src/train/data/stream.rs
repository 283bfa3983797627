//! The data of a uint16 stream task.

use crate::runtime::Runtime;
use crate::spec::recipe::Task;
use crate::tasks::uint16::{self, Splits, Stream, StreamMetrics};
use crate::train::TrainError;
use std::path::Path;

/// The data of a uint16 stream task: the mapped file and its splits.
pub struct StreamData {
    /// The mapped file.
    pub stream: Stream,
    /// Train, validation and test parts.
    pub splits: Splits,
    /// Values the model reads.
    pub context: usize,
    /// Number of classes.
    pub vocab: usize,
    /// Histogram of the training part (for the unigram baseline).
    pub train_hist: Vec<u64>,
    /// Most windows for validation and test.
    pub eval_windows: usize,
}

impl StreamData {
    /// Map the file (its path as given: the command line resolves it against the recipe's
    /// folder), cut it, and check every value fits the vocabulary (one streaming pass).
    pub fn open(task: &Task) -> Result<Option<Self>, TrainError> {
        let Task::Uint16 {
            path,
            vocab,
            context,
            val_fraction,
            test_fraction,
            eval_windows,
        } = task
        else {
            return Ok(None);
        };
        let stream = Stream::open(Path::new(path))?;
        let context = *context as usize;
        let splits = Splits::new(stream.len(), *val_fraction, *test_fraction, context + 1)?;
        let scan = uint16::scan(&stream, &splits.train);
        if u32::from(scan.max) >= *vocab {
            return Err(uint16::DataError::VocabTooSmall {
                path: stream.path().to_path_buf(),
                value: scan.max,
                index: scan.argmax,
                vocab: *vocab,
                needed: u32::from(scan.max) + 1,
            }
            .into());
        }
        Ok(Some(StreamData {
            stream,
            splits,
            context,
            vocab: *vocab as usize,
            train_hist: scan.train_hist,
            eval_windows: *eval_windows as usize,
        }))
    }

    pub(super) fn windows(&self, part: &std::ops::Range<usize>) -> (Vec<Vec<i64>>, usize) {
        let w = self.context + 1;
        let starts = uint16::eval_windows(part, w, self.eval_windows);
        let n = starts.len();
        (
            starts
                .into_iter()
                .map(|s| self.stream.ids(s..s + w))
                .collect(),
            n,
        )
    }

    /// Test metrics: top-1 and top-5 accuracy over every position of the test windows, with
    /// chance, the unigram baseline and 95 % intervals.
    pub fn report(&self, rt: &Runtime) -> StreamMetrics {
        let ks: Vec<usize> = [1, 5].into_iter().filter(|&k| k < self.vocab).collect();
        let mut top = uint16::TopK::new(&ks, &self.train_hist);
        let (seqs, n) = self.windows(&self.splits.test);
        // Keep each chunk's logits under ~64 MiB.
        let per_seq = self.context * self.vocab;
        let chunk = (16_000_000 / per_seq.max(1)).clamp(1, 256);
        for batch in seqs.chunks(chunk) {
            let (x, _) = crate::train::split_xy(batch, &rt.device);
            let logits = rt.forward(x, false);
            let flat: Vec<f32> = logits
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 logits");
            for (b, seq) in batch.iter().enumerate() {
                for t in 0..self.context {
                    let at = (b * self.context + t) * self.vocab;
                    top.add(&flat[at..at + self.vocab], seq[t + 1] as usize);
                }
            }
        }
        top.finish(self.vocab, n)
    }
}
