//! The data of a text task.

use crate::runtime::Runtime;
use crate::spec::recipe::Task;
use crate::tasks::text::metrics::{self, TextMetrics};
use crate::tasks::text::ngram::{KneserNey, Unigram};
use crate::tasks::text::{self, Corpus, Part};
use crate::tasks::uint16;
use crate::train::TrainError;

/// The data of a text task: the token parts and what the report needs.
pub struct TextData {
    /// The tokens, parts and tokenizer.
    pub corpus: Corpus,
    /// Tokens the model reads.
    pub context: usize,
    /// Most windows for validation and test.
    pub eval_windows: usize,
    /// Order of the Kneser-Ney baseline.
    pub ngram_order: usize,
    /// Most training tokens it is fitted on.
    pub ngram_tokens: usize,
}

impl TextData {
    /// Open the task's tokens (tokenizing the corpus into the cache when needed).
    pub fn open(task: &Task) -> Result<Option<Self>, TrainError> {
        let Task::Text(t) = task else {
            return Ok(None);
        };
        let corpus = text::open(t, &text::cache::cache_dir())?;
        Ok(Some(TextData {
            corpus,
            context: t.context as usize,
            eval_windows: t.eval_windows as usize,
            ngram_order: t.ngram_order as usize,
            ngram_tokens: t.ngram_tokens.min(usize::MAX as u64) as usize,
        }))
    }

    /// A random training window of context + 1 ids.
    pub(super) fn train_window(&self, rng: &mut crate::util::Rng) -> Vec<i64> {
        let p = &self.corpus.train;
        let w = self.context + 1;
        let start = uint16::random_window(&(0..p.len()), w, rng);
        p.ids(start, w)
    }

    /// Non-overlapping evaluation windows of `part` (at most `eval_windows`, spread evenly).
    pub(super) fn windows(&self, part: &Part) -> Vec<Vec<i64>> {
        let w = self.context + 1;
        uint16::eval_windows(&(0..part.len()), w, self.eval_windows)
            .into_iter()
            .map(|s| part.ids(s, w))
            .collect()
    }

    /// Test metrics: the model's loss at every position of the test windows beside the
    /// unigram and Kneser-Ney baselines fitted on the training part.
    pub fn report(&self, rt: &Runtime) -> TextMetrics {
        let seqs = self.windows(&self.corpus.test);
        // Keep each chunk's logits under ~64 MiB.
        let per_seq = self.context * self.corpus.vocab;
        let chunk = (16_000_000 / per_seq.max(1)).clamp(1, 256);
        let mut model = Vec::with_capacity(seqs.len());
        for batch in seqs.chunks(chunk) {
            let (x, y) = crate::train::split_xy(batch, &rt.device);
            let logits = rt.forward(x, false);
            let nll = crate::runtime::fused::cross_entropy(logits, y, 0.0)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 losses");
            model.extend(
                nll.chunks(self.context)
                    .map(|r| r.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>()),
            );
        }
        let (kn, unigram) = self.baselines();
        let windows: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| s.iter().map(|&v| v as u32).collect())
            .collect();
        let unit = match (&self.corpus.tokenizer, self.corpus.units_per_token) {
            (Some(t), Some(_)) => t.unit(),
            _ => "token",
        };
        metrics::score(
            &windows,
            &model,
            &unigram,
            &kn,
            unit,
            self.corpus.units_per_token,
        )
    }

    /// The baselines, fitted on (the start of) the training part.
    pub fn baselines(&self) -> (KneserNey, Unigram) {
        let p = &self.corpus.train;
        let n = p.len().min(self.ngram_tokens);
        let tokens = p.tokens.slice(p.range.start..p.range.start + n);
        let unigram = Unigram::fit(p.range.clone().map(|i| p.tokens.get(i)), self.corpus.vocab);
        let order = self.ngram_order.clamp(1, 5);
        (
            KneserNey::fit(&tokens, order, self.corpus.vocab, None),
            unigram,
        )
    }
}
