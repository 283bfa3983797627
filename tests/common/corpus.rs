//! The fuzz corpus's generators, shared by `tests/fuzz.rs` (through proptest) and
//! `tests/lsp.rs` (replayed through `kiln lsp`): YAML-significant tokens, edits of the
//! bundled documents, and pathological inputs.

/// Fragments whose insertion changes how YAML reads.
pub const TOKENS: &[&str] = &[
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

/// `(path, text)` of every bundled recipe and model, sorted.
pub fn bundled_texts() -> Vec<(String, String)> {
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

/// One edit of a document (positions and counts are reduced modulo its size).
#[derive(Debug, Clone)]
pub enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, usize),
}

/// Apply edits in order.
pub fn apply(text: &str, edits: &[Edit]) -> String {
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

/// Inputs that stress the parser's limits: deep nesting, huge lines, many keys, NULs, a BOM.
pub fn pathological() -> Vec<(&'static str, Vec<u8>)> {
    let deep_flow = "[".repeat(100_000).into_bytes();
    let deep_block: String = (0..2000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let long_line = format!("kind: model\nname: {}\n", "x".repeat(1 << 20));
    let many_keys: String = (0..50_000).map(|i| format!("k{i}: {i}\n")).collect();
    vec![
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
    ]
}
