//! A recipe's `task`: the rule-extrapolation grammars, uint16 streams, sequence-to-sequence
//! problems, forecasting and real text, with their defaults.

use super::super::defaults::{default_one, default_true};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A formal language of the rule-extrapolation benchmark (Mészáros et al. 2024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Language {
    /// aⁿbⁿ (context-free). R1: #a = #b; R2: no a after the first b.
    #[serde(rename = "aNbN")]
    ANbN,
    /// aⁿbⁿcⁿ (context-sensitive). R1: #a = #b = #c; R2: a's before b's before c's.
    #[serde(rename = "aNbNcN")]
    ANbNcN,
    /// b a^even (regular). R1: even number of a; R2: starts with b.
    #[serde(rename = "baN")]
    BaN,
    /// bⁿ a^2m (regular). R1: even number of a after the last b; R2: b's before a's, ≥ 1 b.
    #[serde(rename = "bbaN")]
    BbaN,
    /// Dyck language with ( ) and [ ], nested (context-free).
    #[serde(rename = "dyck")]
    Dyck,
    /// Two bracket types matched independently, crossing allowed (context-sensitive Dyck).
    #[serde(rename = "cs_dyck")]
    CsDyck,
}

/// The task a model is trained on. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Next-token prediction on a formal language, evaluated by greedy completion of in- and
    /// out-of-distribution prompts (rule extrapolation).
    Grammar {
        /// Which language.
        language: Language,
        /// Longest word; sequences are `SOS word EOS` right-padded to max_length + 2.
        #[serde(default = "default_max_length")]
        #[schemars(range(min = 8, max = 4096))]
        max_length: u32,
        /// Number of training words for the sampled languages (baN, bbaN, both Dyck); the
        /// aNbN and aNbNcN sets are all words up to max_length. Leave it out for the paper's
        /// value (15000 for baN and bbaN, 512 for Dyck).
        #[serde(default)]
        #[schemars(range(min = 1, max = 10000000))]
        num_train: Option<u32>,
        /// Number of validation words for the sampled languages.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_val: u32,
        /// Number of test words for the sampled languages.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_test: u32,
        /// Mask PAD keys in every self-attention (`src_key_padding_mask`), as the paper's
        /// code trains its Transformer. Generation then recomputes the prefix at every token
        /// (no KV cache), so that a generated PAD is masked too.
        #[serde(default)]
        mask_padding: bool,
    },
    /// Next-value prediction on a binary file of little-endian uint16 values.
    Uint16 {
        /// The data file, relative to the recipe.
        path: String,
        /// Number of distinct values (classes); every value in the file must be below it.
        #[serde(default = "default_u16_vocab")]
        #[schemars(range(min = 2, max = 65536))]
        vocab: u32,
        /// Length of the context window the model reads.
        #[schemars(range(min = 1, max = 1048576))]
        context: u32,
        /// Fraction of the stream (taken from its end, before the test part) used for
        /// validation.
        #[serde(default = "default_fraction")]
        #[schemars(range(min = 0.0, max = 0.5))]
        val_fraction: f64,
        /// Fraction of the stream (taken from its end) used for testing.
        #[serde(default = "default_fraction")]
        #[schemars(range(min = 0.0, max = 0.5))]
        test_fraction: f64,
        /// Most non-overlapping windows (spread evenly over the part) used for the validation
        /// loss and for the test metrics; every position of a window is scored.
        #[serde(default = "default_eval_windows")]
        #[schemars(range(min = 1, max = 1000000))]
        eval_windows: u32,
    },
    /// Multivariate time-series forecasting from a CSV file: from `lookback` steps of every
    /// channel, forecast the next `horizon` steps. Values are standardized per channel with
    /// the training part's mean and standard deviation; the loss is the MSE. Windows are cut
    /// chronologically: training windows lie in the training part, validation and test
    /// windows forecast targets inside their parts. Reported: MSE and MAE on the test part,
    /// beside the last-value and seasonal-naive baselines.
    Forecast(ForecastTask),
    /// Language modelling on real text: a UTF-8 corpus tokenized at the `char` or `byte` level
    /// or with a Hugging Face `tokenizer.json`, or nanoGPT's `train.bin` / `val.bin` token
    /// files. The corpus is tokenized once into a cached token file; the token stream is cut
    /// into contiguous training, validation and test parts, as a uint16 stream is. Reported:
    /// test loss in nats per token, bits per character (or byte) and perplexity, beside the
    /// unigram and interpolated Kneser-Ney n-gram baselines fitted on the training part.
    Text(TextTask),
    /// Sequence-to-sequence transduction of random words over `symbols` symbols, for
    /// encoder-decoder models: the source is the word (padded to `max_length`), the target
    /// `BOS f(word) EOS` (padded). Ids: 0 PAD, 1 BOS, 2 EOS, then the symbols. Evaluated by
    /// greedy decoding of the test sources (exact match) and by teacher-forced token accuracy.
    Seq2seq {
        /// The transduction f.
        problem: Problem,
        /// Alphabet size.
        #[serde(default = "default_symbols")]
        #[schemars(range(min = 2, max = 1000))]
        symbols: u32,
        /// Shortest word.
        #[serde(default = "default_one")]
        #[schemars(range(min = 1, max = 4096))]
        min_length: u32,
        /// Longest word (the source length).
        #[serde(default = "default_s2s_length")]
        #[schemars(range(min = 1, max = 4096))]
        max_length: u32,
        /// Number of training pairs.
        #[serde(default = "default_s2s_train")]
        #[schemars(range(min = 1, max = 10000000))]
        num_train: u32,
        /// Number of validation pairs.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_val: u32,
        /// Number of test pairs.
        #[serde(default = "default_num_eval")]
        #[schemars(range(min = 1, max = 1000000))]
        num_test: u32,
        /// Key-padding mask: the encoder's attention and the decoder's cross-attention ignore
        /// the source's PAD positions (as Hugging Face's `attention_mask` does). `false` lets
        /// them attend to PADs, which tell where a word ends.
        #[serde(default = "default_true")]
        mask_padding: bool,
    },
}

/// Settings of a forecasting task (see [`Task::Forecast`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForecastTask {
    /// The CSV file, relative to the recipe: a header row, one row per time step in order.
    pub path: String,
    /// The columns to forecast (the channels), by their header names.
    #[schemars(length(min = 1))]
    pub columns: Vec<String>,
    /// Time steps the model reads.
    #[schemars(range(min = 1, max = 100000))]
    pub lookback: u32,
    /// Time steps it forecasts.
    #[schemars(range(min = 1, max = 100000))]
    pub horizon: u32,
    /// Period of the seasonal-naive baseline (12 for monthly data with a yearly cycle); at
    /// most `lookback`.
    #[schemars(range(min = 1, max = 100000))]
    pub season: u32,
    /// Fraction of the time steps, before the test part, whose values are validation targets.
    #[serde(default = "default_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub val_fraction: f64,
    /// Fraction of the time steps, at the end, whose values are test targets.
    #[serde(default = "default_test_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub test_fraction: f64,
}

fn default_test_fraction() -> f64 {
    0.2
}

/// Settings of a text task (see [`Task::Text`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextTask {
    /// The corpus, relative to the recipe: a UTF-8 text file, a folder of them (read
    /// recursively in path order and concatenated), or a folder holding nanoGPT's
    /// `train.bin` and `val.bin`.
    pub path: String,
    /// How text becomes tokens: `char` (each Unicode character of the corpus), `byte`
    /// (256 ids), or the path of a Hugging Face `tokenizer.json` (relative to the recipe).
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Number of token ids. Leave it out: kiln takes it from the corpus (`char`), 256
    /// (`byte`) or the tokenizer, and writes it into the run's resolved recipe. Required for
    /// nanoGPT token files without a `tokenizer.json`; their ids are uint16, or uint32 when
    /// vocab is over 65 536.
    #[serde(default)]
    #[schemars(range(min = 2, max = 16777216))]
    pub vocab: Option<u32>,
    /// Length of the context window the model reads.
    #[schemars(range(min = 1, max = 1048576))]
    pub context: u32,
    /// Fraction of the tokens (before the test part) used for validation. nanoGPT files:
    /// ignored (the first half of `val.bin` validates, the second half tests).
    #[serde(default = "default_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub val_fraction: f64,
    /// Fraction of the tokens (at the end) used for testing.
    #[serde(default = "default_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub test_fraction: f64,
    /// Most non-overlapping windows (spread evenly over the part) used for the validation
    /// loss and the test metrics; every position of a window is scored.
    #[serde(default = "default_eval_windows")]
    #[schemars(range(min = 1, max = 1000000))]
    pub eval_windows: u32,
    /// Order of the interpolated Kneser-Ney baseline (3 to 5 is usual).
    #[serde(default = "default_ngram_order")]
    #[schemars(range(min = 2, max = 5))]
    pub ngram_order: u32,
    /// Most training tokens (the start of the training part) the n-gram baseline is fitted
    /// on, to bound its memory; the report says how many it used.
    #[serde(default = "default_ngram_tokens")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub ngram_tokens: u64,
}

fn default_tokenizer() -> String {
    "char".into()
}
fn default_ngram_order() -> u32 {
    5
}
fn default_ngram_tokens() -> u64 {
    10_000_000
}

/// What a sequence-to-sequence task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The word unchanged.
    Copy,
    /// The word backwards.
    Reverse,
    /// The word's symbols in ascending order.
    Sort,
}

fn default_symbols() -> u32 {
    8
}
fn default_s2s_length() -> u32 {
    12
}
fn default_s2s_train() -> u32 {
    5000
}

fn default_max_length() -> u32 {
    256
}
fn default_num_eval() -> u32 {
    512
}
fn default_u16_vocab() -> u32 {
    65536
}
fn default_fraction() -> f64 {
    0.1
}
fn default_eval_windows() -> u32 {
    256
}

impl Language {
    /// Vocabulary size: SOS, EOS, PAD and the language's symbols (reference §1.1).
    pub fn vocab(self) -> u64 {
        match self {
            Language::ANbN | Language::BaN | Language::BbaN => 5,
            Language::ANbNcN => 6,
            Language::Dyck | Language::CsDyck => 7,
        }
    }
}

impl Task {
    /// Vocabulary size the model must predict.
    pub fn vocab(&self) -> u64 {
        match self {
            Task::Grammar { language, .. } => language.vocab(),
            Task::Uint16 { vocab, .. } => u64::from(*vocab),
            Task::Seq2seq { symbols, .. } => u64::from(*symbols) + seq2seq_ids::FIRST as u64,
            Task::Forecast(_) => 0,
            Task::Text(t) => t.vocab.map_or(
                if t.tokenizer == "byte" {
                    256
                } else {
                    crate::lower::PLACEHOLDER_VOCAB
                },
                u64::from,
            ),
        }
    }

    /// The vocabulary when it is known without reading data: a text task's is known only
    /// once its corpus or tokenizer is read (see [`crate::tasks::text`]), unless given.
    pub fn known_vocab(&self) -> Option<u64> {
        match self {
            Task::Text(t) if t.vocab.is_none() && t.tokenizer != "byte" => None,
            _ => Some(self.vocab()),
        }
    }

    /// The padding id that a decoder-only model's self-attention ignores: a grammar task's PAD
    /// with `mask_padding`, else `None`.
    pub fn input_pad(&self) -> Option<i64> {
        match self {
            Task::Grammar {
                mask_padding: true, ..
            } => Some(grammar_ids::PAD),
            _ => None,
        }
    }

    /// The padding id that an encoder-decoder's attention should ignore: PAD for a
    /// sequence-to-sequence task with `mask_padding`, else `None`.
    pub fn source_pad(&self) -> Option<i64> {
        match self {
            Task::Seq2seq {
                mask_padding: true, ..
            } => Some(seq2seq_ids::PAD),
            _ => None,
        }
    }

    /// Source length of a sequence-to-sequence task (the encoder's input); `None` for
    /// language-model tasks.
    pub fn source_len(&self) -> Option<u64> {
        match self {
            Task::Seq2seq { max_length, .. } => Some(u64::from(*max_length)),
            _ => None,
        }
    }

    /// Longest sequence the model reads: `SOS w EOS` padded to max_length + 2, minus the last
    /// token (teacher forcing) for grammars; the context window for uint16 streams.
    pub fn max_seq(&self) -> u64 {
        match self {
            Task::Grammar { max_length, .. } => u64::from(*max_length) + 1,
            Task::Uint16 { context, .. } => u64::from(*context),
            Task::Seq2seq { max_length, .. } => u64::from(*max_length) + 1,
            Task::Forecast(f) => u64::from(f.lookback),
            Task::Text(t) => u64::from(t.context),
        }
    }
}

/// The vocabulary of a sequence-to-sequence task: three special ids, then the symbols (so its
/// vocabulary is `symbols + 3`).
pub mod seq2seq_ids {
    /// Padding id.
    pub const PAD: i64 = 0;
    /// Start of the target.
    pub const BOS: i64 = 1;
    /// End of the target.
    pub const EOS: i64 = 2;
    /// Id of the first symbol.
    pub const FIRST: i64 = 3;
}

/// The vocabulary of a grammar task: SOS, EOS, PAD, then the language's symbols.
pub mod grammar_ids {
    /// Start of a sequence.
    pub const SOS: i64 = 0;
    /// End of a word.
    pub const EOS: i64 = 1;
    /// Padding after EOS.
    pub const PAD: i64 = 2;
}
