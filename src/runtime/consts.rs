//! Constant tables (position tables, the causal mask) built once per runtime, so once per
//! device, rather than on the host and uploaded (or built by a kernel) at every forward pass.

use super::V;
use burn::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// The tables a runtime has built: position tables by key, each holding positions along axis
/// 0, and the causal mask (one square table per device, see [`Consts::future_mask`]).
#[derive(Default)]
pub struct Consts {
    tables: RefCell<HashMap<String, V>>,
    masks: RefCell<Vec<Tensor<2, Bool>>>,
    masks_built: Cell<usize>,
}

impl Consts {
    /// The first `rows` rows of the table `key`. It is built by `build(n)` (a table of n ≥
    /// `rows` rows whose row p depends only on p) when missing or shorter than `rows`: at
    /// exactly `rows` the first time (a training run asks for one length), then at least
    /// twice as long (incremental decoding asks for one more row per token).
    pub fn rows(&self, key: String, rows: usize, build: impl FnOnce(usize) -> V) -> V {
        let mut map = self.tables.borrow_mut();
        let have = map.get(&key).map_or(0, |t| t.dims()[0]);
        if have < rows {
            let n = if have == 0 { rows } else { rows.max(2 * have) };
            map.insert(key.clone(), build(n));
        }
        let t = &map[&key];
        if t.dims()[0] == rows {
            return t.clone();
        }
        match t {
            V::F2(t) => V::F2(t.clone().narrow(0, 0, rows)),
            V::F3(t) => V::F3(t.clone().narrow(0, 0, rows)),
            V::F4(t) => V::F4(t.clone().narrow(0, 0, rows)),
            V::F1(t) => V::F1(t.clone().narrow(0, 0, rows)),
            V::I2(t) => V::I2(t.clone().narrow(0, 0, rows)),
        }
    }

    /// The causal mask of `s` queries at positions `offset..offset + s` over `t` keys: true
    /// where key j comes after query i (j > offset + i), exactly Burn's `tril_mask([s, t],
    /// offset)`, which attention fills with −∞. It is a view (rows `offset..offset + s`,
    /// columns `..t`) of one square table kept per device: built at n = max(t, offset + s) the
    /// first time (a training run asks for one length; a preallocated decoding cache for its
    /// capacity), then at least twice as large when a call needs more.
    pub fn future_mask(
        &self,
        s: usize,
        t: usize,
        offset: usize,
        device: &Device,
    ) -> Tensor<2, Bool> {
        let need = t.max(offset + s);
        let mut masks = self.masks.borrow_mut();
        let at = masks.iter().position(|m| &m.device() == device);
        let have = at.map_or(0, |i| masks[i].dims()[0]);
        let i = match at {
            Some(i) if have >= need => i,
            _ => {
                let n = if have == 0 { need } else { need.max(2 * have) };
                let m = Tensor::<2, Bool>::tril_mask([n, n], 0, device);
                self.masks_built.set(self.masks_built.get() + 1);
                match at {
                    Some(i) => {
                        masks[i] = m;
                        i
                    }
                    None => {
                        masks.push(m);
                        masks.len() - 1
                    }
                }
            }
        };
        let m = masks[i].clone();
        let n = m.dims()[0];
        let m = if offset == 0 && s == n {
            m
        } else {
            m.narrow(0, offset, s)
        };
        if t == n {
            m
        } else {
            m.narrow(1, 0, t)
        }
    }

    /// How many causal mask tables have been built (for tests: once per run and device
    /// unless a longer one is needed).
    pub fn masks_built(&self) -> usize {
        self.masks_built.get()
    }

    /// How many tables are kept (position tables and masks).
    pub fn len(&self) -> usize {
        self.tables.borrow().len() + self.masks.borrow().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`Consts::rows`] of the context's runtime, or `build(rows)` where the context has none.
pub fn cached(
    ctx: &super::ops::Ctx,
    key: impl FnOnce() -> String,
    rows: usize,
    build: impl FnOnce(usize) -> V,
) -> V {
    match ctx.consts {
        Some(c) => c.rows(key(), rows, build),
        None => build(rows),
    }
}

/// [`Consts::future_mask`] of the runtime's tables, or Burn's `tril_mask([s, t], offset)`
/// built at this call where there are none.
pub fn future_mask(
    consts: Option<&Consts>,
    s: usize,
    t: usize,
    offset: usize,
    device: &Device,
) -> Tensor<2, Bool> {
    match consts {
        Some(c) => c.future_mask(s, t, offset, device),
        None => Tensor::<2, Bool>::tril_mask([s, t], offset as i64, device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize, device: &Device) -> V {
        let data: Vec<f32> = (0..n * 2).map(|i| i as f32).collect();
        V::F2(Tensor::from_data(TensorData::new(data, [n, 2]), device))
    }

    #[test]
    fn a_table_is_built_once_and_grows_by_doubling() {
        let device = Device::flex();
        let c = Consts::default();
        let built = std::cell::Cell::new(Vec::new());
        let get = |rows: usize| {
            c.rows("t".into(), rows, |n| {
                let mut b = built.take();
                b.push(n);
                built.set(b);
                table(n, &device)
            })
        };
        assert_eq!(get(5).to_vec(), table(5, &device).to_vec());
        assert_eq!(get(5).dims(), vec![5, 2]);
        assert_eq!(get(3).to_vec(), table(3, &device).to_vec());
        assert_eq!(get(6).to_vec(), table(6, &device).to_vec());
        assert_eq!(get(7).dims(), vec![7, 2]);
        assert_eq!(get(23).to_vec(), table(23, &device).to_vec());
        assert_eq!(built.take(), vec![5, 10, 23]);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_causal_mask_is_burns_and_built_once_per_size() {
        let device = Device::flex();
        let c = Consts::default();
        let bools = |m: Tensor<2, Bool>| m.into_data().try_to_vec::<bool>().expect("bools");
        for (s, t, offset) in [
            (5, 5, 0),
            (1, 5, 4),
            (2, 5, 1),
            (3, 5, 0),
            (1, 3, 2),
            (5, 5, 0),
        ] {
            let want = Tensor::<2, Bool>::tril_mask([s, t], offset as i64, &device);
            let got = c.future_mask(s, t, offset, &device);
            assert_eq!(got.dims(), [s, t]);
            assert_eq!(bools(got), bools(want), "s {s} t {t} offset {offset}");
        }
        assert_eq!(c.masks_built(), 1);
        // A longer one doubles the table; shorter ones are views of it again.
        let want = Tensor::<2, Bool>::tril_mask([1, 7], 6, &device);
        assert_eq!(bools(c.future_mask(1, 7, 6, &device)), bools(want));
        assert_eq!(
            bools(c.future_mask(4, 4, 0, &device)),
            bools(Tensor::<2, Bool>::tril_mask([4, 4], 0, &device))
        );
        assert_eq!(c.masks_built(), 2);
        assert_eq!(c.len(), 1);
        let none = future_mask(None, 2, 6, 3, &device);
        assert_eq!(
            bools(none),
            bools(Tensor::<2, Bool>::tril_mask([2, 6], 3, &device))
        );
    }
}
