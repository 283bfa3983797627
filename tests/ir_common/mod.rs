//! Helpers shared by the IR tests (`tests/ir.rs`, `tests/ir_reference.rs`): bundled and
//! inline models lowered and verified, passes run, and the float64 reference interpreter.

// Each test file uses a different subset.
#![allow(dead_code)]

use kiln::diag::{render_text, SourceMap};
use kiln::ir::reference::{self, Rng, Tensor};
use kiln::ir::{verify::verify, Graph, Op};
use kiln::lower::lower_document;
use kiln::passes;
use std::path::Path;

pub fn lower_file(path: &str, overrides: &[String]) -> Graph {
    let mut sources = SourceMap::new();
    let doc = kiln::spec::load(Path::new(path), overrides, &mut sources)
        .unwrap_or_else(|e| panic!("{}", render_text(&e.diags, &sources, false)));
    let g = lower_document(&doc, Some(7), Some(24))
        .unwrap_or_else(|d| panic!("{}", render_text(&d, &sources, false)));
    verify(&g).unwrap();
    g
}

pub fn load_model(path: &str, overrides: &[String]) -> kiln::spec::LoadedModel {
    let mut sources = SourceMap::new();
    match kiln::spec::load(Path::new(path), overrides, &mut sources) {
        Ok(kiln::spec::Document::Model(m)) => m,
        _ => panic!("{path} is not a model"),
    }
}

pub fn optimized(g: &Graph, names: &[&str]) -> (Graph, Vec<passes::Change>) {
    let mut g = g.clone();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let selected = passes::by_name(&names).unwrap();
    let changes = passes::optimize(&mut g, &selected, true).expect("passes keep the graph valid");
    (g, changes)
}

pub fn tokens(rng: &mut Rng, batch: usize, seq: usize, vocab: u64) -> Vec<Vec<i64>> {
    (0..batch)
        .map(|_| (0..seq).map(|_| (rng.next_u64() % vocab) as i64).collect())
        .collect()
}

pub fn vocab_of(g: &Graph) -> u64 {
    let emb =
        g.g.node_indices()
            .find(|&n| matches!(g.g[n].op, Op::Embedding(_)))
            .expect("an embedding");
    match &g.g[g.inputs(emb)[1]].op {
        Op::Param(kiln::ir::Param { shape, .. }) => shape[0],
        _ => unreachable!("embedding tables are parameters"),
    }
}

pub fn run(
    g: &Graph,
    params: &std::collections::HashMap<String, Tensor>,
    toks: &[Vec<i64>],
) -> Tensor {
    reference::run(g, params, toks).unwrap()
}

/// The rendered diagnostics of lowering the model `text`, which must fail.
pub fn lowering_error(text: &str, seq: Option<u64>) -> String {
    let mut sources = SourceMap::new();
    let doc = kiln::spec::load::load_bytes(
        Path::new("m.yaml"),
        text.as_bytes().to_vec(),
        &[],
        &mut sources,
    )
    .unwrap();
    render_text(
        &lower_document(&doc, None, seq).unwrap_err(),
        &sources,
        false,
    )
}

/// The largest absolute difference between the first `n` values of `a` and `b`.
pub fn prefix_diff(a: &Tensor, b: &Tensor, n: usize) -> f64 {
    a.data[..n]
        .iter()
        .zip(&b.data[..n])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
