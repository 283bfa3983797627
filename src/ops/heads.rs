//! Splitting a sequence of vectors into attention heads and merging them back.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// `[b, s, w] ↔ [b, h, s, w/h]`: head i takes features i·w/h .. (i+1)·w/h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Heads {
    /// `[b, s, w] → [b, h, s, w/h]`.
    Split {
        /// Heads h (dividing w).
        heads: u64,
    },
    /// `[b, h, s, d] → [b, s, h·d]`.
    Merge,
}

impl OpDef for Heads {
    fn name(&self) -> &'static str {
        match self {
            Heads::Split { .. } => "split_heads",
            Heads::Merge => "merge_heads",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Heads::Split { heads } => format!("heads={heads}"),
            Heads::Merge => String::new(),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let x = float_input(port(self.ports(), ins, "x"))?;
        let shape = match (self, x.shape.as_slice()) {
            (Heads::Split { heads }, [b, s, Dim::Fixed(w)]) if w % heads == 0 => {
                vec![*b, Dim::Fixed(*heads), *s, Dim::Fixed(w / heads)]
            }
            (Heads::Split { heads }, [_, _, w]) => {
                return Err(shapes(format!(
                    "width {w} is not divisible by {heads} heads"
                )))
            }
            (Heads::Split { .. }, _) => {
                return Err(shapes(format!("expects [batch, seq, width], got {x}")))
            }
            (Heads::Merge, [b, Dim::Fixed(h), s, Dim::Fixed(d)]) => {
                vec![*b, *s, Dim::Fixed(h * d)]
            }
            (Heads::Merge, _) => {
                return Err(shapes(format!(
                    "expects [batch, heads, seq, head_dim], got {x}"
                )))
            }
        };
        Ok(TensorType {
            dtype: DType::F32,
            shape,
        })
    }

    fn matmul_flops(&self, _: &[&TensorType], _: u64, _: u64) -> u64 {
        0
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let x = *port(self.ports(), ins, "x");
        // The same element, addressed in [b, s, h, d] and in [b, h, s, d].
        let (b, s, h, d) = match self {
            Heads::Split { heads } => {
                let h = *heads as usize;
                (x.shape[0], x.shape[1], h, x.shape[2] / h)
            }
            Heads::Merge => (x.shape[0], x.shape[2], x.shape[1], x.shape[3]),
        };
        let seq_major =
            |bi: usize, si: usize, hi: usize, j: usize| ((bi * s + si) * h + hi) * d + j;
        let head_major =
            |bi: usize, si: usize, hi: usize, j: usize| ((bi * h + hi) * s + si) * d + j;
        let shape = match self {
            Heads::Split { .. } => vec![b, h, s, d],
            Heads::Merge => vec![b, s, h * d],
        };
        let mut out = RefTensor::zeros(&shape);
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    for j in 0..d {
                        let (from, to) = match self {
                            Heads::Split { .. } => {
                                (seq_major(bi, si, hi, j), head_major(bi, si, hi, j))
                            }
                            Heads::Merge => (head_major(bi, si, hi, j), seq_major(bi, si, hi, j)),
                        };
                        out.data[to] = x.data[from];
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let x = port(self.ports(), ins, "x");
        match self {
            Heads::Split { heads } => {
                let x = x.f3();
                let [b, s, w] = x.dims();
                let h = *heads as usize;
                V::F4(x.reshape([b, s, h, w / h]).swap_dims(1, 2))
            }
            Heads::Merge => {
                let x = x.f4();
                let [b, h, s, d] = x.dims();
                V::F3(x.swap_dims(1, 2).reshape([b, s, h * d]))
            }
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, random, value};
    use super::*;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;

    #[test]
    fn shapes_are_inferred_and_mismatches_explained() {
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(12)],
        };
        let split = Heads::Split { heads: 4 };
        let y = split.infer(std::slice::from_ref(&x)).unwrap();
        assert_eq!(
            y.shape,
            vec![Dim::Batch, Dim::Fixed(4), Dim::Seq, Dim::Fixed(3)]
        );
        assert_eq!(Heads::Merge.infer(&[y]).unwrap(), x);
        let e = Heads::Split { heads: 5 }.infer(&[x]).unwrap_err();
        assert!(e.to_string().contains("not divisible by 5 heads"), "{e}");
    }

    #[test]
    fn the_burn_forward_matches_the_float64_reference_and_merge_undoes_split() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(8);
        for (b, s, h, d) in [(1, 1, 1, 1), (2, 5, 3, 4), (3, 7, 4, 2)] {
            let x = random(&[b, s, h * d], &mut rng);
            let split = Heads::Split { heads: h as u64 };
            let want = split.reference(&[&x]).unwrap();
            assert_eq!(want.shape, vec![b, h, s, d]);
            // Head hi of position si holds features hi·d .. (hi+1)·d.
            assert_eq!(
                want.data[((b - 1) * h + h - 1) * s * d + (s - 1) * d],
                x.data[((b - 1) * s + s - 1) * h * d + (h - 1) * d]
            );
            let v = value(&x, &device);
            let c = ctx(&device, b, s);
            let got = split.forward(&[&v], &c);
            assert_eq!(
                host(got.clone()),
                want.data.iter().map(|&v| v as f32).collect::<Vec<_>>()
            );
            let back = Heads::Merge.forward(&[&got], &c);
            assert_eq!(host(back), host(v));
            assert_eq!(Heads::Merge.reference(&[&want]).unwrap().data, x.data);
        }
    }
}
