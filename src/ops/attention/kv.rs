//! Self-attention's decoding state: the keys and values of every position so far.

use crate::ops::OpState;
use burn::prelude::*;

/// What self-attention keeps between decoding calls: the keys and values of every position
/// so far, `[batch, H_kv, T, d]` each (H_kv heads after the GQA pass).
pub struct KvState {
    /// Keys.
    pub k: Tensor<4>,
    /// Values.
    pub v: Tensor<4>,
}

impl OpState for KvState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.k = self.k.clone().select(0, rows.clone());
        self.v = self.v.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.k.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        Some(self.k.dims())
    }
}
