//! The data of a grammar task.

use super::GrammarReport;
use crate::runtime::Runtime;
use crate::spec::recipe::{Language, Task};
use crate::tasks::grammar::{self, Metrics};
use crate::util::Rng;

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
    pub(super) order: Vec<usize>,
    pub(super) order_epoch: Option<u64>,
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
