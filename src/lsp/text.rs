//! Positions: the protocol's (line, UTF-16 column) against byte offsets, and file URIs
//! against paths.

use lsp_types::{Position, Range, Uri};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Line starts of a text, to convert between byte offsets and protocol positions.
pub struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    /// Index `text`.
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    /// The protocol position of a byte offset (clamped to the text, and down to a character
    /// boundary).
    pub fn position(&self, byte: usize) -> Position {
        let mut byte = byte.min(self.text.len());
        while !self.text.is_char_boundary(byte) {
            byte -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= byte) - 1;
        let col = self.text[self.starts[line]..byte].encode_utf16().count();
        Position::new(line as u32, col as u32)
    }

    /// The protocol range of a byte range.
    pub fn range(&self, start: usize, end: usize) -> Range {
        Range::new(self.position(start), self.position(end))
    }

    /// The byte offset of a protocol position (clamped to its line and to the text).
    pub fn offset(&self, pos: Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else {
            return self.text.len();
        };
        let end = self
            .starts
            .get(pos.line as usize + 1)
            .map_or(self.text.len(), |e| e - 1);
        let mut units = 0;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= pos.character as usize {
                return start + i;
            }
            units += c.len_utf16();
        }
        end
    }

    /// The text of line `line` (0-based, without its line break).
    pub fn line(&self, line: usize) -> &'a str {
        let Some(&start) = self.starts.get(line) else {
            return "";
        };
        let end = self.starts.get(line + 1).map_or(self.text.len(), |e| e - 1);
        self.text[start..end].trim_end_matches('\r')
    }

    /// The whole text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// Number of lines.
    pub fn count(&self) -> usize {
        self.starts.len()
    }
}

/// The path of a `file:` URI (normalized, as the loader names files).
pub fn uri_path(uri: &Uri) -> Option<PathBuf> {
    let url = url::Url::parse(uri.as_str()).ok()?;
    let path = url.to_file_path().ok()?;
    Some(crate::util::normalize_path(&path))
}

/// The `file:` URI of a path (made absolute against the working directory).
pub fn path_uri(path: &Path) -> Option<Uri> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let url = url::Url::from_file_path(crate::util::normalize_path(&abs)).ok()?;
    Uri::from_str(url.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_utf16_units_and_round_trip() {
        let text = "a: 1\nb: \"😀x\"\r\nc: 3";
        let l = Lines::new(text);
        let x = text.find('x').unwrap();
        // The emoji is 2 UTF-16 units (4 bytes).
        assert_eq!(l.position(x), Position::new(1, 6));
        assert_eq!(l.offset(Position::new(1, 6)), x);
        assert_eq!(l.offset(Position::new(9, 0)), text.len());
        assert_eq!(l.offset(Position::new(0, 99)), 4);
        assert_eq!(l.line(1), "b: \"😀x\"");
        assert_eq!(l.count(), 3);
    }

    #[test]
    fn file_uris_round_trip() {
        let p = Path::new("/tmp/a b/recipe.yaml");
        let uri = path_uri(p).unwrap();
        assert_eq!(uri.as_str(), "file:///tmp/a%20b/recipe.yaml");
        assert_eq!(uri_path(&uri).unwrap(), p);
        assert!(uri_path(&Uri::from_str("untitled:Untitled-1").unwrap()).is_none());
    }
}
