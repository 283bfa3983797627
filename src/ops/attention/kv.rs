//! Self-attention's decoding state: the keys and values of every position so far, grown by
//! concatenation or written in place into preallocated buffers ([`append`]).

use crate::ops::OpState;
use burn::prelude::*;

/// What self-attention keeps between decoding calls: the keys and values of every position
/// so far, `[batch, H_kv, T, d]` each (H_kv heads after the GQA pass). With a preallocated
/// cache T is its capacity, and the positions after those written so far hold zeros.
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

/// `new` (`[b, h, s, ·]`, this call's positions `offset..offset + s`) after `earlier` along
/// the sequence axis: concatenated (a tensor one call longer each time) when `capacity` is
/// `None`; otherwise written in place into a buffer of `capacity` positions (allocated with
/// zeros on the first call), so that every call's result has the same shape. The runtime
/// refuses a call that would go past the capacity before it reaches an op
/// ([`crate::runtime::CacheFull`]).
pub(crate) fn append(
    earlier: Option<Tensor<4>>,
    new: Tensor<4>,
    offset: usize,
    capacity: Option<usize>,
) -> Tensor<4> {
    match (capacity, earlier) {
        (None, None) => new,
        (None, Some(e)) => Tensor::cat(vec![e, new], 2),
        (Some(cap), earlier) => {
            let [b, h, s, d] = new.dims();
            let buf = earlier.unwrap_or_else(|| Tensor::zeros([b, h, cap, d], &new.device()));
            buf.slice_assign([0..b, 0..h, offset..offset + s, 0..d], new)
        }
    }
}
