//! What incremental decoding keeps between calls ([`KvCache`]).

use super::V;
use burn::prelude::*;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// What incremental decoding keeps between calls: per op its own state (an attention op's
/// keys and values, a recurrence's state, a causal filter's latest inputs; see
/// [`crate::ops::OpState`]), an encoder-decoder's values that depend only on the source, and
/// the number of positions seen; with a capacity, attention keeps preallocated buffers.
#[derive(Default)]
pub struct KvCache {
    /// Positions processed so far.
    pub len: usize,
    /// A preallocated cache ([`KvCache::with_capacity`]): the positions it holds.
    pub capacity: Option<usize>,
    /// An encoder-decoder's values that depend only on the source (the encoder's output and
    /// the cross-attention keys and values), computed on the first call.
    pub(super) source: HashMap<NodeIndex, V>,
    /// Each op's own decoding state.
    pub(super) states: HashMap<NodeIndex, Box<dyn crate::ops::OpState>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache whose attention layers keep their keys and values in buffers of
    /// `capacity` positions, allocated at the first call and written in place at each later
    /// one (static shapes: what a GPU wants); [`KvCache::new`]'s grow by one position per
    /// token instead (cheaper on the CPU). Both give the same tokens and logits.
    pub fn with_capacity(capacity: usize) -> Self {
        KvCache {
            capacity: Some(capacity),
            ..Self::default()
        }
    }

    /// Keep batch rows `rows` (in that order, repeats allowed): beam search continues the
    /// surviving hypotheses.
    pub fn reorder(&mut self, rows: &[usize]) {
        let Some(dev) = self
            .states
            .values()
            .map(|s| s.device())
            .chain(self.source.values().map(V::device))
            .next()
        else {
            return;
        };
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &dev,
        );
        for st in self.states.values_mut() {
            st.select_rows(&idx);
        }
        for v in self.source.values_mut() {
            *v = v.select_rows(&idx);
        }
    }

    /// Number of values held because they depend only on an encoder-decoder's source (the
    /// encoder's output, cross-attention keys and values); 0 for decoder-only models.
    pub fn source_values(&self) -> usize {
        self.source.len()
    }

    /// Shapes of the cached keys of every attention op (for tests and reports).
    pub fn key_shapes(&self) -> Vec<[usize; 4]> {
        let mut v: Vec<[usize; 4]> = self.states.values().filter_map(|s| s.key_shape()).collect();
        v.sort_unstable();
        v
    }
}

/// A call to a preallocated cache ([`KvCache::with_capacity`]) that would go past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache holds {capacity} positions, but {needed} are needed ({held} held and {new} new); allocate it for the longest sequence the generation can reach")]
pub struct CacheFull {
    /// The cache's capacity.
    pub capacity: usize,
    /// Positions held before the call.
    pub held: usize,
    /// Positions the call adds.
    pub new: usize,
    /// `held + new`.
    pub needed: usize,
}
