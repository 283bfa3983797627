//! Completion of keys, layer types and enum values from the JSON Schemas (the committed
//! `schemas/*.json` are these, generated from the same types), and of `$variables`.
//!
//! The buffer is usually mid-edit and does not parse, so the place of the cursor is read
//! from the indentation of the lines above it and the brackets of its own line.

use super::text::Lines;
use lsp_types as lsp;
use serde_json::Value as Json;

/// One step of a path in the document: a mapping key or a list item.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Item,
}

/// What the cursor is completing.
#[derive(Debug, PartialEq)]
enum Want {
    /// A key of the mapping at the path.
    Key,
    /// The value of this key of the mapping at the path.
    Value(String),
}

/// Completions at `pos` in `text`.
pub(super) fn complete(text: &str, pos: lsp::Position) -> Vec<lsp::CompletionItem> {
    let lines = Lines::new(text);
    let line = lines.line(pos.line as usize);
    let start = lines.offset(lsp::Position::new(pos.line, 0));
    let before = text
        .get(start..lines.offset(pos).max(start))
        .unwrap_or("")
        .trim_end_matches('\r');
    let Some(ctx) = Context::read(&lines, pos.line as usize, before, line) else {
        return Vec::new();
    };
    let recipe = text
        .lines()
        .any(|l| l.trim_end() == "kind: recipe" || l.starts_with("kind: recipe "));
    let root = if recipe {
        crate::spec::schema::recipe_schema()
    } else {
        crate::spec::schema::model_schema()
    };
    if ctx.prefix.starts_with('$') {
        return variables(text);
    }
    let mut schemas = vec![root];
    for seg in &ctx.path {
        schemas = schemas
            .iter()
            .flat_map(|s| alternatives(root, s))
            .filter_map(|s| match seg {
                Seg::Key(k) => s.pointer(&format!("/properties/{}", escape(k))),
                Seg::Item => s.get("items").filter(|i| i.is_object()),
            })
            .collect();
    }
    let objects: Vec<&Json> = schemas
        .iter()
        .flat_map(|s| alternatives(root, s))
        .filter(|s| s.get("properties").is_some())
        .collect();
    let of_type = |keep_all: bool| -> Vec<&Json> {
        let ty = ctx
            .siblings
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v);
        let matching: Vec<&Json> = objects
            .iter()
            .copied()
            .filter(|o| {
                ty.is_some_and(|t| {
                    o.pointer("/properties/type/const").and_then(Json::as_str) == Some(t)
                })
            })
            .collect();
        if keep_all || matching.is_empty() {
            objects.clone()
        } else {
            matching
        }
    };
    let mut items = Vec::new();
    match &ctx.want {
        Want::Key => {
            for o in of_type(false) {
                let Some(props) = o.get("properties").and_then(Json::as_object) else {
                    continue;
                };
                for (k, p) in props {
                    if ctx.siblings.iter().any(|(s, _)| s == k) {
                        continue;
                    }
                    items.push(item(
                        k,
                        lsp::CompletionItemKind::PROPERTY,
                        p,
                        format!("{k}: "),
                    ));
                }
            }
        }
        Want::Value(key) => {
            for o in of_type(key == "type") {
                let Some(p) = o.pointer(&format!("/properties/{}", escape(key))) else {
                    continue;
                };
                for alt in alternatives(root, p) {
                    values(alt, o, key, &mut items);
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.label.clone()));
    items
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn description(s: &Json) -> Option<String> {
    s.get("description")
        .and_then(Json::as_str)
        .map(str::to_string)
}

fn item(
    label: &str,
    kind: lsp::CompletionItemKind,
    doc: &Json,
    insert: String,
) -> lsp::CompletionItem {
    let d = description(doc);
    lsp::CompletionItem {
        label: label.to_string(),
        kind: Some(kind),
        detail: d
            .as_ref()
            .and_then(|d| d.lines().next())
            .map(str::to_string),
        documentation: d.map(|d| {
            lsp::Documentation::MarkupContent(lsp::MarkupContent {
                kind: lsp::MarkupKind::Markdown,
                value: d,
            })
        }),
        insert_text: Some(insert),
        ..Default::default()
    }
}

/// The values a schema allows that can be listed: constants, enums, booleans.
fn values(s: &Json, object: &Json, key: &str, out: &mut Vec<lsp::CompletionItem>) {
    // A layer's `type` documents the layer: describe the value by its object.
    let doc = if key == "type" { object } else { s };
    if let Some(c) = s.get("const").and_then(Json::as_str) {
        out.push(item(
            c,
            lsp::CompletionItemKind::ENUM_MEMBER,
            doc,
            c.to_string(),
        ));
    }
    for v in s.get("enum").and_then(Json::as_array).into_iter().flatten() {
        if let Some(v) = v.as_str() {
            out.push(item(
                v,
                lsp::CompletionItemKind::ENUM_MEMBER,
                doc,
                v.to_string(),
            ));
        }
    }
    let types = match s.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"boolean") {
        for b in ["true", "false"] {
            out.push(item(b, lsp::CompletionItemKind::VALUE, doc, b.to_string()));
        }
    }
}

/// A schema's alternatives, references followed and `oneOf`/`anyOf`/`allOf` flattened.
fn alternatives<'a>(root: &'a Json, s: &'a Json) -> Vec<&'a Json> {
    let mut out = Vec::new();
    let mut stack = vec![(s, 0)];
    while let Some((s, depth)) = stack.pop() {
        if depth > 32 {
            continue;
        }
        if let Some(r) = s.get("$ref").and_then(Json::as_str) {
            if let Some(t) = r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                stack.push((t, depth + 1));
            }
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for sub in s
                .get(key)
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .rev()
            {
                stack.push((sub, depth + 1));
            }
        }
        out.push(s);
    }
    out
}

/// `$name` completions: the variables defined under `vars:` (block or flow style).
fn variables(text: &str) -> Vec<lsp::CompletionItem> {
    let mut names = Vec::new();
    let mut vars_indent = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(vi) = vars_indent {
            if indent <= vi {
                vars_indent = None;
            } else if let Some((k, _)) = body.split_once(':') {
                names.push(k.trim().to_string());
                continue;
            }
        }
        if let Some(rest) = body.strip_prefix("vars:") {
            let rest = rest.trim();
            if let Some(flow) = rest.strip_prefix('{') {
                for part in flow.trim_end_matches('}').split(',') {
                    if let Some((k, _)) = part.split_once(':') {
                        names.push(k.trim().to_string());
                    }
                }
            } else if rest.is_empty() {
                vars_indent = Some(indent);
            }
        }
    }
    names
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| lsp::CompletionItem {
            label: format!("${n}"),
            kind: Some(lsp::CompletionItemKind::VARIABLE),
            insert_text: Some(format!("${n}")),
            filter_text: Some(format!("${n}")),
            ..Default::default()
        })
        .collect()
}

/// Where the cursor is.
struct Context {
    path: Vec<Seg>,
    want: Want,
    prefix: String,
    /// The keys (and plain values) of the mapping the cursor is in.
    siblings: Vec<(String, String)>,
}

/// A block line: its dash columns and the column and text of what follows them.
struct Shape<'a> {
    dashes: Vec<usize>,
    col: usize,
    rest: &'a str,
}

fn shape(line: &str) -> Option<Shape<'_>> {
    let mut col = line.len() - line.trim_start_matches(' ').len();
    let mut rest = &line[col..];
    let mut dashes = Vec::new();
    while rest == "-" || rest.starts_with("- ") {
        dashes.push(col);
        let t = rest[1..].trim_start_matches(' ');
        col += rest.len() - t.len();
        rest = t;
    }
    (!rest.starts_with('#')).then_some(Shape { dashes, col, rest })
}

/// The block key a line starts with (`key:` followed by a space or the end).
fn block_key(rest: &str) -> Option<&str> {
    let (k, v) = rest.split_once(':')?;
    (v.is_empty() || v.starts_with(' '))
        .then(|| k.trim())
        .filter(|k| !k.is_empty() && !k.contains(['{', '[', '"', '\'']))
}

impl Context {
    fn read(lines: &Lines, row: usize, before: &str, line: &str) -> Option<Context> {
        let me = shape(before)?;
        // The line's own flow brackets.
        let mut frames: Vec<(char, Option<String>, usize)> = Vec::new();
        let mut key: Option<String> = None;
        let mut tok = 0;
        let chars: Vec<(usize, char)> = me.rest.char_indices().collect();
        for (n, &(i, c)) in chars.iter().enumerate() {
            let next = chars.get(n + 1).map(|x| x.1);
            match c {
                ':' if next.is_none_or(|c| c == ' ') => {
                    key = Some(me.rest[tok..i].trim().to_string());
                    tok = i + 1;
                }
                '{' | '[' => {
                    frames.push((c, key.take(), i + 1));
                    tok = i + 1;
                }
                ',' => {
                    key = None;
                    tok = i + 1;
                }
                '}' | ']' => {
                    frames.pop();
                    key = None;
                    tok = i + 1;
                }
                _ => {}
            }
        }
        let mut path = Vec::new();
        let mut state = match me.dashes.first() {
            Some(&d) => State::ListOwner(d),
            None => State::Parent(me.col),
        };
        // The ancestors, from the lines above.
        for r in (0..row).rev() {
            let l = lines.line(r);
            let Some(s) = shape(l).filter(|s| !s.rest.is_empty() || !s.dashes.is_empty()) else {
                continue;
            };
            let k = s.col;
            let last_dash = s.dashes.last().copied();
            let owner = match state {
                State::Parent(c) => k < c || (k == c && !s.dashes.is_empty()),
                State::ListOwner(c) => k <= c && s.dashes.first().is_none_or(|&d| d < c),
            };
            if !owner {
                continue;
            }
            let same_item = matches!(state, State::Parent(c) if k == c);
            if !same_item {
                match block_key(s.rest) {
                    Some(key) => path.push(Seg::Key(key.to_string())),
                    None if s.dashes.is_empty() => return None,
                    None => {}
                }
            }
            state = match last_dash {
                Some(d) => {
                    path.push(Seg::Item);
                    State::ListOwner(d)
                }
                None => State::Parent(k),
            };
        }
        path.reverse();
        path.extend(me.dashes.iter().map(|_| Seg::Item));
        let block_siblings = frames.is_empty();
        for (open, k, _) in &frames {
            if let Some(k) = k {
                path.push(Seg::Key(k.clone()));
            }
            if *open == '[' {
                path.push(Seg::Item);
            }
        }
        let prefix = me.rest[tok..].trim().to_string();
        let want = match key {
            Some(k) => Want::Value(k),
            None if matches!(frames.last(), Some(('[', _, _))) => return None,
            None => Want::Key,
        };
        let siblings = if block_siblings {
            block_siblings_of(lines, row, me.col, !me.dashes.is_empty())
        } else {
            let (_, _, from) = frames.last().expect("a frame");
            // `before` is the start of `line`, and `rest` the end of `before`.
            let start = before.len() - me.rest.len() + from;
            flow_siblings(line.get(start..).unwrap_or(""))
        };
        Some(Context {
            path,
            want,
            prefix,
            siblings,
        })
    }
}

#[derive(Clone, Copy)]
enum State {
    /// Looking for the mapping that holds a key at this column.
    Parent(usize),
    /// Looking for the key whose value is the list with dashes at this column.
    ListOwner(usize),
}

fn block_siblings_of(lines: &Lines, row: usize, col: usize, first: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut take = |s: &Shape| {
        if let Some(k) = block_key(s.rest) {
            let v = s.rest.split_once(':').map_or("", |x| x.1).trim();
            out.push((k.to_string(), v.to_string()));
        }
    };
    if !first {
        for r in (0..row).rev() {
            let Some(s) = shape(lines.line(r)).filter(|s| !s.rest.is_empty()) else {
                continue;
            };
            if s.col < col || (s.col == col && !s.dashes.is_empty()) {
                if s.col == col {
                    take(&s);
                }
                break;
            }
            if s.col == col {
                take(&s);
            }
        }
    }
    for r in row + 1..lines.count() {
        let Some(s) = shape(lines.line(r)).filter(|s| !s.rest.is_empty()) else {
            continue;
        };
        if s.col < col || (!s.dashes.is_empty() && s.col <= col) {
            break;
        }
        if s.col == col {
            take(&s);
        }
    }
    out
}

/// `key: value` pairs of a flow mapping's text (up to its closing brace).
fn flow_siblings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut part = String::new();
    let mut flush = |part: &mut String| {
        if let Some((k, v)) = part.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
        part.clear();
    };
    for c in text.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' if depth == 0 => break,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                flush(&mut part);
                continue;
            }
            _ => {}
        }
        part.push(c);
    }
    flush(&mut part);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Vec<String> {
        let at = text.find('|').unwrap();
        let clean = text.replace('|', "");
        let pos = Lines::new(&clean).position(at);
        complete(&clean, pos).into_iter().map(|i| i.label).collect()
    }

    #[test]
    fn layer_types_keys_and_values() {
        let types = labels("kind: model\nlayers:\n  - type: |\n");
        assert!(types.contains(&"attention".to_string()), "{types:?}");
        assert!(types.contains(&"embedding".to_string()));
        let keys = labels("kind: model\nlayers:\n  - type: attention\n    |\n");
        assert!(keys.contains(&"heads".to_string()), "{keys:?}");
        assert!(!keys.contains(&"type".to_string()));
        assert!(!keys.contains(&"dim".to_string()), "{keys:?}");
        let flow = labels("kind: model\nlayers:\n  - {type: repeat, times: 2, body: [{type: |");
        assert!(flow.contains(&"rmsnorm".to_string()), "{flow:?}");
        let flow_keys = labels("kind: model\nlayers:\n- {type: attention, |}");
        assert!(flow_keys.contains(&"kv_heads".to_string()), "{flow_keys:?}");
        let top = labels("kind: recipe\n|");
        assert!(top.contains(&"train".to_string()) && top.contains(&"task".to_string()));
        let nested = labels("kind: recipe\ntrain:\n  optimizer:\n    |");
        assert!(nested.contains(&"lr".to_string()), "{nested:?}");
        let boolean = labels("kind: model\nlayers:\n  - type: embedding\n    scale: |");
        assert_eq!(boolean, ["true", "false"]);
        let vars = labels(
            "kind: model\nvars:\n  d: 8\n  depth: 2\nlayers:\n  - {type: embedding, dim: $|",
        );
        assert_eq!(vars, ["$d", "$depth"]);
    }
}
