//! A recipe's `decode` section (Hugging Face GenerationConfig semantics).

use super::super::defaults::{default_one, default_one_f64, default_true};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How sequences are generated, with the semantics of Hugging Face transformers'
/// `GenerationConfig` (4.46): the same parameter names, defaults and processor order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decode {
    /// The decoding strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Most tokens to generate after the prompt (takes precedence over `max_length`); leave
    /// both out for the task's own length.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_new_tokens: Option<u32>,
    /// Longest sequence, prompt included.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_length: Option<u32>,
    /// EOS cannot be generated while the sequence (prompt included) is shorter than this.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1048576))]
    pub min_length: u32,
    /// EOS cannot be generated before this many new tokens.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1048576))]
    pub min_new_tokens: u32,
    /// Beams of `beam`, `group_beam` and `beam_sample`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_beams: u32,
    /// Groups of diverse beam search (`group_beam`); must divide `num_beams`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_beam_groups: u32,
    /// Hamming diversity penalty of `group_beam`: subtracted from a token's score once per
    /// earlier group that chose it at this step.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1e6))]
    pub diversity_penalty: f64,
    /// Beam scores are sum_logprobs / generated_len^length_penalty: > 0 favours longer, < 0
    /// shorter sequences.
    #[serde(default = "default_length_penalty")]
    #[schemars(range(min = -100.0, max = 100.0))]
    pub length_penalty: f64,
    /// When beam search stops: `false` (heuristic: when no running beam can beat the worst
    /// finished one), `true` (as soon as `num_beams` hypotheses are finished), `never`
    /// (canonical: only when no better hypothesis is possible).
    #[serde(default)]
    pub early_stopping: EarlyStop,
    /// Sequences returned per prompt (at most `num_beams` for beam strategies).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub num_return_sequences: u32,
    /// Sampling temperature: logits are divided by it (sampling strategies only).
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub temperature: f64,
    /// Keep the k most probable tokens (ties at the threshold kept); 0 turns it off.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 0, max = 1048576))]
    pub top_k: u32,
    /// Nucleus sampling: keep the smallest set of most probable tokens whose mass reaches
    /// top_p; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub top_p: f64,
    /// Keep tokens whose probability is at least min_p times the largest; leave it out to
    /// turn it off.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_p: Option<f64>,
    /// Locally typical sampling mass; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub typical_p: f64,
    /// CTRL repetition penalty on every token already in the sequence (prompt included):
    /// positive scores are divided by it, negative ones multiplied; 1 turns it off.
    #[serde(default = "default_one_f64")]
    #[schemars(range(max = 1e6), extend("exclusiveMinimum" = 0.0))]
    pub repetition_penalty: f64,
    /// Never repeat an n-gram of this size (prompt included); 0 turns it off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1024))]
    pub no_repeat_ngram_size: u32,
    /// Token sequences that must not be generated (the last token of each is banned after
    /// the others).
    #[serde(default)]
    pub bad_words_ids: Vec<Vec<u32>>,
    /// End-of-sequence token; leave it out for the task's (a grammar's EOS; none for streams).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Padding after a sequence has finished; leave it out for the task's (a grammar's PAD,
    /// else the EOS).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Seed of sampling.
    #[serde(default)]
    pub seed: u64,
    /// Decode incrementally with a KV cache (attention keys/values, recurrent state) when
    /// every layer allows it; the tokens are the same either way.
    #[serde(default = "default_true")]
    pub use_cache: bool,
}

fn default_length_penalty() -> f64 {
    1.0
}
fn default_top_k() -> u32 {
    50
}

impl Default for Decode {
    fn default() -> Self {
        Decode {
            strategy: Strategy::Greedy,
            max_new_tokens: None,
            max_length: None,
            min_length: 0,
            min_new_tokens: 0,
            num_beams: 1,
            num_beam_groups: 1,
            diversity_penalty: 0.0,
            length_penalty: 1.0,
            early_stopping: EarlyStop::default(),
            num_return_sequences: 1,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            bad_words_ids: Vec::new(),
            eos_token_id: None,
            pad_token_id: None,
            seed: 0,
            use_cache: true,
        }
    }
}

/// A decoding strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Always take the most probable next token.
    #[default]
    Greedy,
    /// Sample from the processed distribution (temperature, top-k, top-p, min-p, typical-p).
    Sample,
    /// Beam search with `num_beams` beams.
    Beam,
    /// Diverse beam search: `num_beam_groups` groups with a Hamming diversity penalty.
    GroupBeam,
    /// Beam search whose candidates are sampled instead of taken best-first.
    BeamSample,
}

/// `early_stopping` of beam search: `true`, `false` or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EarlyStop {
    /// `true`: stop once `num_beams` hypotheses are finished; `false`: the heuristic.
    Flag(bool),
    /// `never`: canonical beam search.
    Never(Never),
}

impl Default for EarlyStop {
    fn default() -> Self {
        EarlyStop::Flag(false)
    }
}

/// The word `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Never {
    /// Canonical beam search.
    Never,
}
