//! A step's statistics while they are still on the device.
//!
//! Reading a value back to the host makes the host wait for everything the device has queued:
//! on a GPU, a read every step keeps the device idle while the host prepares the next step.
//! [`Pending`] keeps a step's losses, regularizer terms and squared gradient norm as device
//! scalars; [`read`] brings the statistics of many steps back in one transfer and folds them
//! exactly as a read every step does (the same f32 values, summed in f64 in the same order),
//! so the numbers do not depend on how often they are read.

use super::StepStats;
use burn::prelude::*;

/// The statistics of one step, still on the device.
pub struct Pending {
    /// Each micro-batch's loss (already divided by their number), a one-element tensor.
    pub(super) loss: Vec<Tensor<1>>,
    /// Each micro-batch's mean attention entropy, when its regularizer is on.
    pub(super) entropy: Vec<Tensor<1>>,
    /// Each micro-batch's harmonic-sparsity term, when its regularizer is on.
    pub(super) sparsity: Vec<Tensor<1>>,
    /// Each micro-batch's multi-scale distribution term, when it is on.
    pub(super) distribution: Vec<Tensor<1>>,
    /// The number of micro-batches.
    pub(super) n_micro: f64,
    /// The squared global gradient norm (f32), once the update is applied.
    pub(super) norm2: Option<Tensor<1>>,
    /// The learning rate used.
    pub(super) lr: f64,
    /// The frequency curriculum's cutoff used.
    pub(super) freq_cutoff: Option<f64>,
}

impl Pending {
    fn tensors(&self) -> impl Iterator<Item = &Tensor<1>> {
        self.loss
            .iter()
            .chain(&self.entropy)
            .chain(&self.sparsity)
            .chain(&self.distribution)
            .chain(&self.norm2)
    }

    /// The statistics from this step's values (in the order of [`Pending::tensors`]); returns
    /// the values not consumed.
    fn resolve<'a>(&self, values: &'a [f32]) -> (StepStats, &'a [f32]) {
        let (loss, rest) = values.split_at(self.loss.len());
        let (entropy, rest) = rest.split_at(self.entropy.len());
        let (sparsity, rest) = rest.split_at(self.sparsity.len());
        let (distribution, rest) = rest.split_at(self.distribution.len());
        let (norm2, rest) = rest.split_at(usize::from(self.norm2.is_some()));
        // The per-micro-batch means: the first term starts from 0, as the sums read one by
        // one did.
        let mean = |v: &[f32]| {
            (!v.is_empty()).then(|| v.iter().fold(0.0, |s, &x| s + f64::from(x) / self.n_micro))
        };
        let stats = StepStats {
            loss: loss.iter().fold(0.0, |s, &x| s + f64::from(x)),
            grad_norm: norm2.first().map_or(f64::NAN, |&n| f64::from(n).sqrt()),
            lr: self.lr,
            attention_entropy: mean(entropy),
            harmonic_sparsity: mean(sparsity),
            distribution: mean(distribution),
            freq_cutoff: self.freq_cutoff,
        };
        (stats, rest)
    }
}

/// The statistics of `steps`, read back in one transfer.
pub fn read(steps: &[Pending]) -> Vec<StepStats> {
    let all: Vec<Tensor<1>> = steps
        .iter()
        .flat_map(Pending::tensors)
        .map(|t| t.clone().detach().reshape([1]))
        .collect();
    let values: Vec<f32> = if all.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(all, 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("converted to f32")
    };
    let mut rest = &values[..];
    steps
        .iter()
        .map(|p| {
            let (stats, r) = p.resolve(rest);
            rest = r;
            stats
        })
        .collect()
}
