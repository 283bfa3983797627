//! The data of a task as token-id sequences for training, validation and the final metrics.
//!
//! A sequence holds `L + 1` ids: the model reads the first `L` and predicts the last `L`.

mod forecast;
mod grammar;
mod seq2seq;
mod stream;
mod text;

pub use forecast::ForecastData;
pub use grammar::GrammarData;
pub use seq2seq::Seq2seqData;
pub use stream::StreamData;
pub use text::TextData;

use super::TrainError;
use crate::runtime::Runtime;
use crate::spec::recipe::Task;
use crate::tasks::grammar::Metrics;
use crate::tasks::uint16::{self, StreamMetrics};
use crate::util::Rng;
use serde::{Deserialize, Serialize};

/// One training batch: token sequences, or a forecasting task's windows.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Token sequences of L + 1 ids.
    Tokens(Vec<Vec<i64>>),
    /// Windows: inputs `[rows, lookback, channels]` and targets `[rows, horizon,
    /// channels]`, flat, with their shapes.
    Series {
        /// Inputs.
        x: Vec<f32>,
        /// Targets.
        y: Vec<f32>,
        /// Shape of `x`.
        x_dims: [usize; 3],
        /// Shape of `y`.
        y_dims: [usize; 3],
    },
}

/// A task's data.
pub enum Data {
    /// A rule-extrapolation grammar.
    Grammar(GrammarData),
    /// A uint16 stream.
    Stream(StreamData),
    /// Sequence-to-sequence pairs.
    Seq2seq(Seq2seqData),
    /// A forecasting series.
    Forecast(ForecastData),
    /// Real text.
    Text(Box<TextData>),
}

impl Data {
    /// The data of the recipe's task.
    pub fn new(task: &Task, seed: u64) -> Result<Self, TrainError> {
        Ok(match task {
            Task::Grammar { .. } => {
                Data::Grammar(GrammarData::new(task, seed).expect("a grammar task"))
            }
            Task::Uint16 { .. } => Data::Stream(StreamData::open(task)?.expect("a uint16 task")),
            Task::Seq2seq { .. } => {
                Data::Seq2seq(Seq2seqData::new(task, seed).expect("a seq2seq task"))
            }
            Task::Forecast(_) => {
                Data::Forecast(ForecastData::open(task)?.expect("a forecast task"))
            }
            Task::Text(_) => Data::Text(Box::new(TextData::open(task)?.expect("a text task"))),
        })
    }

    /// Batches per epoch at batch size `bs`: a pass over the training words, or over the
    /// training part of a stream in windows of `context` values.
    pub fn per_epoch(&self, bs: usize) -> u64 {
        let n = match self {
            Data::Grammar(g) => g.train.len() / bs,
            Data::Seq2seq(g) => g.train.len() / bs,
            Data::Forecast(f) => f.starts[0].len() / bs,
            Data::Stream(s) => s.splits.train.len() / (bs * s.context),
            Data::Text(t) => t.corpus.train.len() / (bs * t.context),
        };
        n.max(1) as u64
    }

    /// The effective batch size for a requested `bs` (a grammar's training set may be smaller).
    pub fn batch_size(&self, bs: usize) -> usize {
        match self {
            Data::Grammar(g) => bs.min(g.train.len()).max(1),
            Data::Seq2seq(g) => bs.min(g.train.len()).max(1),
            Data::Forecast(f) => bs.min(f.starts[0].len()).max(1),
            Data::Stream(_) | Data::Text(_) => bs.max(1),
        }
    }

    /// The next training batch. Grammars, seq2seq pairs and forecasting windows walk a
    /// per-epoch shuffle (the position is part of the state); streams draw random windows of
    /// the training part from (seed, step, micro).
    pub fn train_batch(
        &mut self,
        state: &mut super::State,
        seed: u64,
        micro: u64,
        bs: usize,
    ) -> Batch {
        Batch::Tokens(match self {
            Data::Grammar(g) => shuffled_batch(
                &g.train,
                (&mut g.order, &mut g.order_epoch),
                state,
                seed,
                bs,
            ),
            Data::Seq2seq(g) => shuffled_batch(
                &g.train,
                (&mut g.order, &mut g.order_epoch),
                state,
                seed,
                bs,
            ),
            Data::Forecast(f) => {
                let t0 = shuffled_batch(
                    &f.starts[0],
                    (&mut f.order, &mut f.order_epoch),
                    state,
                    seed,
                    bs,
                );
                return f.batch(&t0);
            }
            Data::Stream(s) => {
                let w = s.context + 1;
                let mut rng = Rng::new(super::mix(seed ^ 0xDA7A, state.step, micro));
                (0..bs)
                    .map(|_| {
                        let start = uint16::random_window(&s.splits.train, w, &mut rng);
                        s.stream.ids(start..start + w)
                    })
                    .collect()
            }
            Data::Text(t) => {
                let mut rng = Rng::new(super::mix(seed ^ 0xDA7A, state.step, micro));
                (0..bs).map(|_| t.train_window(&mut rng)).collect()
            }
        })
    }

    /// The validation loss of a model: cross-entropy over the validation sequences, or a
    /// forecasting task's MSE over its validation windows.
    pub fn val_loss(&self, rt: &Runtime, bs: usize) -> f64 {
        match self {
            Data::Forecast(f) => f.mse(rt, &f.starts[1], bs),
            _ => super::eval_loss(rt, &self.val(), bs),
        }
    }

    /// The validation sequences (none for a forecasting task).
    fn val(&self) -> std::borrow::Cow<'_, [Vec<i64>]> {
        match self {
            Data::Grammar(g) => std::borrow::Cow::Borrowed(&g.val),
            Data::Seq2seq(g) => std::borrow::Cow::Borrowed(&g.val),
            Data::Forecast(_) => std::borrow::Cow::Owned(Vec::new()),
            Data::Stream(s) => std::borrow::Cow::Owned(s.windows(&s.splits.val).0),
            Data::Text(t) => std::borrow::Cow::Owned(t.windows(&t.corpus.val)),
        }
    }

    /// The task's metrics for a model.
    /// The report computed at every evaluation of a run: a grammar task's (see
    /// [`crate::train::history`]); `None` for the other tasks, whose reports are final only.
    pub fn evaluation_report(&self, rt: &Runtime) -> Option<TaskReport> {
        match self {
            Data::Grammar(g) => Some(TaskReport::Grammar(g.report(rt))),
            Data::Stream(_) | Data::Seq2seq(_) | Data::Forecast(_) | Data::Text(_) => None,
        }
    }

    pub fn report(&self, rt: &Runtime) -> TaskReport {
        match self {
            Data::Grammar(g) => TaskReport::Grammar(g.report(rt)),
            Data::Stream(s) => TaskReport::Uint16(s.report(rt)),
            Data::Seq2seq(s) => TaskReport::Seq2seq(s.report(rt)),
            Data::Forecast(f) => TaskReport::Forecast(f.report(rt)),
            Data::Text(t) => TaskReport::Text(t.report(rt)),
        }
    }
}

/// The next batch of a per-epoch shuffle of `train` (the position is part of the state;
/// `order` caches the shuffle of one epoch).
fn shuffled_batch<T: Clone>(
    train: &[T],
    (order, order_epoch): (&mut Vec<usize>, &mut Option<u64>),
    state: &mut super::State,
    seed: u64,
    bs: usize,
) -> Vec<T> {
    if state.pos + bs > train.len() {
        state.epoch += 1;
        state.pos = 0;
    }
    if *order_epoch != Some(state.epoch) {
        *order = epoch_order(train.len(), seed, state.epoch);
        *order_epoch = Some(state.epoch);
    }
    let batch = order[state.pos..state.pos + bs]
        .iter()
        .map(|&i| train[i].clone())
        .collect();
    state.pos += bs;
    batch
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(super::mix(seed, 0xE90C, epoch));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// A task's metrics, tagged by task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TaskReport {
    /// Rule extrapolation on a grammar.
    Grammar(GrammarReport),
    /// Next-value prediction on a uint16 stream.
    Uint16(StreamMetrics),
    /// Sequence-to-sequence transduction.
    Seq2seq(crate::tasks::seq2seq::Seq2seqReport),
    /// Forecasting.
    Forecast(crate::tasks::forecast::ForecastReport),
    /// Language modelling on text.
    Text(crate::tasks::text::metrics::TextMetrics),
}

/// Grammar metrics with chance levels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrammarReport {
    /// In-distribution prompts.
    pub id: Metrics,
    /// Out-of-distribution prompts.
    pub ood: Metrics,
    /// The authors' chance level of OOD R1.
    pub chance_ood_r1: f64,
    /// Chance level of OOD R2 completion.
    pub chance_ood_r2_completion: f64,
    /// The length (SOS and prompt included) at which the greedy completions stop: those
    /// without EOS by then are unfinished. 0 in summaries written before it was recorded.
    #[serde(default)]
    pub decode_max_length: usize,
}
