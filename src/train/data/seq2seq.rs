//! The data of a sequence-to-sequence task.

use crate::runtime::Runtime;
use crate::spec::recipe::Task;
use crate::util::Rng;

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
    pub(super) order: Vec<usize>,
    pub(super) order_epoch: Option<u64>,
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
            let (x, _) = crate::train::split_xy(&rows, &rt.device);
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
