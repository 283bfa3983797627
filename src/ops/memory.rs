//! Memory tokens: learned vectors prepended to every sequence, and their outputs dropped after
//! the body that reads them.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use burn::prelude::*;

/// Memory tokens around a body. When decoding, the first call (the prompt) adds and removes
/// them; later calls pass their new positions through, since the memory tokens are already in
/// every cache of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// `(x [b, s, d], memory [m, d]) → [b, m + s, d]`: the m learned vectors before every
    /// sequence.
    Prepend,
    /// `[b, m + s, d] → [b, s, d]`: the outputs of the memory tokens dropped.
    Drop {
        /// Number of memory tokens m.
        count: u64,
    },
}

impl OpDef for Memory {
    fn name(&self) -> &'static str {
        match self {
            Memory::Prepend => "prepend_memory",
            Memory::Drop { .. } => "drop_memory",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Memory::Prepend => String::new(),
            Memory::Drop { count } => format!("count={count}"),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Memory::Prepend => &["x", "memory"],
            Memory::Drop { .. } => &["x"],
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        // Every output position reads the memory tokens, which come first.
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let f32 = |shape: Vec<Dim>| {
            Ok(TensorType {
                dtype: DType::F32,
                shape,
            })
        };
        match self {
            Memory::Prepend => {
                let mem = port(p, ins, "memory");
                match (x.shape.as_slice(), mem.shape.as_slice()) {
                    ([b, s, d], [Dim::Fixed(m), w]) if w == d => {
                        let s = match s {
                            Dim::Seq => Dim::SeqPlus(*m),
                            Dim::SeqPlus(k) => Dim::SeqPlus(k + m),
                            Dim::Fixed(n) => Dim::Fixed(n + m),
                            Dim::Batch | Dim::BatchTimes(_) => {
                                return Err(shapes(format!(
                                    "expects [batch, seq, width], got {x}"
                                )))
                            }
                        };
                        f32(vec![*b, s, *d])
                    }
                    _ => Err(shapes(format!("memory {mem} does not fit input {x}"))),
                }
            }
            Memory::Drop { count } => {
                let s = match x.shape.as_slice() {
                    [_, Dim::SeqPlus(k), _] if k == count => Dim::Seq,
                    [_, Dim::SeqPlus(k), _] if k > count => Dim::SeqPlus(k - count),
                    [_, Dim::Fixed(n), _] if n >= count => Dim::Fixed(n - count),
                    _ => {
                        return Err(shapes(format!(
                            "cannot drop {count} memory tokens from {x}"
                        )))
                    }
                };
                f32(vec![x.shape[0], s, x.shape[2]])
            }
        }
    }

    fn matmul_flops(&self, _: &[&TensorType], _: u64, _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let x = *port(p, ins, "x");
        let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
        // Position t of row bi, as a range of `data`.
        let at = |n: usize, bi: usize, t: usize| (bi * n + t) * d..(bi * n + t + 1) * d;
        Ok(match self {
            Memory::Prepend => {
                let mem = *port(p, ins, "memory");
                let m = mem.shape[0];
                let mut out = RefTensor::zeros(&[b, m + s, d]);
                for bi in 0..b {
                    for t in 0..m + s {
                        let from = if t < m {
                            &mem.data[t * d..(t + 1) * d]
                        } else {
                            &x.data[at(s, bi, t - m)]
                        };
                        out.data[at(m + s, bi, t)].copy_from_slice(from);
                    }
                }
                out
            }
            Memory::Drop { count } => {
                let m = *count as usize;
                if m > s {
                    return Err(format!("cannot drop {m} memory tokens of {s} positions"));
                }
                let mut out = RefTensor::zeros(&[b, s - m, d]);
                for bi in 0..b {
                    for t in 0..s - m {
                        out.data[at(s - m, bi, t)].copy_from_slice(&x.data[at(s, bi, t + m)]);
                    }
                }
                out
            }
        })
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let p = self.ports();
        let x = port(p, ins, "x").f3();
        match self {
            Memory::Prepend => {
                let mem = port(p, ins, "memory").f2();
                let [b, _, d] = x.dims();
                let m = mem.dims()[0];
                V::F3(Tensor::cat(
                    vec![mem.unsqueeze::<3>().expand([b, m, d]), x],
                    1,
                ))
            }
            Memory::Drop { count } => {
                let (m, s) = (*count as usize, x.dims()[1]);
                V::F3(x.narrow(1, m, s - m))
            }
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        if ctx.offset > 0 {
            // The memory tokens are already in every cache: the new positions pass through.
            (*port(self.ports(), ins, "x")).clone()
        } else {
            self.forward(ins, ctx)
        }
    }
}
