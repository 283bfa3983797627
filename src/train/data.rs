//! The data of a task as token-id sequences for training, validation and the final metrics.
//!
//! A sequence holds `L + 1` ids: the model reads the first `L` and predicts the last `L`.

use super::TrainError;
use crate::runtime::Runtime;
use crate::spec::recipe::{Language, Task};
use crate::tasks::grammar::{self, Metrics};
use crate::tasks::uint16::{self, Splits, Stream, StreamMetrics};
use crate::util::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The data of a grammar task, encoded as token ids.
pub struct GrammarData {
    /// The language.
    pub language: Language,
    /// `max_length` of the task.
    pub max_length: usize,
    /// Training sequences (`SOS w EOS PAD…`, length max_length + 2).
    pub train: Vec<Vec<i64>>,
    /// Validation sequences.
    pub val: Vec<Vec<i64>>,
    /// In-distribution prompts (starting with SOS).
    pub id_prompts: Vec<Vec<i64>>,
    /// Out-of-distribution prompts.
    pub ood_prompts: Vec<Vec<i64>>,
    /// The shuffled order of the training set in `order_epoch`.
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl GrammarData {
    /// Generate the data of a grammar task from `seed`; `None` for another kind of task.
    pub fn new(task: &Task, seed: u64) -> Option<Self> {
        let Task::Grammar {
            language,
            max_length,
            num_train,
            num_val,
            ..
        } = task
        else {
            return None;
        };
        let ml = *max_length as usize;
        let default_train = match language {
            Language::BaN | Language::BbaN => 15000,
            _ => 512,
        };
        let mut rng = Rng::new(seed ^ 0x5EED_DA7A);
        let enc = |ws: Vec<Vec<u8>>| -> Vec<Vec<i64>> {
            ws.iter()
                .map(|w| grammar::encode(w, ml).into_iter().map(i64::from).collect())
                .collect()
        };
        let train = enc(grammar::words(
            *language,
            ml,
            num_train.map_or(default_train, |n| n as usize),
            &mut rng,
        ));
        let val = enc(grammar::words(*language, ml, *num_val as usize, &mut rng));
        let (id, ood) = grammar::prompts(*language, &mut rng);
        let ids = |v: Vec<Vec<u8>>| {
            v.into_iter()
                .map(|p| p.into_iter().map(i64::from).collect())
                .collect()
        };
        Some(GrammarData {
            language: *language,
            max_length: ml,
            train,
            val,
            id_prompts: ids(id),
            ood_prompts: ids(ood),
            order: Vec::new(),
            order_epoch: None,
        })
    }

    /// Decoding settings of this task: the recipe's `decode` with the grammar's EOS and PAD,
    /// and sequences of at most `max_length` tokens (SOS and prompt included).
    pub fn settings(&self, d: &crate::spec::recipe::Decode) -> crate::decode::Settings {
        crate::decode::Settings {
            d: d.clone(),
            eos: Some(d.eos_token_id.map_or(i64::from(grammar::EOS), i64::from)),
            pad: d.pad_token_id.map_or(i64::from(grammar::PAD), i64::from),
            default_max_length: self.max_length,
            source_len: 0,
        }
    }

    /// The decoding settings of the metrics: greedy, whatever the recipe's `decode` says,
    /// as the reference evaluates.
    fn metrics_settings(&self) -> crate::decode::Settings {
        self.settings(&crate::spec::recipe::Decode::default())
    }

    /// The length (SOS and prompt included) at which the metrics' completions stop.
    pub fn metrics_max_length(&self) -> usize {
        let prompt_len = self.id_prompts.first().map_or(0, Vec::len);
        self.metrics_settings().max_length(prompt_len)
    }

    /// ID and OOD metrics of greedy completions (batched, with a KV cache where the model
    /// allows one), as the reference computes them.
    pub fn metrics(&self, rt: &Runtime) -> (Metrics, Metrics) {
        let settings = self.metrics_settings();
        let run = |prompts: &[Vec<i64>]| {
            let mut out = Vec::new();
            for chunk in prompts.chunks(256) {
                let mut lm = crate::decode::ModelLm::new(rt, true);
                let gen = crate::decode::generate(&mut lm, chunk, &settings);
                out.extend(gen.into_iter().map(|mut g| g.remove(0).tokens));
            }
            let seqs: Vec<Vec<u8>> = out
                .iter()
                .map(|s| s.iter().map(|&t| t as u8).collect())
                .collect();
            grammar::metrics(self.language, &seqs)
        };
        (run(&self.id_prompts), run(&self.ood_prompts))
    }

    /// The report of a model: metrics with the chance levels.
    pub fn report(&self, rt: &Runtime) -> GrammarReport {
        let (id, ood) = self.metrics(rt);
        let (c1, c2) = grammar::chance(self.language);
        GrammarReport {
            id,
            ood,
            chance_ood_r1: c1,
            chance_ood_r2_completion: c2,
            decode_max_length: self.metrics_max_length(),
        }
    }
}

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

    fn windows(&self, part: &std::ops::Range<usize>) -> (Vec<Vec<i64>>, usize) {
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
            let (x, _) = super::split_xy(batch, &rt.device);
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

/// The data of a sequence-to-sequence task: rows of source then target (see
/// [`crate::tasks::seq2seq`]).
pub struct Seq2seqData {
    problem: crate::spec::recipe::Problem,
    symbols: u32,
    max_length: usize,
    /// Training rows.
    pub train: Vec<Vec<i64>>,
    /// Validation rows.
    pub val: Vec<Vec<i64>>,
    /// Test words.
    pub test: Vec<Vec<i64>>,
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl Seq2seqData {
    /// Generate the data of a seq2seq task from `seed`; `None` for another kind of task.
    pub fn new(task: &Task, seed: u64) -> Option<Self> {
        use crate::tasks::seq2seq::{row, words};
        let Task::Seq2seq {
            problem,
            symbols,
            min_length,
            max_length,
            num_train,
            num_val,
            num_test,
            ..
        } = task
        else {
            return None;
        };
        let (lo, hi) = (*min_length as usize, *max_length as usize);
        let mut rng = Rng::new(seed ^ 0x5E92_5E95);
        let mut make = |n: u32| words(n as usize, *symbols, lo, hi, &mut rng);
        let rows = |ws: Vec<Vec<i64>>| ws.iter().map(|w| row(*problem, w, hi)).collect();
        let train = rows(make(*num_train));
        let val = rows(make(*num_val));
        let test = make(*num_test);
        Some(Seq2seqData {
            problem: *problem,
            symbols: *symbols,
            max_length: hi,
            train,
            val,
            test,
            order: Vec::new(),
            order_epoch: None,
        })
    }

    /// Vocabulary size (symbols and the three special ids).
    pub fn vocab(&self) -> i64 {
        i64::from(self.symbols) + crate::tasks::seq2seq::FIRST
    }

    /// Decoding settings: the recipe's `decode` with this task's EOS and PAD, the source
    /// excluded from lengths, and targets of at most max_length + 2 tokens.
    pub fn settings(&self, d: &crate::spec::recipe::Decode) -> crate::decode::Settings {
        use crate::tasks::seq2seq::{EOS, PAD};
        crate::decode::Settings {
            d: d.clone(),
            eos: Some(d.eos_token_id.map_or(EOS, i64::from)),
            pad: d.pad_token_id.map_or(PAD, i64::from),
            default_max_length: 2 * self.max_length + 2,
            source_len: self.max_length,
        }
    }

    /// Exact match of greedy decoding (cached where the model allows) and teacher-forced
    /// token accuracy on the test words.
    pub fn report(&self, rt: &Runtime) -> crate::tasks::seq2seq::Seq2seqReport {
        use crate::tasks::seq2seq::{is_exact, row, source, BOS, PAD};
        let settings = self.settings(&crate::spec::recipe::Decode::default());
        let mut exact = 0;
        let (mut right, mut counted) = (0usize, 0usize);
        for chunk in self.test.chunks(256) {
            let prompts: Vec<Vec<i64>> = chunk
                .iter()
                .map(|w| {
                    let mut p = source(w, self.max_length);
                    p.push(BOS);
                    p
                })
                .collect();
            let mut lm = crate::decode::ModelLm::new(rt, true);
            let gen = crate::decode::generate(&mut lm, &prompts, &settings);
            for (w, g) in chunk.iter().zip(gen) {
                exact += usize::from(is_exact(self.problem, w, &g[0].tokens, self.max_length));
            }
            let rows: Vec<Vec<i64>> = chunk
                .iter()
                .map(|w| row(self.problem, w, self.max_length))
                .collect();
            let (x, _) = super::split_xy(&rows, &rt.device);
            let logits = rt.forward(x, false);
            let [_, s, v] = logits.dims();
            let flat: Vec<f32> = logits
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 logits");
            for (b, r) in rows.iter().enumerate() {
                // Position t of the logits predicts target id t + 1.
                let target = &r[self.max_length..];
                for t in 0..s {
                    let want = target[t + 1];
                    if want == PAD {
                        break;
                    }
                    let row = &flat[(b * s + t) * v..(b * s + t + 1) * v];
                    let arg = (0..v)
                        .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                        .unwrap_or(0);
                    right += usize::from(arg as i64 == want);
                    counted += 1;
                }
            }
        }
        let n = self.test.len();
        crate::tasks::seq2seq::Seq2seqReport {
            n,
            exact_match: exact as f64 / n.max(1) as f64,
            token_accuracy: right as f64 / counted.max(1) as f64,
            chance_token_accuracy: 1.0 / f64::from(self.symbols),
        }
    }
}

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

/// The data of a forecasting task: the standardized series and its windows.
pub struct ForecastData {
    /// Values by step, then channel, standardized with the training part's statistics.
    values: Vec<Vec<f64>>,
    lookback: usize,
    horizon: usize,
    season: usize,
    /// First target steps of the training, validation and test windows.
    starts: [Vec<usize>; 3],
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl ForecastData {
    /// Read and cut the series (its path as given: the command line resolves it against the
    /// recipe's folder); `None` for another kind of task.
    pub fn open(task: &Task) -> Result<Option<Self>, TrainError> {
        use crate::tasks::forecast::{read_csv, stats, Parts};
        let Task::Forecast(f) = task else {
            return Ok(None);
        };
        let series = read_csv(Path::new(&f.path), &f.columns)?;
        let (l, h) = (f.lookback as usize, f.horizon as usize);
        let parts = Parts::new(series.values.len(), l, h, f.val_fraction, f.test_fraction)?;
        let st = stats(&series.values, parts.train);
        let values = series
            .values
            .iter()
            .map(|r| r.iter().zip(&st).map(|(v, (m, s))| (v - m) / s).collect())
            .collect();
        Ok(Some(ForecastData {
            values,
            lookback: l,
            horizon: h,
            season: f.season as usize,
            starts: parts.starts(l, h),
            order: Vec::new(),
            order_epoch: None,
        }))
    }

    /// The window whose first target is step `t0`: lookback `[L][C]` and targets `[H][C]`.
    fn window(&self, t0: usize) -> (&[Vec<f64>], &[Vec<f64>]) {
        (
            &self.values[t0 - self.lookback..t0],
            &self.values[t0..t0 + self.horizon],
        )
    }

    fn batch(&self, starts: &[usize]) -> Batch {
        let flat = |rows: &[Vec<f64>]| rows.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for &t0 in starts {
            let (a, b) = self.window(t0);
            x.extend(flat(a));
            y.extend(flat(b));
        }
        let (n, c) = (starts.len(), self.values[0].len());
        Batch::Series {
            x,
            y,
            x_dims: [n, self.lookback, c],
            y_dims: [n, self.horizon, c],
        }
    }

    /// The model's forecasts for the windows starting at `starts`, `[rows][H][C]` flat.
    fn forecast(&self, rt: &Runtime, starts: &[usize]) -> Vec<f32> {
        let Batch::Series { x, x_dims, .. } = self.batch(starts) else {
            unreachable!("series batch")
        };
        predict(rt, x, x_dims)
    }

    /// Mean squared error of the model over the windows at `starts`.
    fn mse(&self, rt: &Runtime, starts: &[usize], bs: usize) -> f64 {
        let mut e = crate::tasks::forecast::ErrorSum::default();
        for chunk in starts.chunks(bs.max(1)) {
            let Batch::Series { x, y, x_dims, .. } = self.batch(chunk) else {
                unreachable!("series batch")
            };
            for (p, t) in predict(rt, x, x_dims).iter().zip(&y) {
                e.add(f64::from(*p), f64::from(*t));
            }
        }
        e.finish().mse
    }

    /// Test errors of the model and of the baselines.
    pub fn report(&self, rt: &Runtime) -> crate::tasks::forecast::ForecastReport {
        use crate::tasks::forecast::{last_value, seasonal_naive, ErrorSum, ForecastReport};
        let test = &self.starts[2];
        let (mut model, mut last, mut seasonal) = (
            ErrorSum::default(),
            ErrorSum::default(),
            ErrorSum::default(),
        );
        for chunk in test.chunks(256) {
            let pred = self.forecast(rt, chunk);
            let per = self.horizon * self.values[0].len();
            for (i, &t0) in chunk.iter().enumerate() {
                let (x, y) = self.window(t0);
                let lv = last_value(x, self.horizon);
                let sn = seasonal_naive(x, self.horizon, self.season);
                for (h, row) in y.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        model.add(f64::from(pred[i * per + h * row.len() + c]), v);
                        last.add(lv[h][c], v);
                        seasonal.add(sn[h][c], v);
                    }
                }
            }
        }
        ForecastReport {
            windows: test.len(),
            model: model.finish(),
            last_value: last.finish(),
            seasonal_naive: seasonal.finish(),
        }
    }
}

/// A forecasting model's forecasts for inputs `x` of shape `x_dims`, flat.
fn predict(rt: &Runtime, x: Vec<f32>, x_dims: [usize; 3]) -> Vec<f32> {
    let device = rt.device.clone().without_autodiff();
    let t = burn::tensor::Tensor::<3>::from_data(burn::tensor::TensorData::new(x, x_dims), &device);
    let t = if rt.device.is_autodiff() {
        t.autodiff()
    } else {
        t
    };
    rt.forward_series(t, false)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 forecasts")
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
        };
        n.max(1) as u64
    }

    /// The effective batch size for a requested `bs` (a grammar's training set may be smaller).
    pub fn batch_size(&self, bs: usize) -> usize {
        match self {
            Data::Grammar(g) => bs.min(g.train.len()).max(1),
            Data::Seq2seq(g) => bs.min(g.train.len()).max(1),
            Data::Forecast(f) => bs.min(f.starts[0].len()).max(1),
            Data::Stream(_) => bs.max(1),
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
        }
    }

    /// The task's metrics for a model.
    pub fn report(&self, rt: &Runtime) -> TaskReport {
        match self {
            Data::Grammar(g) => TaskReport::Grammar(g.report(rt)),
            Data::Stream(s) => TaskReport::Uint16(s.report(rt)),
            Data::Seq2seq(s) => TaskReport::Seq2seq(s.report(rt)),
            Data::Forecast(f) => TaskReport::Forecast(f.report(rt)),
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
