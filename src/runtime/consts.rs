//! Constant tables (position tables) built once per runtime, so once per device, rather than
//! on the host and uploaded at every forward pass.

use super::V;
use std::cell::RefCell;
use std::collections::HashMap;

/// The tables a runtime has built, by key; each holds positions along axis 0.
#[derive(Default)]
pub struct Consts(RefCell<HashMap<String, V>>);

impl Consts {
    /// The first `rows` rows of the table `key`. It is built by `build(n)` (a table of n ≥
    /// `rows` rows whose row p depends only on p) when missing or shorter than `rows`: at
    /// exactly `rows` the first time (a training run asks for one length), then at least
    /// twice as long (incremental decoding asks for one more row per token).
    pub fn rows(&self, key: String, rows: usize, build: impl FnOnce(usize) -> V) -> V {
        let mut map = self.0.borrow_mut();
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

    /// How many tables are kept.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;

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
}
