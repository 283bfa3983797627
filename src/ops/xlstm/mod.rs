//! xLSTM's two layers (Beck et al. 2024): the mLSTM, a matrix memory per head read by a query
//! (in [`mlstm`]), and the sLSTM, a scalar memory per channel with a per-head recurrence (in
//! [`slstm`]). Both are causal recurrences that decode one position at a time, carrying their
//! own state ([`MlstmState`], [`SlstmState`]).

pub mod mlstm;
pub mod slstm;

pub use mlstm::MlstmState;
pub use slstm::SlstmState;

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use kiln_kernels::MLSTM_CHUNK;

/// An xLSTM layer over `x [b, s, d]`, `d` divisible by its heads H (dh = d / H), → `[b, s, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Xlstm {
    /// mLSTM `(x [b, s, d], qkvo.weight [d, 4d], qkvo.bias [4d], igate.weight [d, H],
    /// igate.bias [H], fgate.weight [d, H], fgate.bias [H], out.weight [d, d])` (see the
    /// `mlstm` layer).
    Mlstm {
        /// Heads H.
        heads: u64,
    },
    /// sLSTM `(x [b, s, d], weight [d, 4d], recurrent [H, dh, 4dh], bias [4d])`, gates in the
    /// order z, i, f, o (see the `slstm` layer).
    Slstm {
        /// Heads H.
        heads: u64,
    },
}

impl Xlstm {
    fn heads(&self) -> u64 {
        match self {
            Xlstm::Mlstm { heads } | Xlstm::Slstm { heads } => *heads,
        }
    }

    /// The shapes its parameters (every input after x) must have for width `d`.
    fn param_shapes(&self, d: u64) -> Vec<Vec<u64>> {
        let h = self.heads();
        let dh = d / h;
        match self {
            Xlstm::Mlstm { .. } => vec![
                vec![d, 4 * d],
                vec![4 * d],
                vec![d, h],
                vec![h],
                vec![d, h],
                vec![h],
                vec![d, d],
            ],
            Xlstm::Slstm { .. } => vec![vec![d, 4 * d], vec![h, dh, 4 * dh], vec![4 * d]],
        }
    }
}

impl OpDef for Xlstm {
    fn name(&self) -> &'static str {
        match self {
            Xlstm::Mlstm { .. } => "mlstm",
            Xlstm::Slstm { .. } => "slstm",
        }
    }

    fn attrs(&self) -> String {
        format!("heads={}", self.heads())
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Xlstm::Mlstm { .. } => &[
                "x",
                "qkvo.weight",
                "qkvo.bias",
                "igate.weight",
                "igate.bias",
                "fgate.weight",
                "fgate.bias",
                "out.weight",
            ],
            Xlstm::Slstm { .. } => &["x", "weight", "recurrent", "bias"],
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let heads = self.heads();
        if heads == 0 {
            return Err(InferError::Attribute(format!(
                "{} needs at least one head",
                self.name()
            )));
        }
        let x = float_input(port(self.ports(), ins, "x"))?;
        let d = match x.shape.as_slice() {
            [_, _, Dim::Fixed(d)] if d % heads == 0 => *d,
            _ => {
                return Err(shapes(format!(
                    "expects [batch, seq, width] with the width divisible by {heads} heads, got {x}"
                )))
            }
        };
        let params = self.ports()[1..].iter().zip(self.param_shapes(d));
        for (k, (name, w)) in params.enumerate() {
            let w: Vec<Dim> = w.iter().map(|&n| Dim::Fixed(n)).collect();
            let got = port(self.ports(), ins, name);
            if got.shape != w {
                return Err(shapes(format!(
                    "{} parameter {} has shape {got}, expected {w:?}",
                    self.name(),
                    k + 1,
                )));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        // One multiply-add per position, row and column of each projection.
        let proj = |name: &str| {
            let w = port(p, ins, name);
            2 * batch * seq * w.len(0, seq) * w.len(1, seq)
        };
        match self {
            // Projections, then the chunkwise form's products: per chunk of l positions the two
            // l × l blocks (q kᵀ, P v), and per position the memory read C̃ q and written v kᵀ.
            Xlstm::Mlstm { heads } => {
                let x = port(p, ins, "x");
                let (out, d) = (x.numel(batch, seq), x.len(2, seq));
                let l = MLSTM_CHUNK as u64;
                let blocks = (seq / l) * l * l + (seq % l) * (seq % l);
                ["qkvo.weight", "igate.weight", "fgate.weight", "out.weight"]
                    .iter()
                    .map(|w| proj(w))
                    .sum::<u64>()
                    + 4 * batch * d * blocks
                    + 4 * out * (d / heads)
            }
            Xlstm::Slstm { .. } => {
                let r = port(p, ins, "recurrent");
                proj("weight") + 2 * batch * seq * r.len(0, seq) * r.len(1, seq) * r.len(2, seq)
            }
        }
    }

    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64 {
        match self {
            Xlstm::Mlstm { heads } => {
                mlstm_workspace_bytes(port(self.ports(), ins, "x").len(2, seq), *heads, seq)
            }
            Xlstm::Slstm { .. } => 0,
        }
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let h = self.heads() as usize;
        Ok(match self {
            Xlstm::Mlstm { .. } => mlstm::reference(self, h, ins),
            Xlstm::Slstm { .. } => slstm::reference(self, h, ins),
        })
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let h = self.heads() as usize;
        V::F3(match self {
            Xlstm::Mlstm { .. } => mlstm::forward(self, h, ins, ctx, None).0,
            Xlstm::Slstm { .. } => slstm::forward(self, h, ins, ctx, None).0,
        })
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let h = self.heads() as usize;
        let (out, next): (_, Box<dyn OpState>) = match self {
            Xlstm::Mlstm { .. } => {
                let (y, st) = mlstm::forward(self, h, ins, ctx, take_state(state));
                (y, Box::new(st))
            }
            Xlstm::Slstm { .. } => {
                let (y, st) = slstm::forward(self, h, ins, ctx, take_state(state));
                (y, Box::new(st))
            }
        };
        *state = Some(next);
        V::F3(out)
    }
}

/// The bytes the fused mLSTM kernel (`kiln_kernels::mlstm`, chunkwise) holds for one example
/// of `seq` positions and width `d` beyond its inputs and output, linear in `seq`: per head the
/// memory entering each chunk of [`MLSTM_CHUNK`] positions (C̃, ñ and m: dh² + dh + 1 floats),
/// kept by the backward pass, and one chunk's five `[L, L]` blocks and six `[L, dh]` ones. The
/// plain path (decoding from a carried memory, mixed-precision products) holds `[s, s]`
/// matrices instead, as attention's plain variants do.
pub fn mlstm_workspace_bytes(d: u64, heads: u64, seq: u64) -> u64 {
    let dh = d / heads.max(1);
    let l = (MLSTM_CHUNK as u64).min(seq);
    let kept = heads * seq.div_ceil(MLSTM_CHUNK as u64) * (dh * dh + dh + 1);
    (kept + 5 * l * l + 6 * l * dh) * 4
}

/// `x · W (+ b)` for one position in float64: `x` of length i, `w` row-major `[i, o]` (the
/// references' projections).
fn affine(x: &[f64], w: &RefTensor, b: Option<&RefTensor>) -> Vec<f64> {
    let o = w.shape[1];
    (0..o)
        .map(|j| {
            b.map_or(0.0, |b| b.data[j])
                + x.iter()
                    .enumerate()
                    .map(|(i, v)| v * w.data[i * o + j])
                    .sum::<f64>()
        })
        .collect()
}

/// The logistic function in float64.
#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    /// Its arguments for `b` sequences of `s` positions of width `d`.
    fn args(op: &Xlstm, b: usize, s: usize, d: usize, rng: &mut Rng) -> Vec<Arg> {
        let params = op.param_shapes(d as u64);
        std::iter::once(Arg::seq(&[b, s, d], 1, rng))
            .chain(params.iter().map(|sh| {
                let sh: Vec<usize> = sh.iter().map(|&n| n as usize).collect();
                Arg::fixed(&sh, rng)
            }))
            .collect()
    }

    fn ty(shape: &[Dim]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn every_check_passes_for_both_layers_on_random_shapes() {
        let mut rng = Rng::new(17);
        for (b, s, d, heads) in [(2, 6, 8, 2), (1, 5, 6, 3), (3, 7, 5, 1)] {
            for op in [Xlstm::Mlstm { heads }, Xlstm::Slstm { heads }] {
                let case = Case {
                    op: &op,
                    args: args(&op, b, s, d, &mut rng),
                    out_seq: Some(1),
                    tol: 1e-4,
                };
                // Beam search: rows reversed, and the first twice.
                let rows: Vec<usize> = (0..b).rev().chain([0]).collect();
                case.passes_the_checks_of_a_decoding_op(3, &rows);
            }
        }
    }

    #[test]
    fn infer_errors_name_their_cause() {
        for op in [Xlstm::Mlstm { heads: 2 }, Xlstm::Slstm { heads: 2 }] {
            let x = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(8)]);
            let params: Vec<TensorType> = op
                .param_shapes(8)
                .iter()
                .map(|sh| ty(&sh.iter().map(|&n| Dim::Fixed(n)).collect::<Vec<_>>()))
                .collect();
            let ins: Vec<TensorType> = std::iter::once(x.clone()).chain(params).collect();
            assert_eq!(op.infer(&ins).unwrap(), x);
            let mut ids = ins.clone();
            ids[0] = TensorType {
                dtype: DType::I64,
                shape: vec![Dim::Batch, Dim::Seq],
            };
            assert_eq!(op.infer(&ids).unwrap_err(), InferError::TokenIds);
            let mut odd = ins.clone();
            odd[0] = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(7)]);
            assert!(
                matches!(op.infer(&odd), Err(InferError::Shapes(m)) if m.contains("divisible"))
            );
            let mut bad = ins.clone();
            bad[2] = ty(&[Dim::Fixed(3)]);
            assert!(
                matches!(op.infer(&bad), Err(InferError::Shapes(m)) if m.contains("parameter 2"))
            );
            let none = match op {
                Xlstm::Mlstm { .. } => Xlstm::Mlstm { heads: 0 },
                Xlstm::Slstm { .. } => Xlstm::Slstm { heads: 0 },
            };
            assert!(matches!(none.infer(&ins), Err(InferError::Attribute(_))));
        }
    }

    #[test]
    fn the_mlstm_workspace_is_the_chunkwise_kernels_and_linear_in_the_positions() {
        let (d, h) = (64u64, 4u64);
        let op = Xlstm::Mlstm { heads: h };
        let x = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(d)]);
        let params: Vec<TensorType> = op
            .param_shapes(d)
            .iter()
            .map(|sh| ty(&sh.iter().map(|&n| Dim::Fixed(n)).collect::<Vec<_>>()))
            .collect();
        let ins: Vec<&TensorType> = std::iter::once(&x).chain(&params).collect();
        let ws = |seq| op.workspace_bytes(&ins, seq);
        // 100 positions: two chunks' memories per head (16² + 16 + 1 floats each), one 64 × 64
        // chunk's blocks.
        assert_eq!(ws(100), (4 * 2 * 273 + 5 * 64 * 64 + 6 * 64 * 16) * 4);
        // Doubling the positions at most doubles it, and on long sequences it stays far below
        // one head's [s, s] matrix of the parallel form (4 GiB at 32 768 positions).
        for seq in [1024, 16_384, 32_768] {
            assert!(
                ws(2 * seq) <= 2 * ws(seq),
                "{seq}: {} vs {}",
                ws(2 * seq),
                ws(seq)
            );
            if seq > 1024 {
                assert!(ws(seq) * 100 < seq * seq * 4, "{seq}: {}", ws(seq));
            }
        }
        assert_eq!(Xlstm::Slstm { heads: h }.workspace_bytes(&ins[..1], 100), 0);
    }

    #[test]
    fn flops_count_the_projections_and_the_chunkwise_products() {
        let (b, s, d, h) = (3u64, 5u64, 8u64, 2u64);
        for op in [Xlstm::Mlstm { heads: h }, Xlstm::Slstm { heads: h }] {
            let x = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(d)]);
            let params: Vec<TensorType> = op
                .param_shapes(d)
                .iter()
                .map(|sh| ty(&sh.iter().map(|&n| Dim::Fixed(n)).collect::<Vec<_>>()))
                .collect();
            let ins: Vec<&TensorType> = std::iter::once(&x).chain(&params).collect();
            let want = match op {
                // 5 positions: one chunk of 5.
                Xlstm::Mlstm { .. } => {
                    2 * b * s * (d * 4 * d + d * h + d * h + d * d)
                        + 4 * b * d * s * s
                        + 4 * (b * s * d) * (d / h)
                }
                Xlstm::Slstm { .. } => 2 * b * s * (d * 4 * d + h * (d / h) * (4 * d / h)),
            };
            assert_eq!(op.matmul_flops(&ins, b, s), want, "{op:?}");
            assert_eq!(op.attrs(), "heads=2");
            if let Xlstm::Mlstm { .. } = op {
                // 100 positions: chunks of 64 and 36, not one 100 × 100 block.
                let s = 100;
                let proj = 2 * b * s * (d * 4 * d + d * h + d * h + d * d);
                let blocks = 4 * b * d * (64 * 64 + 36 * 36) + 4 * (b * s * d) * (d / h);
                assert_eq!(op.matmul_flops(&ins, b, s), proj + blocks);
            }
        }
    }
}
