//! Memory tokens: learned vectors prepended to every sequence, and their outputs dropped after
//! the body that reads them.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{Dim, Mixing, TensorType};
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
        let f32 = super::f32_type;
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
                                return Err(shapes(format!("expects [batch, seq, width], got {x}")))
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

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::ir::DType;
    use crate::util::Rng;

    #[test]
    fn memory_tokens_pass_every_check() {
        let mut rng = Rng::new(41);
        for (b, s, d, m) in [(2, 5, 3, 2), (1, 4, 1, 1), (3, 3, 4, 3)] {
            let prepend = Case {
                op: &Memory::Prepend,
                args: vec![
                    Arg::seq(&[b, s, d], 1, &mut rng),
                    Arg::fixed(&[m, d], &mut rng),
                ],
                out_seq: Some(1),
                tol: 1e-6,
            };
            prepend.infers_the_forward_shape();
            prepend.matches_the_reference();
            prepend.gradients_reach_every_input(&[]);
            prepend.later_positions_change_no_earlier_output();
            prepend.decodes_like_the_whole_sequence(2);
            let drop = Case {
                op: &Memory::Drop { count: m as u64 },
                args: vec![Arg::seq(&[b, m + s, d], 1, &mut rng)],
                out_seq: Some(1),
                tol: 1e-6,
            };
            // Its input has the body's positions, `seq + m`.
            let x = TensorType {
                dtype: DType::F32,
                shape: vec![Dim::Batch, Dim::SeqPlus(m as u64), Dim::Fixed(d as u64)],
            };
            drop.infers_the_forward_shape_from(&[x], b, s);
            drop.matches_the_reference();
            drop.gradients_reach_every_input(&[]);
            drop.later_positions_change_no_earlier_output();
            // The prompt holds the memory tokens' outputs and two positions.
            drop.decodes_like_the_whole_sequence(m + 2);
        }
    }

    #[test]
    fn infer_errors_and_the_lengths_memory_adds() {
        let f = |shape: &[Dim]| TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let x = f(&[Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        let mem = f(&[Dim::Fixed(3), Dim::Fixed(4)]);
        let with = Memory::Prepend.infer(&[x.clone(), mem.clone()]).unwrap();
        assert_eq!(with, f(&[Dim::Batch, Dim::SeqPlus(3), Dim::Fixed(4)]));
        let nested = Memory::Prepend.infer(&[with.clone(), mem.clone()]).unwrap();
        assert_eq!(nested.shape[1], Dim::SeqPlus(6));
        assert_eq!(
            Memory::Drop { count: 3 }.infer(std::slice::from_ref(&with)),
            Ok(x.clone())
        );
        assert_eq!(Memory::Drop { count: 3 }.infer(&[nested]), Ok(with.clone()));
        assert!(matches!(
            Memory::Drop { count: 4 }.infer(&[with]),
            Err(InferError::Shapes(e)) if e.contains("cannot drop 4")
        ));
        assert!(matches!(
            Memory::Drop { count: 1 }.infer(std::slice::from_ref(&x)),
            Err(InferError::Shapes(_))
        ));
        let narrow = f(&[Dim::Fixed(3), Dim::Fixed(5)]);
        assert!(matches!(
            Memory::Prepend.infer(&[x.clone(), narrow]),
            Err(InferError::Shapes(e)) if e.contains("does not fit")
        ));
        let ids = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(
            Memory::Prepend.infer(&[ids, mem]),
            Err(InferError::TokenIds)
        );
    }
}
