//! `kiln validate`, `kiln schema` and `kiln graph`.

use super::{color, Format, GraphFormat};
use crate::diag::{self, render_json, render_text, Code, Diagnostic, SourceMap};
use crate::spec::{self, schema, Document};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(super) fn validate(files: &[PathBuf], set: &[String], format: Format) -> i32 {
    let mut status = 0;
    let mut json_files = Vec::new();
    for file in files {
        let mut sources = SourceMap::new();
        let result = crate::compile::check(file, set, &mut sources);
        // A recipe's training memory: in the summary, and a warning when it cannot fit here.
        let mut memory = None;
        let (diags, file_status, summary) = match &result {
            Ok((doc, graph)) => {
                let mut summary = describe(doc);
                if let Document::Recipe(r) = doc {
                    let est = crate::train::memory::training(graph, &r.spec, 1);
                    summary.push_str(&format!(
                        ", training needs {}",
                        crate::os::memory::human(est.total())
                    ));
                    memory = Some((est.total(), est.check("training").err()));
                }
                (Vec::new(), 0, summary)
            }
            Err(e) => (
                e.diags.clone(),
                if e.unreadable() { 2 } else { 1 },
                String::new(),
            ),
        };
        status = status.max(file_status);
        match format {
            Format::Text => {
                if !diags.is_empty() {
                    eprint!("{}", render_text(&diags, &sources, color()));
                    let n = diags.iter().filter(|d| d.is_error()).count();
                    eprintln!(
                        "{}: {n} error{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    );
                } else {
                    println!("{}: ok ({summary})", file.display());
                    if let Some((_, Some(w))) = &memory {
                        eprintln!("warning: {}: {w}", file.display());
                    }
                }
            }
            Format::Json => {
                let mut entry = serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": file_status == 0,
                    "diagnostics": render_json(&diags, &sources),
                });
                if let Some((bytes, warning)) = &memory {
                    entry["training_memory_bytes"] = (*bytes).into();
                    entry["memory_warning"] = warning.clone().into();
                }
                json_files.push(entry);
            }
        }
    }
    if format == Format::Json {
        let out = serde_json::json!({ "files": json_files });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("json serializes")
        );
    }
    status
}

fn describe(doc: &Document) -> String {
    match doc {
        Document::Model(m) => format!(
            "model{}, {} top-level layers",
            m.spec
                .name
                .as_ref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default(),
            m.spec.layers.len()
        ),
        Document::Recipe(r) => format!(
            "recipe{}, model {}",
            r.spec
                .name
                .as_ref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default(),
            r.model_path
                .as_ref()
                .map_or_else(|| "inline".to_string(), |p| format!("`{}`", p.display()))
        ),
    }
}

pub(super) fn schema_cmd(out: Option<&Path>, check: Option<&Path>) -> i32 {
    let schemas = schema::all();
    if let Some(dir) = check {
        let mut stale = Vec::new();
        for (name, s) in &schemas {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(schema::to_text(s).as_str()) {
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            println!("schemas in {} are up to date", dir.display());
            return 0;
        }
        eprintln!(
            "stale schemas: {}\nrun `kiln schema --out {}` and commit the result",
            stale.join(", "),
            dir.display()
        );
        return 1;
    }
    let Some(dir) = out else {
        let (_, recipe) = schemas
            .iter()
            .find(|(n, _)| *n == "recipe.schema.json")
            .expect("recipe schema exists");
        print!("{}", schema::to_text(recipe));
        return 0;
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        report_io(&format!("cannot create `{}`: {e}", dir.display()));
        return 2;
    }
    for (name, s) in &schemas {
        let path = dir.join(name);
        if let Err(e) = crate::util::write_atomic(&path, schema::to_text(s).as_bytes()) {
            report_io(&format!("cannot write `{}`: {e}", path.display()));
            return 2;
        }
        println!("wrote {}", path.display());
    }
    0
}

fn report_io(msg: &str) {
    let d = Diagnostic::error(Code::Io, None, msg);
    let mut diags = vec![d];
    diag::sort(&mut diags);
    let _ = std::io::stderr().write_all(render_text(&diags, &SourceMap::new(), color()).as_bytes());
}

#[allow(clippy::too_many_arguments)]
pub(super) fn graph_cmd(
    file: &Path,
    set: &[String],
    no_opt: bool,
    passes: Option<Vec<String>>,
    format: GraphFormat,
    vocab: Option<u64>,
    seq: Option<u64>,
) -> i32 {
    let mut sources = SourceMap::new();
    let doc = match spec::load(file, set, &mut sources) {
        Ok(doc) => doc,
        Err(e) => {
            eprint!("{}", render_text(&e.diags, &sources, color()));
            return if e.unreadable() { 2 } else { 1 };
        }
    };
    let mut graph = match crate::lower::lower_document(&doc, vocab, seq) {
        Ok(g) => g,
        Err(diags) => {
            eprint!("{}", render_text(&diags, &sources, color()));
            return 1;
        }
    };
    let selected = match (no_opt, passes) {
        (true, _) => Vec::new(),
        (false, None) => crate::passes::ALL.iter().collect(),
        (false, Some(names)) => match crate::passes::by_name(&names) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    let changes = match crate::passes::optimize(&mut graph, &selected, cfg!(debug_assertions)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("internal error: {e}");
            return 3;
        }
    };
    let seq = match &doc {
        Document::Recipe(r) => r.spec.task.max_seq(),
        Document::Model(_) => seq.unwrap_or(128),
    };
    let params = graph.param_count();
    let act = graph.activation_bytes(seq);
    let causal = crate::lower::is_causal(&graph);
    let summary = vec![
        format!(
            "{}: {} parameters, {} ops",
            graph.name,
            crate::util::group_digits(params),
            graph.g.node_count()
        ),
        format!(
            "activation memory ≈ {} per example at seq {seq} (f32, all intermediate values)",
            human_bytes(act)
        ),
        format!(
            "causal: {}",
            if causal {
                "yes"
            } else {
                "no (a position can see later positions)"
            }
        ),
        format!(
            "passes: {}",
            if selected.is_empty() {
                "none".to_string()
            } else {
                selected
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    ];
    match format {
        GraphFormat::Text => {
            print!("{}", crate::ir::print::to_text(&graph));
            for line in &summary {
                println!("# {line}");
            }
            for c in &changes {
                println!("# {}: {}", c.pass, c.what);
            }
        }
        GraphFormat::Dot => {
            print!("{}", crate::ir::print::to_dot(&graph));
            for line in &summary {
                eprintln!("# {line}");
            }
        }
        GraphFormat::Json => {
            let v = serde_json::json!({
                "graph": crate::ir::print::to_json(&graph),
                "params": params,
                "activation_bytes_per_example": act,
                "seq": seq,
                "causal": causal,
                "changes": changes.iter().map(|c| serde_json::json!({"pass": c.pass, "change": c.what})).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("json serializes")
            );
        }
    }
    0
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}
