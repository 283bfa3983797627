//! How much memory a run needs, estimated before anything is allocated, so that a run that
//! cannot fit is refused with the numbers instead of aborting mid-way ("memory allocation of
//! ... bytes failed") with a half-made run directory.
//!
//! The estimate is deliberately simple and errs on the low side (a refused run that would have
//! fit is worse than a clear abort): f32 parameters with their gradients, accumulated
//! gradients, AdamW's two moments and a checkpoint's copy (8 copies); per example the graph's
//! intermediate values and their gradients (2 copies) plus the largest op workspace
//! (attention's scores and weights); evaluation batches of at least 64 examples without
//! gradients.

use crate::ir::Graph;
use crate::spec::recipe::RecipeSpec;

/// An estimate, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Parameters and the optimizer state.
    pub state: u64,
    /// Activations of the largest batch.
    pub activations: u64,
    /// The batch and length the activations are for.
    pub batch: u64,
    /// Sequence length.
    pub seq: u64,
}

impl Estimate {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.state.saturating_add(self.activations)
    }

    /// One line for people: "about 1.2 GiB (parameters and optimizer state 10.0 MiB,
    /// activations 1.1 GiB for a batch of 32 at length 65)".
    pub fn describe(&self) -> String {
        use crate::os::memory::human;
        format!(
            "about {} (parameters and optimizer state {}, activations {} for a batch of {} at length {})",
            human(self.total()),
            human(self.state),
            human(self.activations),
            self.batch,
            self.seq
        )
    }

    /// `Err` with a message when the estimate exceeds what this machine has available.
    pub fn check(&self, what: &str) -> Result<(), String> {
        let Some(avail) = crate::os::memory::available_bytes() else {
            return Ok(());
        };
        if self.total() <= avail {
            return Ok(());
        }
        Err(format!(
            "{what} needs {}, but this machine has {} available; make the model or `train.batch_size` smaller (or the sequences shorter), or pass --ignore-memory-check to run it anyway",
            self.describe(),
            crate::os::memory::human(avail)
        ))
    }
}

/// Training `graph` as `recipe` says, with token inputs padded to a multiple of `pad_to`
/// positions where the model allows it (as [`crate::runtime::Runtime::padded_len`] pads them;
/// 1: no padding, as on the CPU).
pub fn training(graph: &Graph, recipe: &RecipeSpec, pad_to: usize) -> Estimate {
    let params = graph.param_count();
    let seq = recipe.task.max_seq();
    let limit = crate::runtime::pad::limit(graph);
    let seq = crate::runtime::pad::padded(&limit, pad_to, seq as usize) as u64;
    let (act, work) = (graph.activation_bytes(seq), graph.workspace_bytes(seq));
    let batch = u64::from(recipe.train.batch_size);
    let train = batch.saturating_mul(act.saturating_mul(2).saturating_add(work));
    let eval_batch = batch.max(64);
    let eval = eval_batch.saturating_mul(act.saturating_add(work));
    Estimate {
        state: params.saturating_mul(4 * 8),
        activations: train.max(eval),
        batch: if train >= eval { batch } else { eval_batch },
        seq,
    }
}

/// Generating `batch` sequences of up to `seq` positions (no gradients).
pub fn generation(graph: &Graph, batch: u64, seq: u64) -> Estimate {
    let per = graph
        .activation_bytes(seq)
        .saturating_add(graph.workspace_bytes(seq));
    Estimate {
        state: graph.param_count().saturating_mul(4),
        activations: batch.saturating_mul(per),
        batch,
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(recipe: &str) -> (RecipeSpec, Graph) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(recipe);
        let (doc, graph) = crate::compile::recipe(&path, &[], false).unwrap();
        (doc.spec, graph)
    }

    #[test]
    fn the_estimate_is_for_the_length_a_run_pads_to() {
        // Sequences of up to 64 tokens and a start token: 65 positions, 80 once padded to 16.
        let (spec, graph) = compiled("recipes/default.yaml");
        let plain = training(&graph, &spec, 1);
        let padded = training(&graph, &spec, 16);
        assert_eq!(plain.seq, 65);
        assert_eq!(padded.seq, 80);
        assert!(padded.activations > plain.activations);
        assert_eq!(padded.state, plain.state);
        // An encoder-decoder is not padded (its logits cover only the target part).
        let (spec, graph) = compiled("recipes/reverse-encoder-decoder.yaml");
        assert_eq!(training(&graph, &spec, 16), training(&graph, &spec, 1));
    }
}
