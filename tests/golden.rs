//! Golden files: the diagnostics of every broken document under `tests/golden/cases/`, as text
//! (`.txt`) and JSON (`.json`). A case may have a `.args` file with one `--set` override per
//! line. Run with `KILN_BLESS=1` to rewrite the expected files after an intended change, then
//! review the diff.

use kiln::diag::{render_json, render_text, SourceMap};
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("tests/golden/cases")
        .expect("cases folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn render(case: &Path) -> (String, String) {
    let args_path = case.with_extension("args");
    let overrides: Vec<String> = std::fs::read_to_string(&args_path)
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default();
    let mut sources = SourceMap::new();
    let (diags, status) = match kiln::spec::load(case, &overrides, &mut sources) {
        Ok(doc) => match kiln::lower::lower_document(&doc, None, None) {
            Ok(_) => (Vec::new(), 0),
            Err(diags) => (diags, 1),
        },
        Err(e) => (e.diags.clone(), if e.unreadable() { 2 } else { 1 }),
    };
    let mut text = render_text(&diags, &sources, false);
    text.push_str(&format!("exit status: {status}\n"));
    let mut json = serde_json::to_string_pretty(&render_json(&diags, &sources)).unwrap();
    json.push('\n');
    (text, json)
}

#[test]
fn diagnostics_match_golden_files() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    let all = cases();
    assert!(
        all.len() >= 15,
        "expected the golden cases, found {}",
        all.len()
    );
    for case in all {
        let (text, json) = render(&case);
        for (ext, got) in [("txt", text), ("json", json)] {
            let expected_path = case.with_extension(ext);
            if bless {
                std::fs::write(&expected_path, &got).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != got {
                failures.push(format!(
                    "--- {} (expected)\n{expected}\n+++ (got)\n{got}",
                    expected_path.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden files differ (rerun with KILN_BLESS=1 to accept):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_broken_case_is_rejected_with_located_diagnostics() {
    for case in cases() {
        let overrides: Vec<String> = std::fs::read_to_string(case.with_extension("args"))
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default();
        let mut sources = SourceMap::new();
        let diags = match kiln::spec::load(&case, &overrides, &mut sources) {
            Ok(doc) => kiln::lower::lower_document(&doc, None, None)
                .expect_err(&format!("{} should be rejected", case.display())),
            Err(e) => e.diags,
        };
        assert!(!diags.is_empty());
        for d in &diags {
            let span = d
                .span
                .unwrap_or_else(|| panic!("{}: {d:?} has no location", case.display()));
            let src = sources.get(span.src);
            assert!(span.start <= span.end && span.end <= src.text.len());
            assert!(
                d.help.is_some(),
                "{}: {} has no help line",
                case.display(),
                d.message
            );
        }
        let positions: Vec<_> = diags
            .iter()
            .map(|d| d.span.map(|s| (s.src, s.start)))
            .collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(
            positions,
            sorted,
            "{}: diagnostics are not sorted",
            case.display()
        );
    }
}
