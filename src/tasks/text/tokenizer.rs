//! The three ways text becomes token ids: characters, bytes, or a Hugging Face tokenizer.

use super::TextError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tokenizer of the text task.
pub enum Tokenizer {
    /// One id per Unicode character of the corpus: id i is `chars[i]` (sorted).
    Char {
        /// The characters, by id.
        chars: Vec<char>,
        /// Id of each character.
        ids: HashMap<char, u32>,
    },
    /// One id per byte (256 ids).
    Byte,
    /// A Hugging Face `tokenizer.json`.
    Hf {
        /// The tokenizer.
        tok: Box<tokenizers::Tokenizer>,
        /// Its file.
        path: PathBuf,
    },
}

impl Tokenizer {
    /// A character-level tokenizer over `chars` (sorted, distinct).
    pub fn chars(chars: Vec<char>) -> Self {
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Tokenizer::Char { chars, ids }
    }

    /// Load a `tokenizer.json`.
    pub fn hf(path: &Path) -> Result<Self, TextError> {
        let bytes = std::fs::read(path).map_err(TextError::io("read the tokenizer", path))?;
        let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TextError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Tokenizer::Hf {
            tok: Box::new(tok),
            path: path.to_path_buf(),
        })
    }

    /// Number of ids.
    pub fn vocab(&self) -> usize {
        match self {
            Tokenizer::Char { chars, .. } => chars.len(),
            Tokenizer::Byte => 256,
            Tokenizer::Hf { tok, .. } => tok.get_vocab_size(true),
        }
    }

    /// The unit of the bits-per-unit metric: what one token of this tokenizer's text
    /// counts as (characters, except for the byte level).
    pub fn unit(&self) -> &'static str {
        match self {
            Tokenizer::Byte => "byte",
            _ => "char",
        }
    }

    /// The ids of `text`; a character the `char` vocabulary lacks is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        match self {
            Tokenizer::Char { ids, chars } => text
                .chars()
                .map(|c| {
                    ids.get(&c).copied().ok_or_else(|| {
                        TextError::Unusable(format!(
                            "the character {c:?} does not occur in the corpus, so the character-level model has no id for it ({} characters are known)",
                            chars.len()
                        ))
                    })
                })
                .collect(),
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf { tok, path } => tok
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TextError::Tokenizer {
                    path: path.clone(),
                    reason: e.to_string(),
                }),
        }
    }

    /// The text of `ids` (invalid UTF-8 of the byte level and unknown ids shown as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Char { chars, .. } => ids
                .iter()
                .map(|&i| chars.get(i as usize).copied().unwrap_or('\u{FFFD}'))
                .collect(),
            Tokenizer::Byte => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Hf { tok, .. } => tok.decode(ids, false).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_and_bytes_round_trip_and_unknown_characters_are_errors() {
        let t = Tokenizer::chars(vec![' ', 'a', 'b', 'é']);
        assert_eq!(t.encode("ab é").unwrap(), vec![1, 2, 0, 3]);
        assert_eq!(t.decode(&[1, 2, 0, 3]), "ab é");
        let e = t.encode("abc").unwrap_err().to_string();
        assert!(e.contains("'c' does not occur in the corpus"), "{e}");
        let b = Tokenizer::Byte;
        assert_eq!(b.encode("é").unwrap(), vec![0xc3, 0xa9]);
        assert_eq!(b.decode(&[0xc3, 0xa9]), "é");
        assert_eq!(b.unit(), "byte");
        assert_eq!(t.unit(), "char");
    }
}
