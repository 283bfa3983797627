//! Helpers shared by the decoding tests: bundled models on the CPU, and the same models with
//! their parameters moved off their initial values.

use kiln::runtime::{DeviceKind, Runtime};
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
