//! Helpers shared by the runtime tests (`tests/runtime.rs`, `tests/runtime_ops.rs`): bundled
//! models lowered at a small size and optimized, runs on the runtime, and comparisons with the
//! float64 reference.

// Each test file uses a different subset.
#![allow(dead_code)]

use kiln::diag::{render_text, SourceMap};
use kiln::ir::reference::{self, Rng};
use kiln::ir::Graph;
use kiln::lower::lower_document;
use kiln::passes::{self, ALL};
use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};
use std::path::Path;

pub fn lower(file: &str, sets: &[&str]) -> Graph {
    let mut sources = SourceMap::new();
    let sets: Vec<String> = sets
        .iter()
        .map(|s| {
            if file.starts_with("recipes") {
                format!("model.{s}")
            } else {
                s.to_string()
            }
        })
        .collect();
    let doc = kiln::spec::load(Path::new(file), &sets, &mut sources)
        .unwrap_or_else(|e| panic!("{}", render_text(&e.diags, &sources, false)));
    lower_document(&doc, Some(7), Some(12))
        .unwrap_or_else(|d| panic!("{}", render_text(&d, &sources, false)))
}

pub fn optimize(g: &Graph) -> Graph {
    let mut o = g.clone();
    let all: Vec<_> = ALL.iter().collect();
    passes::optimize(&mut o, &all, true).unwrap();
    o
}

pub fn tokens(seed: u64, batch: usize, seq: usize, vocab: i64) -> Vec<Vec<i64>> {
    let mut rng = Rng::new(seed);
    (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| (rng.next_u64() % vocab as u64) as i64)
                .collect()
        })
        .collect()
}

pub fn run_rt(g: &Graph, seed: u64, toks: &[Vec<i64>]) -> Vec<f32> {
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), seed);
    let out = rt.forward(tokens_tensor(toks, &rt.device), false);
    out.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// A runtime tensor's values.
pub fn host<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Relative error under 1e-4 (largest absolute difference over the largest magnitude, at
/// least 1) between the runtime's `got` and the float64 reference's `want`.
pub fn assert_close(got: &[f32], want: &reference::Tensor, what: &str) {
    let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert_eq!(got.len(), want.data.len(), "{what}: sizes differ");
    assert!(
        err / scale < 1e-4,
        "{what}: relative error {} against the reference",
        err / scale
    );
}

/// Every parameter of `rt` has a gradient in `grads` that is finite and not all zero.
pub fn assert_every_gradient(rt: &Runtime, grads: &burn::tensor::Gradients, what: &str) {
    for (name, p) in rt.names.iter().zip(&rt.params) {
        let gv = p
            .grad(grads)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"))
            .to_vec();
        assert!(
            gv.iter().any(|v| *v != 0.0),
            "{what}: gradient of {name} is zero"
        );
        assert!(
            gv.iter().all(|v| v.is_finite()),
            "{what}: gradient of {name} is not finite"
        );
    }
}
