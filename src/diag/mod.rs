//! Diagnostics: a stable code, a message, a labelled span in a source, and a `help:` line.
//!
//! Every stage of kiln reports problems as [`Diagnostic`]s that point into a [`SourceMap`]
//! (the files and `--set` arguments that were read). They render as rustc-style snippets
//! (via `annotate-snippets`) or as JSON.

mod codes;
mod render;
mod suggest;

pub use codes::Code;
pub use render::{diagnostic_json, render_json, render_text};
pub use suggest::{did_you_mean, one_of};

use std::path::{Path, PathBuf};

/// Index of a source in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u32);

/// A byte range in one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// The source the range lies in.
    pub src: SourceId,
    /// First byte (inclusive).
    pub start: usize,
    /// Last byte (exclusive); equal to `start` for a point.
    pub end: usize,
}

impl Span {
    /// A span covering `start..end` of `src`.
    pub fn new(src: SourceId, start: usize, end: usize) -> Self {
        Span {
            src,
            start,
            end: end.max(start),
        }
    }
}

/// Where a source came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// The n-th `--set` argument (1-based).
    Override(usize),
}

/// One text that diagnostics can point into.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where the text came from.
    pub origin: Origin,
    /// The text (lossily decoded when it was not UTF-8).
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    fn new(origin: Origin, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            origin,
            text,
            line_starts,
        }
    }

    /// The name printed in diagnostics: the path, or `--set #n`.
    pub fn name(&self) -> String {
        match &self.origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Override(n) => format!("--set #{n}"),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, byte: usize) -> (usize, usize) {
        let byte = byte.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= byte) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..byte)
            .map_or(byte - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// Byte offset of a 1-based line and 0-based character column (clamped to the text).
    pub fn offset(&self, line: usize, col: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        let line_text = &self.text[start..end];
        start
            + line_text
                .char_indices()
                .nth(col)
                .map_or(line_text.len(), |(i, _)| i)
    }
}

/// All sources read while handling one command.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    sources: Vec<Source>,
    /// Texts that stand in for files on disk (an editor's unsaved buffers): reading one of
    /// these paths reads the text instead of the file.
    overlay: std::collections::HashMap<PathBuf, String>,
}

impl SourceMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a source and return its id.
    pub fn add(&mut self, origin: Origin, text: String) -> SourceId {
        self.sources.push(Source::new(origin, text));
        SourceId(self.sources.len() as u32 - 1)
    }

    /// An empty map whose reads of the given paths see the given texts instead of the files
    /// (see [`crate::spec::load::read_source`]).
    pub fn with_overlay(overlay: std::collections::HashMap<PathBuf, String>) -> Self {
        SourceMap {
            sources: Vec::new(),
            overlay,
        }
    }

    /// The text standing in for the file at `path`, if any.
    pub fn overlay(&self, path: &Path) -> Option<&str> {
        self.overlay.get(path).map(String::as_str)
    }

    /// The files read so far, in the order they were read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().filter_map(|s| match &s.origin {
            Origin::File(p) => Some(p.as_path()),
            Origin::Override(_) => None,
        })
    }

    /// Look a source up.
    pub fn get(&self, id: SourceId) -> &Source {
        &self.sources[id.0 as usize]
    }

    /// The id of a file already read, if any.
    pub fn find_file(&self, path: &Path) -> Option<SourceId> {
        self.sources
            .iter()
            .position(|s| s.origin == Origin::File(path.to_path_buf()))
            .map(|i| SourceId(i as u32))
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The input is rejected.
    Error,
    /// The input is accepted, but probably not what was meant.
    Warning,
}

/// A problem found in the input, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code, e.g. `K101`; see [`Code`].
    pub code: Code,
    /// Error or warning.
    pub severity: Severity,
    /// One sentence: what is wrong.
    pub message: String,
    /// Where; `None` for problems that belong to no source (e.g. a missing file).
    pub span: Option<Span>,
    /// Short text under the offending key or value.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
    /// Secondary locations (e.g. where a variable was defined), each with a label.
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    /// A new error with `code` and `message`, labelled `label` at `span`.
    pub fn error(code: Code, span: Option<Span>, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            span,
            label: String::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    /// Set the label shown under the span.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Set the `help:` line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Set the `help:` line when there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Add a secondary location.
    pub fn note(mut self, span: Span, text: impl Into<String>) -> Self {
        self.notes.push((span, text.into()));
        self
    }

    /// `true` for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Sort diagnostics by source and position (diagnostics without a span first), dropping exact
/// duplicates.
pub fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        let ka = a.span.map(|s| (s.src, s.start, s.end));
        let kb = b.span.map(|s| (s.src, s.start, s.end));
        ka.cmp(&kb).then_with(|| a.code.cmp(&b.code))
    });
    diags.dedup();
}
