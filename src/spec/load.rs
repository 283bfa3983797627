//! Loading documents: read, parse, compose the recipe's model, apply `--set` overrides,
//! substitute `$variables`, validate against the schema, then deserialize into the spec types.

use super::checks::check_recipe;
pub use super::checks::{key_span_at, span_at};
use super::model::ModelSpec;
use super::overrides::{apply_override, parse_overrides};
use super::recipe::{ModelRef, RecipeSpec};
use super::schema::{model_schema, recipe_schema};
use super::validate::validate;
use super::vars::substitute_vars;
use super::yaml::{self, Node, Value};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Origin, SourceId, SourceMap, Span};
use std::path::{Path, PathBuf};

/// Which kind of document a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// `kind: model`.
    Model,
    /// `kind: recipe`.
    Recipe,
}

impl DocKind {
    /// `model` or `recipe`.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Model => "model",
            DocKind::Recipe => "recipe",
        }
    }
}

/// A validated model with the tree it was read from (for spans).
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model.
    pub spec: ModelSpec,
    /// The tree after overrides and variable substitution; spans point into the sources.
    pub tree: Node,
}

/// A validated recipe, its model inlined.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    /// The recipe; its `model` is always [`ModelRef::Inline`].
    pub spec: RecipeSpec,
    /// The recipe's model.
    pub model: LoadedModel,
    /// The model file, when the recipe named one.
    pub model_path: Option<PathBuf>,
    /// The tree after composition and overrides.
    pub tree: Node,
}

/// A validated document.
#[derive(Debug, Clone)]
pub enum Document {
    /// A model.
    Model(LoadedModel),
    /// A recipe.
    Recipe(Box<LoadedRecipe>),
}

/// The diagnostics of a document that could not be loaded.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// Every problem found, sorted by position.
    pub diags: Vec<Diagnostic>,
}

impl LoadError {
    /// `true` when the file itself could not be read as YAML (exit status 2 rather than 1).
    pub fn unreadable(&self) -> bool {
        self.diags.iter().any(|d| d.code.is_unreadable())
    }
}

/// Load, compose, override, substitute, validate and deserialize the document at `path`.
///
/// `overrides` are `key.path=value` strings (from `--set`), applied in order. Every source read
/// is added to `sources`, so diagnostics can be rendered afterwards.
pub fn load(
    path: &Path,
    overrides: &[String],
    sources: &mut SourceMap,
) -> Result<Document, LoadError> {
    let src = read_source(path, sources);
    load_source(path, src, overrides, sources)
}

/// The common tail of [`load`] and [`load_bytes`].
fn load_source(
    path: &Path,
    src: Result<SourceId, Diagnostic>,
    overrides: &[String],
    sources: &mut SourceMap,
) -> Result<Document, LoadError> {
    let mut diags = Vec::new();
    let result = match src {
        Ok(src) => load_inner(path, src, overrides, sources, &mut diags),
        Err(d) => {
            diags.push(d);
            None
        }
    };
    crate::diag::sort(&mut diags);
    match result {
        Some(doc) if !diags.iter().any(Diagnostic::is_error) => Ok(doc),
        _ => Err(LoadError { diags }),
    }
}

/// Read a file into the source map (or the text standing in for it: see
/// [`SourceMap::with_overlay`]). Errors are K001 (cannot read) or K002 (not UTF-8).
pub fn read_source(path: &Path, sources: &mut SourceMap) -> Result<SourceId, Diagnostic> {
    if let Some(id) = sources.find_file(path) {
        return Ok(id);
    }
    if let Some(text) = sources.overlay(path) {
        let text = text.to_string();
        return Ok(sources.add(Origin::File(path.to_path_buf()), text));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        let mut d = Diagnostic::error(
            Code::Io,
            None,
            format!("cannot read `{}`: {}", path.display(), io_reason(&e)),
        );
        if e.kind() == std::io::ErrorKind::NotFound {
            d = d.maybe_help(similar_file(path).map(|f| format!("did you mean `{f}`?")));
        }
        d
    })?;
    add_source(path, bytes, sources)
}

/// Add in-memory bytes as the source named `path`. Errors are K002 (not UTF-8).
pub fn add_source(
    path: &Path,
    bytes: Vec<u8>,
    sources: &mut SourceMap,
) -> Result<SourceId, Diagnostic> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(sources.add(Origin::File(path.to_path_buf()), text)),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let offset = String::from_utf8_lossy(&bytes[..valid]).len();
            let id = sources.add(Origin::File(path.to_path_buf()), text);
            Err(Diagnostic::error(
                Code::NotUtf8,
                Some(Span::new(id, offset, offset + '\u{FFFD}'.len_utf8())),
                format!(
                    "`{}` is not UTF-8 text (invalid byte at offset {valid})",
                    path.display()
                ),
            )
            .label("invalid UTF-8 here")
            .help("kiln reads YAML text files; save the file as UTF-8"))
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        _ => e.to_string(),
    }
}

fn similar_file(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.join(similar_name(path)?).display().to_string())
}

/// The name of a file beside `path` (which does not exist) that is close to its name.
fn similar_name(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name()?.to_str()?;
    let names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    did_you_mean(name, names.iter().map(String::as_str)).map(str::to_string)
}

/// Like [`load`], for a document already in memory (named `path`; a recipe's model path is
/// relative to it).
pub fn load_bytes(
    path: &Path,
    bytes: Vec<u8>,
    overrides: &[String],
    sources: &mut SourceMap,
) -> Result<Document, LoadError> {
    let src = add_source(path, bytes, sources);
    load_source(path, src, overrides, sources)
}

fn load_inner(
    path: &Path,
    src: SourceId,
    overrides: &[String],
    sources: &mut SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Option<Document> {
    let (root, parse_diags) = yaml::parse(sources, src);
    diags.extend(parse_diags);
    let mut root = root?;
    let kind = document_kind(&root, diags)?;

    let sets = parse_overrides(overrides, sources, diags);
    let (model_sets, other_sets): (Vec<_>, Vec<_>) = sets
        .into_iter()
        .partition(|o| o.path.len() == 1 && o.path[0].0 == "model");
    for o in model_sets {
        apply_override(&mut root, o, diags);
    }
    let mut model_path = None;
    if kind == DocKind::Recipe {
        model_path = compose_model(&mut root, path, sources, diags);
    }
    for o in other_sets {
        apply_override(&mut root, o, diags);
    }

    match kind {
        DocKind::Model => substitute_vars(&mut root, diags),
        DocKind::Recipe => {
            if let Some(m) = root.get_mut("model") {
                if matches!(m.value, Value::Map(_)) {
                    substitute_vars(m, diags);
                }
            }
        }
    }

    let schema = match kind {
        DocKind::Model => model_schema(),
        DocKind::Recipe => recipe_schema(),
    };
    diags.extend(validate(schema, &root, kind.as_str()));
    if diags.iter().any(Diagnostic::is_error) {
        return None;
    }
    let doc = match kind {
        DocKind::Model => {
            let spec: ModelSpec = deserialize(&root, diags)?;
            Document::Model(LoadedModel { spec, tree: root })
        }
        DocKind::Recipe => {
            let spec: RecipeSpec = deserialize(&root, diags)?;
            let model_tree = root.get("model").cloned()?;
            let ModelRef::Inline(model) = &spec.model else {
                return None;
            };
            let model = LoadedModel {
                spec: (**model).clone(),
                tree: model_tree,
            };
            check_recipe(&spec, &root, diags);
            Document::Recipe(Box::new(LoadedRecipe {
                spec,
                model,
                model_path,
                tree: root,
            }))
        }
    };
    Some(doc)
}

fn deserialize<T: serde::de::DeserializeOwned>(
    root: &Node,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_json::from_value(root.to_json()) {
        Ok(v) => Some(v),
        Err(e) => {
            // The schema is generated from the same types, so this means a bug in kiln.
            diags.push(
                Diagnostic::error(
                    Code::WrongType,
                    Some(root.span),
                    format!(
                        "internal error: the document passed the schema but not the types: {e}"
                    ),
                )
                .label("document")
                .help("please report this as a bug in kiln, with the file"),
            );
            None
        }
    }
}

/// Read `kind`; report when it is missing or unknown.
fn document_kind(root: &Node, diags: &mut Vec<Diagnostic>) -> Option<DocKind> {
    let kinds = ["model", "recipe"];
    match &root.value {
        Value::Null => {
            diags.push(
                Diagnostic::error(Code::Empty, Some(root.span), "the document is empty")
                    .label("nothing here")
                    .help("a kiln document starts with `kind: model` or `kind: recipe`"),
            );
            return None;
        }
        Value::Map(_) => {}
        _ => {
            diags.push(
                Diagnostic::error(
                    Code::WrongType,
                    Some(root.span),
                    format!(
                        "a kiln document must be a mapping, found {}",
                        root.describe()
                    ),
                )
                .label("expected `key: value` lines")
                .help("a kiln document starts with `kind: model` or `kind: recipe`"),
            );
            return None;
        }
    }
    let Some(entry) = root.entry("kind") else {
        let at = root.as_map().and_then(|m| m.first()).map(|e| e.key_span);
        diags.push(
            Diagnostic::error(Code::MissingKey, at, "missing `kind`")
                .label("the document does not say what it is")
                .help("add `kind: model` or `kind: recipe` as the first key"),
        );
        return None;
    };
    match entry.value.as_str() {
        Some("model") => Some(DocKind::Model),
        Some("recipe") => Some(DocKind::Recipe),
        given => {
            let guess = given.and_then(|g| did_you_mean(g, kinds));
            diags.push(
                Diagnostic::error(
                    Code::UnknownVariant,
                    Some(entry.value.span),
                    format!(
                        "unknown document kind {}",
                        given.map_or_else(|| entry.value.describe(), |g| format!("`{g}`"))
                    ),
                )
                .label("not a kind kiln knows")
                .help(match guess {
                    Some(g) => format!("did you mean `{g}`? The kinds are {}", one_of(&kinds)),
                    None => format!("the kinds are {}", one_of(&kinds)),
                }),
            );
            None
        }
    }
}

/// Replace a recipe's `model: path` by the model file's tree. Returns the model's path.
fn compose_model(
    root: &mut Node,
    recipe_path: &Path,
    sources: &mut SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let node = root.get_mut("model")?;
    let rel = node.as_str()?.to_string();
    let span = node.span;
    let dir = recipe_path.parent().unwrap_or(Path::new(""));
    let path = crate::util::normalize_path(&dir.join(&rel));
    let bad = |msg: String| Diagnostic::error(Code::BadModelFile, Some(span), msg);
    let src = match read_source(&path, sources) {
        Ok(id) => id,
        Err(d) if d.code == Code::Io => {
            // The suggestion as it would be written in the recipe: relative to its folder.
            let help = similar_name(&path)
                .map(|g| Path::new(&rel).with_file_name(g).display().to_string())
                .map(|f| format!("did you mean `{f}`? Paths are relative to the recipe's folder"))
                .unwrap_or_else(|| {
                    format!(
                        "paths are relative to the recipe's folder `{}`",
                        dir.display()
                    )
                });
            diags.push(
                bad(format!(
                    "cannot read model file `{}`: {}",
                    path.display(),
                    d.message.rsplit(": ").next().unwrap_or("")
                ))
                .label("named here")
                .help(help),
            );
            return None;
        }
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let (tree, parse_diags) = yaml::parse(sources, src);
    diags.extend(parse_diags);
    let tree = tree?;
    match tree.get("kind").and_then(Node::as_str) {
        Some("model") => {}
        other => {
            diags.push(
                bad(format!(
                    "`{}` is not a model file (its kind is {})",
                    path.display(),
                    other.map_or_else(|| "missing".to_string(), |k| format!("`{k}`"))
                ))
                .label("named here")
                .help("a recipe's `model` names a file that starts with `kind: model`"),
            );
            return None;
        }
    }
    *node = tree;
    Some(path)
}
