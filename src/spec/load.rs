//! Loading documents: read, parse, compose the recipe's model, apply `--set` overrides,
//! substitute `$variables`, validate against the schema, then deserialize into the spec types.

use super::model::ModelSpec;
use super::recipe::{ModelRef, RecipeSpec, Task};
use super::schema::{model_schema, recipe_schema};
use super::validate::validate;
use super::yaml::{self, Entry, Node, Value};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Origin, SourceId, SourceMap, Span};
use std::collections::BTreeMap;
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

/// Read a file into the source map. Errors are K001 (cannot read) or K002 (not UTF-8).
pub fn read_source(path: &Path, sources: &mut SourceMap) -> Result<SourceId, Diagnostic> {
    if let Some(id) = sources.find_file(path) {
        return Ok(id);
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

/// One parsed `--set` argument.
struct Override {
    path: Vec<(String, Span)>,
    value: Node,
    whole: Span,
}

fn parse_overrides(
    overrides: &[String],
    sources: &mut SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let mut out = Vec::new();
    for (i, text) in overrides.iter().enumerate() {
        let id = sources.add(Origin::Override(i + 1), text.clone());
        let whole = Span::new(id, 0, text.len());
        let Some(eq) = text.find('=') else {
            diags.push(
                Diagnostic::error(
                    Code::BadOverride,
                    Some(whole),
                    format!("`--set {text}` has no `=`"),
                )
                .label("expected KEY.PATH=VALUE")
                .help("write e.g. `--set train.optimizer.lr=3e-4`"),
            );
            continue;
        };
        let mut path = Vec::new();
        let mut pos = 0;
        let mut ok = true;
        for seg in text[..eq].split('.') {
            let span = Span::new(id, pos, pos + seg.len());
            let seg_trim = seg.trim();
            if seg_trim.is_empty() {
                diags.push(
                    Diagnostic::error(Code::BadOverride, Some(span), "empty key in `--set` path")
                        .label("empty")
                        .help("separate keys with single dots, e.g. `train.batch_size=64`"),
                );
                ok = false;
            }
            path.push((seg_trim.to_string(), span));
            pos += seg.len() + 1;
        }
        if !ok {
            continue;
        }
        match yaml::parse_value(sources, id, eq + 1) {
            Ok(value) => out.push(Override { path, value, whole }),
            Err(d) => diags.push(d),
        }
    }
    out
}

fn apply_override(root: &mut Node, o: Override, diags: &mut Vec<Diagnostic>) {
    let mut cur = root;
    let n = o.path.len();
    for (i, (key, span)) in o.path.iter().enumerate() {
        let last = i + 1 == n;
        let shown: Vec<&str> = o.path[..i].iter().map(|(k, _)| k.as_str()).collect();
        let parent = if shown.is_empty() {
            "the document".to_string()
        } else {
            format!("`{}`", shown.join("."))
        };
        let what = cur.describe();
        match &mut cur.value {
            Value::Map(entries) => {
                let idx = match entries.iter().position(|e| &e.key == key) {
                    Some(idx) => idx,
                    None => {
                        entries.push(Entry {
                            key: key.clone(),
                            key_span: *span,
                            value: Node::new(Value::Map(Vec::new()), *span),
                        });
                        entries.len() - 1
                    }
                };
                if last {
                    entries[idx].key_span = *span;
                    entries[idx].value = o.value;
                    return;
                }
                cur = &mut entries[idx].value;
            }
            Value::Seq(items) => {
                let len = items.len();
                let Some(idx) = key.parse::<usize>().ok().filter(|&i| i < len) else {
                    diags.push(
                        Diagnostic::error(Code::BadOverride, Some(*span), format!("{parent} is a list of {len} items; `{key}` is not an index into it"))
                            .label("not a valid index")
                            .help(format!("use a number from 0 to {}", len.saturating_sub(1))),
                    );
                    return;
                };
                if last {
                    items[idx] = o.value;
                    return;
                }
                cur = &mut items[idx];
            }
            _ => {
                diags.push(
                    Diagnostic::error(
                        Code::BadOverride,
                        Some(*span),
                        format!("cannot set `{key}` inside {parent}: it is {what}, not a mapping"),
                    )
                    .label("cannot go into a plain value")
                    .note(o.whole, "in this override")
                    .help(format!(
                        "set {parent} itself (`--set PATH=VALUE` with its path), or leave out `.{key}`"
                    )),
                );
                return;
            }
        }
    }
}

/// Replace every `$name` string in a model (outside `vars`) by the value of variable `name`.
fn substitute_vars(model: &mut Node, diags: &mut Vec<Diagnostic>) {
    let vars: BTreeMap<String, (Node, Span)> = model
        .get("vars")
        .and_then(Node::as_map)
        .map(|m| {
            m.iter()
                .map(|e| (e.key.clone(), (e.value.clone(), e.key_span)))
                .collect()
        })
        .unwrap_or_default();
    let Value::Map(entries) = &mut model.value else {
        return;
    };
    for e in entries.iter_mut().filter(|e| e.key != "vars") {
        substitute(&mut e.value, &vars, diags);
    }
}

fn substitute(node: &mut Node, vars: &BTreeMap<String, (Node, Span)>, diags: &mut Vec<Diagnostic>) {
    match &mut node.value {
        Value::Str(s) if is_var_ref(s) => {
            let name = s[1..].to_string();
            match vars.get(&name) {
                Some((value, def_span)) => {
                    node.value = value.value.clone();
                    node.via = Some(Box::new((name, *def_span)));
                }
                None => {
                    let guess = did_you_mean(&name, vars.keys().map(String::as_str));
                    diags.push(
                        Diagnostic::error(
                            Code::UndefinedVariable,
                            Some(node.span),
                            format!("undefined variable `${name}`"),
                        )
                        .label("not defined in `vars`")
                        .help(match guess {
                            Some(g) => format!("did you mean `${g}`?"),
                            None if vars.is_empty() => {
                                format!("define it in the model: `vars: {{{name}: ...}}`")
                            }
                            None => format!(
                                "define it under `vars:` (defined: {})",
                                one_of(&vars.keys().map(|k| format!("${k}")).collect::<Vec<_>>())
                            ),
                        }),
                    );
                }
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| substitute(n, vars, diags)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|e| substitute(&mut e.value, vars, diags)),
        _ => {}
    }
}

fn is_var_ref(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some('$')
        && chars
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && s[2..]
            .chars()
            .all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The span of the value at `path` (keys of nested mappings), or the deepest one that exists.
pub fn span_at(tree: &Node, path: &[&str]) -> Span {
    let mut cur = tree;
    let mut span = tree.span;
    for key in path {
        match cur.entry(key) {
            Some(e) => {
                span = e.value.span;
                cur = &e.value;
            }
            None => break,
        }
    }
    span
}

/// Key span of the entry at `path`, falling back to [`span_at`].
pub fn key_span_at(tree: &Node, path: &[&str]) -> Span {
    let (last, parent) = path.split_last().expect("non-empty path");
    let mut cur = tree;
    for key in parent {
        match cur.get(key) {
            Some(n) => cur = n,
            None => return span_at(tree, path),
        }
    }
    cur.entry(last)
        .map_or_else(|| span_at(tree, path), |e| e.key_span)
}

/// Checks across fields of a recipe (K200).
fn check_recipe(spec: &RecipeSpec, tree: &Node, diags: &mut Vec<Diagnostic>) {
    let t = &spec.train;
    match (t.steps, t.epochs) {
        (Some(_), Some(_)) => diags.push(
            Diagnostic::error(
                Code::Conflict,
                Some(key_span_at(tree, &["train", "epochs"])),
                "`train` gives both `steps` and `epochs`",
            )
            .label("remove this or `steps`")
            .note(key_span_at(tree, &["train", "steps"]), "steps given here")
            .help("the run's length is either a number of optimizer steps or of epochs"),
        ),
        (None, None) => diags.push(
            Diagnostic::error(
                Code::Conflict,
                Some(key_span_at(tree, &["train"])),
                "`train` needs `steps` or `epochs`",
            )
            .label("how long to train is not given")
            .help("add e.g. `steps: 2000` (optimizer steps) or `epochs: 50`"),
        ),
        _ => {}
    }
    if let (
        Some(steps),
        super::recipe::Schedule::WarmupCosine { warmup_steps, .. }
        | super::recipe::Schedule::InverseSqrt { warmup_steps, .. },
    ) = (t.steps, &t.schedule)
    {
        if *warmup_steps > steps {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(span_at(tree, &["train", "schedule", "warmup_steps"])),
                    format!(
                        "warm-up of {warmup_steps} steps is longer than the run ({steps} steps)"
                    ),
                )
                .label("longer than `train.steps`")
                .help("shorten the warm-up or train for more steps"),
            );
        }
    }
    check_decode(spec, tree, diags);
    if let Task::Forecast(f) = &spec.task {
        let mut conflict = |path: &[&str], msg: String, label: &str, help: &str| {
            diags.push(
                Diagnostic::error(Code::Conflict, Some(key_span_at(tree, path)), msg)
                    .label(label)
                    .help(help),
            );
        };
        if f.season > f.lookback {
            conflict(
                &["task", "season"],
                format!(
                    "the seasonal-naive baseline needs a season ({}) within the lookback ({})",
                    f.season, f.lookback
                ),
                "longer than the lookback",
                "make `lookback` at least `season`",
            );
        }
        if spec.train.curriculum.is_some() {
            conflict(
                &["train", "curriculum"],
                "a sequence-length curriculum cuts token sequences; a forecasting task reads fixed windows".into(),
                "not for forecasts",
                "remove `train.curriculum`",
            );
        }
        if spec.train.regularizers.distribution.is_some() {
            conflict(
                &["train", "regularizers", "distribution"],
                "the multi-scale distribution loss compares class histograms; a forecast has no classes".into(),
                "not for forecasts",
                "remove `distribution`",
            );
        }
    } else if let Some(d) = &spec.train.regularizers.distribution {
        let vocab = spec.task.vocab();
        for &s in &d.scales {
            if s < 2 || u64::from(s) > vocab {
                diags.push(
                    Diagnostic::error(
                        Code::Conflict,
                        Some(span_at(
                            tree,
                            &["train", "regularizers", "distribution", "scales"],
                        )),
                        format!("a scale of {s} bins does not fit the task's {vocab} classes"),
                    )
                    .label("number of bins")
                    .help(format!("each scale is a number of bins from 2 to {vocab}")),
                );
            }
        }
    }
    if let Some(c) = &spec.train.curriculum {
        if c.steps.is_some() == c.epochs.is_some() {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["train", "curriculum"])),
                    "a sequence-length curriculum needs `steps` or `epochs` (exactly one)",
                )
                .label("how long it grows")
                .help("give e.g. `steps: 200` or `epochs: 2`"),
            );
        }
    }
    if let Some(f) = &spec.train.frequency_curriculum {
        if f.end < f.start {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["train", "frequency_curriculum", "end"])),
                    format!(
                        "the frequency curriculum ends at cutoff {} below its start {}",
                        f.end, f.start
                    ),
                )
                .label("below `start`")
                .help("the cutoff grows: make `end` at least `start` (1 is the whole band)"),
            );
        }
    }
    if let Some(e) = &spec.ensemble {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = e.seeds.iter().find(|s| !seen.insert(**s)) {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["ensemble", "seeds"])),
                    format!("seed {dup} appears twice in `ensemble.seeds`: the two members would be the same model"),
                )
                .label("repeated seed")
                .help("give every member its own seed"),
            );
        }
    }
    if let Task::Uint16 {
        val_fraction,
        test_fraction,
        ..
    } = &spec.task
    {
        if val_fraction + test_fraction >= 1.0 {
            diags.push(
                Diagnostic::error(
                    Code::Conflict,
                    Some(key_span_at(tree, &["task", "val_fraction"])),
                    "validation and test fractions leave no training data",
                )
                .label("val_fraction + test_fraction ≥ 1")
                .help("keep val_fraction + test_fraction below 1, e.g. 0.1 each"),
            );
        }
    }
}

/// Contradictions inside `decode` (the schema checks each value on its own).
fn check_decode(spec: &super::recipe::RecipeSpec, tree: &Node, diags: &mut Vec<Diagnostic>) {
    use super::recipe::Strategy;
    let d = &spec.decode;
    let mut err = |key: &str, msg: String, label: &str, help: &str| {
        diags.push(
            Diagnostic::error(
                Code::Conflict,
                Some(key_span_at(tree, &["decode", key])),
                msg,
            )
            .label(label)
            .help(help),
        );
    };
    let beams = matches!(
        d.strategy,
        Strategy::Beam | Strategy::GroupBeam | Strategy::BeamSample
    );
    if beams && d.num_beams < 2 {
        err(
            "strategy",
            "beam strategies need `num_beams` of at least 2".into(),
            "needs several beams",
            "set e.g. `num_beams: 4`, or use `strategy: greedy`",
        );
    }
    if !beams && d.num_beams > 1 {
        err(
            "num_beams",
            format!(
                "`num_beams: {}` has no effect with this strategy",
                d.num_beams
            ),
            "only beam strategies use beams",
            "use `strategy: beam` (or group_beam, beam_sample), or remove `num_beams`",
        );
    }
    if d.strategy == Strategy::GroupBeam && d.num_beam_groups < 2 {
        err(
            "strategy",
            "`group_beam` decoding needs `num_beam_groups` of at least 2".into(),
            "needs several groups",
            "set e.g. `num_beam_groups: 2` with `num_beams: 4`",
        );
    }
    if d.num_beam_groups > 1 && !d.num_beams.is_multiple_of(d.num_beam_groups) {
        err(
            "num_beam_groups",
            format!(
                "`num_beams` ({}) is not divisible by `num_beam_groups` ({})",
                d.num_beams, d.num_beam_groups
            ),
            "must divide num_beams",
            "every group gets num_beams / num_beam_groups beams: choose a divisor",
        );
    }
    if d.num_beam_groups > 1 && d.strategy != Strategy::GroupBeam {
        err(
            "num_beam_groups",
            "`num_beam_groups` is only used by `strategy: group_beam`".into(),
            "no effect here",
            "use `strategy: group_beam`, or remove `num_beam_groups`",
        );
    }
    if beams && d.num_return_sequences > d.num_beams {
        err(
            "num_return_sequences",
            format!(
                "`num_return_sequences` ({}) exceeds `num_beams` ({})",
                d.num_return_sequences, d.num_beams
            ),
            "more than the beams",
            "beam search returns at most one sequence per beam",
        );
    }
    if d.strategy == Strategy::Greedy && d.num_return_sequences > 1 {
        err(
            "num_return_sequences",
            "greedy decoding returns one sequence per prompt".into(),
            "all copies would be identical",
            "use `strategy: sample` or a beam strategy for several sequences",
        );
    }
    if let Some(max) = d.max_length {
        if d.min_length > max {
            err(
                "min_length",
                format!(
                    "`min_length` ({}) exceeds `max_length` ({max})",
                    d.min_length
                ),
                "longer than max_length",
                "make min_length at most max_length",
            );
        }
    }
    if let Some(max) = d.max_new_tokens {
        if d.min_new_tokens > max {
            err(
                "min_new_tokens",
                format!(
                    "`min_new_tokens` ({}) exceeds `max_new_tokens` ({max})",
                    d.min_new_tokens
                ),
                "longer than max_new_tokens",
                "make min_new_tokens at most max_new_tokens",
            );
        }
    }
    let vocab = spec.task.vocab();
    for (key, id) in [
        ("eos_token_id", d.eos_token_id),
        ("pad_token_id", d.pad_token_id),
    ] {
        if let Some(id) = id.filter(|&i| u64::from(i) >= vocab) {
            err(
                key,
                format!("token id {id} is outside the task's vocabulary of {vocab}"),
                "no such token",
                "token ids run from 0 to vocab − 1",
            );
        }
    }
    if d.bad_words_ids
        .iter()
        .flatten()
        .any(|&i| u64::from(i) >= vocab)
    {
        err(
            "bad_words_ids",
            format!("`bad_words_ids` names a token outside the task's vocabulary of {vocab}"),
            "no such token",
            "token ids run from 0 to vocab − 1",
        );
    }
    if let Some(bad) = d.bad_words_ids.iter().position(Vec::is_empty) {
        err(
            "bad_words_ids",
            format!("`bad_words_ids` entry {bad} is empty"),
            "an empty sequence",
            "each entry is a non-empty list of token ids",
        );
    }
}
