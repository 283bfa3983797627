//! Language modelling on real text.
//!
//! A UTF-8 corpus (a file, or a folder of files read in path order) is tokenized once, at the
//! `char` or `byte` level or with a Hugging Face `tokenizer.json`, into a token cache
//! ([`cache`]): a file of uint16 (or uint32) ids that is memory-mapped, so a corpus of any
//! size is read page by page and never held in memory. nanoGPT's `train.bin` / `val.bin`
//! are mapped as they are. The metrics ([`metrics`]) set the model's test loss beside the
//! unigram and interpolated Kneser-Ney baselines ([`ngram`]) on the same targets.

pub mod cache;
pub mod metrics;
pub mod ngram;
mod tokenizer;

pub use cache::{open, Corpus, Part, Tokens};
pub use tokenizer::Tokenizer;

use std::path::PathBuf;

/// Errors of reading a text corpus, its tokenizer or its token files.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file or folder that cannot be read or written.
    #[error("cannot {what} `{path}`: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A corpus that is not UTF-8 where text is needed.
    #[error("the corpus file `{path}` is not UTF-8 text: invalid bytes at byte {offset}. The `char` level and tokenizer.json read text; use `tokenizer: byte` for arbitrary bytes, or convert the file to UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: u64,
    },
    /// A tokenizer.json that cannot be loaded.
    #[error("cannot use the tokenizer `{path}`: {reason}. Give the `tokenizer.json` of a Hugging Face tokenizer (or `char` / `byte`)")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A token id at or beyond the vocabulary.
    #[error("{path}: token id {id} (first at token {index}) is beyond the vocabulary of {vocab} ids; every id must be below vocab. {help}")]
    IdBeyondVocab {
        /// The file.
        path: PathBuf,
        /// The id.
        id: u64,
        /// Where it first occurs.
        index: u64,
        /// The vocabulary.
        vocab: u64,
        /// What to do.
        help: String,
    },
    /// Too little text for the parts and the context, or another unusable setting.
    #[error("{0}")]
    Unusable(String),
}

impl TextError {
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| TextError::Io { what, path, source }
    }
}
