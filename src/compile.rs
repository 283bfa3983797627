//! The one compile pipeline: load a recipe (with `--set` overrides), compose its model,
//! resolve its data paths, lower the model to the graph IR and run every optimization pass.
//! The CLI, sweeps and benchmarks all compile recipes through [`recipe`], so a trial, a run
//! and a benchmark of the same recipe train the same graph on the same data.

use crate::diag::{render_text, SourceMap};
use crate::ir::Graph;
use crate::spec::{Document, LoadedRecipe};
use std::path::Path;

/// Why a recipe did not compile; the message is rendered (with colour where asked).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The file cannot be read as YAML (missing, not UTF-8, syntax error, too large).
    #[error("{0}")]
    Unreadable(String),
    /// The document is not a valid recipe: its diagnostics.
    #[error("{0}")]
    Invalid(String),
    /// An optimization pass broke the graph: a bug in kiln.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CompileError {
    /// The exit status (see [`crate::cli::exit`]).
    pub fn exit_code(&self) -> i32 {
        use crate::cli::exit;
        match self {
            CompileError::Unreadable(_) => exit::UNUSABLE,
            CompileError::Invalid(_) => exit::FAILED,
            CompileError::Internal(_) => exit::INTERNAL,
        }
    }
}

/// Check the document at `path` as `kiln validate` does: load it (YAML, the recipe's model
/// file, overrides, `$variables`, the schema, the recipe's own checks), then lower it to the
/// graph IR (shapes, `max_len`s, causality). Every source read goes into `sources`, which
/// may stand in for files with unsaved text ([`SourceMap::with_overlay`]: `kiln lsp` checks
/// editor buffers through this same function).
pub fn check(
    path: &Path,
    sets: &[String],
    sources: &mut SourceMap,
) -> Result<(Document, Graph), crate::spec::LoadError> {
    let doc = crate::spec::load(path, sets, sources)?;
    match crate::lower::lower_document(&doc, None, None) {
        Ok(graph) => Ok((doc, graph)),
        Err(diags) => Err(crate::spec::LoadError { diags }),
    }
}

/// Compile the recipe at `path`: its validated spec (model inlined, data paths absolute) and
/// its optimized graph. `color` renders diagnostics for a terminal.
pub fn recipe(
    path: &Path,
    sets: &[String],
    color: bool,
) -> Result<(LoadedRecipe, Graph), CompileError> {
    let mut sources = SourceMap::new();
    let mut doc = match crate::spec::load(path, sets, &mut sources) {
        Ok(Document::Recipe(r)) => *r,
        Ok(Document::Model(_)) => {
            return Err(CompileError::Invalid(format!(
                "error: `{}` is a model; this command takes a recipe (kind: recipe)\n",
                path.display()
            )))
        }
        Err(e) => {
            let text = render_text(&e.diags, &sources, color);
            return Err(if e.unreadable() {
                CompileError::Unreadable(text)
            } else {
                CompileError::Invalid(text)
            });
        }
    };
    // Data paths are relative to the recipe; absolute, the run directory's resolved recipe
    // (and `--resume` from anywhere, and a trial's content key) name the same file.
    doc.absolutize_data(path);
    // A text task's vocabulary comes from its corpus or tokenizer: read it (tokenizing the
    // corpus into the cache once) and write it into the spec, so the resolved recipe has it.
    if let crate::spec::recipe::Task::Text(t) = &mut doc.spec.task {
        if t.vocab.is_none() {
            let dir = crate::tasks::text::cache::cache_dir();
            let corpus = crate::tasks::text::open(t, &dir)
                .map_err(|e| CompileError::Unreadable(format!("error: {e}\n")))?;
            t.vocab = Some(corpus.vocab as u32);
            let mut diags = Vec::new();
            crate::spec::checks::check_token_ids(&doc.spec, &doc.tree, &mut diags);
            if !diags.is_empty() {
                return Err(CompileError::Invalid(render_text(&diags, &sources, color)));
            }
        }
    }
    let mut graph = crate::lower::lower_recipe(&doc)
        .map_err(|d| CompileError::Invalid(render_text(&d, &sources, color)))?;
    let all: Vec<_> = crate::passes::ALL.iter().collect();
    crate::passes::optimize(&mut graph, &all, cfg!(debug_assertions))
        .map_err(|e| CompileError::Internal(e.to_string()))?;
    Ok((doc, graph))
}
