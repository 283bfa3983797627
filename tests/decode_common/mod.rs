//! Helpers shared by the decoding tests: hand-built models whose logits are known, bundled
//! models on the CPU, and the same models with their parameters moved off their initial values.

#![allow(dead_code)]

use kiln::decode::process::Processors;
use kiln::decode::{Generated, NextLogits, Settings};
use kiln::runtime::{DeviceKind, Runtime};
use kiln::spec::recipe::{Decode, Strategy};
use std::path::Path;

/// The model of recipe `file` (with `sets` applied) on the CPU, without autodiff, seed 11.
pub fn model(file: &str, sets: &[&str]) -> Runtime {
    model_on(file, sets, false)
}

/// [`model`], with autodiff where asked.
pub fn model_on(file: &str, sets: &[&str], autodiff: bool) -> Runtime {
    let sets: Vec<String> = sets.iter().map(ToString::to_string).collect();
    let (_, g) =
        kiln::compile::recipe(Path::new(file), &sets, false).unwrap_or_else(|e| panic!("{e}"));
    Runtime::init(g, DeviceKind::Cpu.device(autodiff), 11)
}

/// [`model`] with every parameter moved by Gaussian noise (0.3 of the tensor's RMS, plus 0.05,
/// drawn from `seed`): fresh models have unit norm gains, zero biases and near-uniform outputs,
/// which hide a cached path that drops a term.
pub fn perturbed(file: &str, sets: &[&str], seed: u64) -> Runtime {
    let rt = model(file, sets);
    let mut rng = kiln::ir::reference::Rng::new(seed);
    let mut values = rt.values();
    let mut names: Vec<String> = values.keys().cloned().collect();
    names.sort();
    for name in names {
        let data = &mut values.get_mut(&name).unwrap().0;
        let rms = (data.iter().map(|x| x * x).sum::<f32>() / data.len().max(1) as f32).sqrt();
        for x in data.iter_mut() {
            *x += (0.3 * rms + 0.05) * rng.normal() as f32;
        }
    }
    Runtime::with_values(rt.graph().clone(), rt.device.clone(), &values).unwrap()
}

/// A model given by a function of the sequence so far.
pub struct Table<F: Fn(&[i64]) -> Vec<f32>>(pub F);

impl<F: Fn(&[i64]) -> Vec<f32>> NextLogits for Table<F> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], _: Option<&[usize]>) -> Vec<Vec<f32>> {
        seqs.iter().map(|s| (self.0)(s)).collect()
    }
}

/// The end-of-sequence id of the hand-built models.
pub const EOS: i64 = 0;

/// Decoding settings with [`EOS`], pad 9 and `max_len`.
pub fn settings(d: Decode, max_len: usize) -> Settings {
    Settings {
        d,
        eos: Some(EOS),
        pad: 9,
        default_max_length: max_len,
        source_len: 0,
    }
}

/// Natural logarithms, as logits.
pub fn ln(p: &[f64]) -> Vec<f32> {
    p.iter().map(|&x| x.ln() as f32).collect()
}

/// The token sequences of generations.
pub fn tokens(g: &[Generated]) -> Vec<Vec<i64>> {
    g.iter().map(|x| x.tokens.clone()).collect()
}

/// The token ids the warpers of `d` keep (finite scores) of `scores`, keeping at least
/// `min_keep`.
pub fn kept(d: Decode, scores: &[f32], min_keep: usize) -> Vec<usize> {
    let mut s = scores.to_vec();
    Processors::new(&d, Some(EOS), 1, min_keep).warp(&mut s);
    (0..s.len()).filter(|&i| s[i].is_finite()).collect()
}

/// Greedy, beam search (3 beams, 2 returned) and seeded sampling: what the tests of cached
/// decoding compare.
pub fn strategies() -> [Decode; 3] {
    [
        Decode::default(),
        Decode {
            strategy: Strategy::Beam,
            num_beams: 3,
            num_return_sequences: 2,
            ..Decode::default()
        },
        Decode {
            strategy: Strategy::Sample,
            seed: 5,
            ..Decode::default()
        },
    ]
}
