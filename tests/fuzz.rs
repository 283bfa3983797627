//! Robustness: no input makes the loader panic or hang, and every diagnostic points inside its
//! source. Two generators: arbitrary bytes, and bundled recipes mutated with YAML-significant
//! edits. `PROPTEST_CASES=100000 cargo test --release --test fuzz` runs a longer campaign.

use kiln::diag::SourceMap;
use proptest::prelude::*;
use std::path::Path;

fn check(name: &str, bytes: Vec<u8>, overrides: &[String]) {
    let mut sources = SourceMap::new();
    let result = kiln::spec::load::load_bytes(Path::new(name), bytes, overrides, &mut sources);
    if let Err(e) = result {
        assert!(!e.diags.is_empty(), "rejected without a diagnostic");
        for d in &e.diags {
            assert!(
                d.help.is_some() || d.code.as_str() == "K001",
                "no help: {d:?}"
            );
            if let Some(span) = d.span {
                let text = &sources.get(span.src).text;
                assert!(
                    span.start <= span.end && span.end <= text.len(),
                    "span out of range: {d:?}"
                );
            }
        }
        // Rendering must not panic either.
        let _ = kiln::diag::render_text(&e.diags, &sources, false);
        let _ = kiln::diag::render_json(&e.diags, &sources);
    }
}

const TOKENS: &[&str] = &[
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\t",
    "&a ",
    "*a",
    "\"",
    "'",
    "#",
    "\n",
    "  ",
    "$x",
    "$",
    "1e999",
    "-1",
    "~",
    "!!str ",
    "!foo ",
    "? ",
    "|\n",
    ">\n",
    "---\n",
    "...\n",
    "0x",
    ".nan",
    "99999999999999999999",
    "type: ",
    "kind: ",
    "layers:",
    "\u{feff}",
    "\r\n",
    "\0",
    "\u{1F600}",
    "%YAML 1.2\n",
];

fn bundled_texts() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for dir in ["recipes", "models"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            v.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    v.sort();
    v
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..20).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Edit::Insert(a, t)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<usize>(), 0usize..4).prop_map(|(a, n)| Edit::Indent(a, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    let floor = |s: &str, i: usize| {
        let mut i = if s.is_empty() { 0 } else { i % (s.len() + 1) };
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    for e in edits {
        match e {
            Edit::Delete(a, n) => {
                let a = floor(&s, *a);
                let b = floor(&s, (a + n).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Edit::Insert(a, t) => {
                let a = floor(&s, *a);
                s.insert_str(a, TOKENS[*t]);
            }
            Edit::DuplicateLine(i) | Edit::Indent(i, _) | Edit::SwapLines(i, _) => {
                let mut lines: Vec<String> = s.lines().map(String::from).collect();
                if lines.is_empty() {
                    continue;
                }
                let i = i % lines.len();
                match e {
                    Edit::DuplicateLine(_) => lines.insert(i, lines[i].clone()),
                    Edit::Indent(_, n) => lines[i].insert_str(0, &" ".repeat(*n)),
                    Edit::SwapLines(_, j) => {
                        let j = j % lines.len();
                        lines.swap(i, j);
                    }
                    _ => unreachable!(),
                }
                s = lines.join("\n");
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check("recipes/fuzz.yaml", bytes, &[]);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\t\n\u{a0}-\u{ff}]{0,400}") {
        check("recipes/fuzz.yaml", text.into_bytes(), &[]);
    }

    #[test]
    fn mutated_bundled_documents_never_panic(
        which in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let texts = bundled_texts();
        let (name, text) = &texts[which % texts.len()];
        check(name, apply(text, &edits).into_bytes(), &[]);
    }

    #[test]
    fn arbitrary_overrides_never_panic(
        key in "[a-z_.0-9]{0,30}",
        value in "[ -~]{0,30}",
    ) {
        let text = std::fs::read("recipes/default.yaml").unwrap();
        check("recipes/default.yaml", text, &[format!("{key}={value}")]);
    }
}

#[test]
fn pathological_inputs_give_diagnostics() {
    let deep_flow = "[".repeat(100_000).into_bytes();
    let deep_block: String = (0..2000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let long_line = format!("kind: model\nname: {}\n", "x".repeat(1 << 20));
    let many_keys: String = (0..50_000).map(|i| format!("k{i}: {i}\n")).collect();
    for (name, bytes) in [
        ("deep_flow", deep_flow),
        ("deep_block", deep_block.into_bytes()),
        ("long_line", long_line.into_bytes()),
        ("many_keys", many_keys.into_bytes()),
        ("nul", vec![0; 1000]),
        (
            "bom",
            "\u{feff}kind: model\nlayers: [{type: head}]\n"
                .as_bytes()
                .to_vec(),
        ),
    ] {
        check(&format!("{name}.yaml"), bytes, &[]);
    }
}
