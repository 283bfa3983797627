//! Positions: the sinusoidal table and its addition to the sequence (or a learned table's),
//! and rotary embeddings (RoPE, with or without YaRN): their table and its application.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::definitions;
use crate::ir::{Dim, Mixing, Real, TensorType};
use crate::runtime::consts::cached;
use crate::runtime::ops::Ctx;
use crate::runtime::{fused, V};
use burn::prelude::*;

/// YaRN scaling of a RoPE table: (factor, original length, β_fast, β_slow).
pub type Yarn = (Real, u64, Real, Real);

/// A position table or its use. The tables have the positions of their input (token ids
/// `[b, s]` or vectors `[b, s, d]`); in an incremental decoding they start at the cached length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Positions {
    /// `(positions) → [s, dim]`: sin(p / 10000^(2i/dim)) at feature 2i, cos at 2i + 1. When
    /// decoding it holds the rows of every position so far (0..offset + s); its reader,
    /// [`Positions::Add`], takes the rows of the call.
    SinusoidalTable {
        /// Width.
        dim: u64,
    },
    /// `(x [b, s, d], table [s or more, d]) → x + table[offset..offset + s]` (a learned table
    /// or a sinusoidal one).
    Add,
    /// `(positions) → [s, d/2, 2]`: cos and sin of RoPE angles p·θ_i (see
    /// [`rope_frequencies`]), positions offset..offset + s.
    RopeTable {
        /// Head width (even).
        head_dim: u64,
        /// Frequency base.
        base: Real,
        /// YaRN scaling.
        yarn: Option<Yarn>,
    },
    /// `(x [b, h, s, d], table [s, d/2, 2]) → x` rotated (half-split pairs i, i + d/2).
    ApplyRope,
}

impl OpDef for Positions {
    fn name(&self) -> &'static str {
        match self {
            Positions::SinusoidalTable { .. } => "sinusoidal_table",
            Positions::Add => "add_positions",
            Positions::RopeTable { .. } => "rope_table",
            Positions::ApplyRope => "apply_rope",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Positions::SinusoidalTable { dim } => format!("dim={dim}"),
            Positions::RopeTable {
                head_dim,
                base,
                yarn,
            } => match yarn {
                None => format!("head_dim={head_dim} base={base}"),
                Some((f, l, bf, bs)) => format!(
                    "head_dim={head_dim} base={base} yarn(factor={f} original={l} beta_fast={bf} beta_slow={bs})"
                ),
            },
            Positions::Add | Positions::ApplyRope => String::new(),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Positions::SinusoidalTable { .. } | Positions::RopeTable { .. } => &["positions"],
            Positions::Add | Positions::ApplyRope => &["x", "table"],
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        // Output t reads input t only (a table reads no position's value at all).
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let f32 = super::f32_type;
        // A table's positions are those of its input.
        let seq = || {
            let t = port(p, ins, "positions");
            t.shape.get(1).copied().ok_or_else(|| {
                shapes(format!(
                    "a position table expects a sequence [batch, seq, ..], got {t}"
                ))
            })
        };
        match self {
            Positions::SinusoidalTable { dim } => f32(vec![seq()?, Dim::Fixed(*dim)]),
            Positions::Add => {
                let x = float_input(port(p, ins, "x"))?;
                let t = port(p, ins, "table");
                if x.shape.len() != 3 || t.shape.len() != 2 || t.shape[1] != x.shape[2] {
                    return Err(shapes(format!("position table {t} does not fit input {x}")));
                }
                f32(x.shape.clone())
            }
            Positions::RopeTable { head_dim, .. } => {
                if head_dim % 2 != 0 {
                    return Err(InferError::Attribute(format!(
                        "rotary embeddings need an even head width, got {head_dim}"
                    )));
                }
                f32(vec![seq()?, Dim::Fixed(head_dim / 2), Dim::Fixed(2)])
            }
            Positions::ApplyRope => {
                let x = float_input(port(p, ins, "x"))?;
                let t = port(p, ins, "table");
                match (x.shape.as_slice(), t.shape.as_slice()) {
                    ([_, _, _, Dim::Fixed(d)], [_, Dim::Fixed(h), _]) if *d == 2 * h => {
                        f32(x.shape.clone())
                    }
                    _ => Err(shapes(format!("rope table {t} does not fit {x}"))),
                }
            }
        }
    }

    fn matmul_flops(&self, _: &[&TensorType], _: u64, _: u64) -> u64 {
        0
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, ins: &[&TensorType]) -> Option<usize> {
        // A learned table has its rows; a sinusoidal or RoPE one is computed for any length.
        // Only a sequence that grows (the decoder's input, not an encoder's fixed source) is
        // limited.
        match self {
            Positions::Add => {
                let p = self.ports();
                let grows = matches!(
                    port(p, ins, "x").shape.get(1),
                    Some(Dim::Seq | Dim::SeqPlus(_))
                );
                match port(p, ins, "table").shape.as_slice() {
                    [Dim::Fixed(n), _] if grows => Some(*n as usize),
                    _ => None,
                }
            }
            Positions::SinusoidalTable { .. }
            | Positions::RopeTable { .. }
            | Positions::ApplyRope => None,
        }
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        Ok(match self {
            Positions::SinusoidalTable { dim } => {
                let s = port(p, ins, "positions").shape[1];
                let d = *dim as usize;
                let mut t = RefTensor::zeros(&[s, d]);
                for pos in 0..s {
                    for j in 0..d {
                        let i2 = (j - j % 2) as f64;
                        let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
                        t.data[pos * d + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() };
                    }
                }
                t
            }
            Positions::Add => {
                let (x, t) = (*port(p, ins, "x"), *port(p, ins, "table"));
                let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
                if t.shape[0] < s {
                    return Err(format!(
                        "position table has {} rows, the input {s} positions",
                        t.shape[0]
                    ));
                }
                let mut out = x.clone();
                for bi in 0..b {
                    for si in 0..s {
                        for j in 0..d {
                            out.data[(bi * s + si) * d + j] += t.data[si * d + j];
                        }
                    }
                }
                out
            }
            Positions::RopeTable {
                head_dim,
                base,
                yarn,
            } => {
                let s = port(p, ins, "positions").shape[1];
                let half = *head_dim as usize / 2;
                let (freqs, scale) = definitions::rope_frequencies(*head_dim, base.0, *yarn);
                let mut t = RefTensor::zeros(&[s, half, 2]);
                for pos in 0..s {
                    for (i, f) in freqs.iter().enumerate() {
                        let theta = pos as f64 * f;
                        t.data[(pos * half + i) * 2] = theta.cos() * scale;
                        t.data[(pos * half + i) * 2 + 1] = theta.sin() * scale;
                    }
                }
                t
            }
            Positions::ApplyRope => {
                let (x, t) = (*port(p, ins, "x"), *port(p, ins, "table"));
                let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
                let half = d / 2;
                let mut out = x.clone();
                for bh in 0..b * h {
                    for si in 0..s {
                        let base = (bh * s + si) * d;
                        for i in 0..half {
                            let (c, sn) =
                                (t.data[(si * half + i) * 2], t.data[(si * half + i) * 2 + 1]);
                            let (x1, x2) = (x.data[base + i], x.data[base + i + half]);
                            out.data[base + i] = x1 * c - x2 * sn;
                            out.data[base + i + half] = x1 * sn + x2 * c;
                        }
                    }
                }
                out
            }
        })
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        let consts = |data: Vec<f32>, shape: [usize; 2]| -> Tensor<2> {
            Tensor::from_data(TensorData::new(data, shape), ctx.device)
        };
        match self {
            // In incremental mode the table covers positions 0..offset + seq; its only reader,
            // `Add`, takes the rows of this call (as it does from a learned table).
            Positions::SinusoidalTable { dim } => {
                let (end, d) = (
                    ctx.offset + seq_of(port::<&V>(p, ins, "positions")),
                    *dim as usize,
                );
                cached(
                    ctx,
                    || format!("sinusoidal/{d}"),
                    end,
                    |n| V::F2(consts(sinusoidal(n, d), [n, d])),
                )
            }
            Positions::Add => {
                let x = port(p, ins, "x").f3();
                let s = x.dims()[1];
                let t = port(p, ins, "table").f2().narrow(0, ctx.offset, s);
                V::F3(x + t.unsqueeze::<3>())
            }
            Positions::RopeTable {
                head_dim,
                base,
                yarn,
            } => {
                let half = *head_dim as usize / 2;
                let seq = seq_of(port::<&V>(p, ins, "positions"));
                let end = ctx.offset + seq;
                let key = || format!("rope/{head_dim}/{base:?}/{yarn:?}");
                let table = cached(ctx, key, end, |n| {
                    let (c, s) = rope_tables(n, *head_dim, base.0, *yarn);
                    let (c, s) = (consts(c, [n, half]), consts(s, [n, half]));
                    V::F3(Tensor::stack(vec![c, s], 2))
                });
                V::F3(table.f3().narrow(0, ctx.offset, seq))
            }
            Positions::ApplyRope => V::F4(fused::rope(
                port(p, ins, "x").f4(),
                port(p, ins, "table").f3(),
            )),
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        // The forward reads `ctx.offset`: tables start at the cached length.
        self.forward(ins, ctx)
    }
}

/// The sequence length of a value: axis 1 of token ids `[b, s]` or vectors `[b, s, d]`, axis
/// 2 of `[b, h, s, d]`.
pub(crate) fn seq_of(v: &V) -> usize {
    match v {
        V::I2(t) => t.dims()[1],
        V::F3(t) => t.dims()[1],
        other => other.f4().dims()[2],
    }
}

/// The sinusoidal table `[s, d]` (sin at even, cos at odd features).
fn sinusoidal(s: usize, d: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; s * d];
    for pos in 0..s {
        for j in 0..d {
            let i2 = (j - j % 2) as f64;
            let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
            t[pos * d + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    t
}

/// RoPE cos and sin tables `[s, half]`.
fn rope_tables(s: usize, head_dim: u64, base: f64, yarn: Option<Yarn>) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim as usize / 2;
    let (freqs, scale) = rope_frequencies(head_dim, base, yarn);
    let (mut c, mut sn) = (vec![0.0f32; s * half], vec![0.0f32; s * half]);
    for pos in 0..s {
        for i in 0..half {
            let theta = pos as f64 * freqs[i];
            c[pos * half + i] = (theta.cos() * scale) as f32;
            sn[pos * half + i] = (theta.sin() * scale) as f32;
        }
    }
    (c, sn)
}

/// Rotary frequencies θ_i (i < head_dim/2) and the factor cos and sin are scaled by: plain RoPE
/// θ_i = base^(−2i/d), or YaRN as Hugging Face computes it (`_compute_yarn_parameters`). The
/// runtime's; the reference has its own ([`definitions::rope_frequencies`]).
pub fn rope_frequencies(head_dim: u64, base: f64, yarn: Option<Yarn>) -> (Vec<f64>, f64) {
    let d = head_dim as f64;
    let half = (head_dim / 2) as usize;
    let plain: Vec<f64> = (0..half).map(|i| base.powf(-2.0 * i as f64 / d)).collect();
    let Some((factor, original, beta_fast, beta_slow)) = yarn else {
        return (plain, 1.0);
    };
    let (s, l) = (factor.0, original as f64);
    let correction = |rotations: f64| {
        d * (l / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let low = correction(beta_fast.0).floor().max(0.0);
    let high = correction(beta_slow.0).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let freqs = plain
        .iter()
        .enumerate()
        .map(|(i, &theta)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            theta / s * (1.0 - keep) + theta * keep
        })
        .collect();
    let attention = if s <= 1.0 { 1.0 } else { 0.1 * s.ln() + 1.0 };
    (freqs, attention)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::ir::DType;
    use crate::util::Rng;

    /// Head width 8, base 100, factor 4 over 64 positions: a correction range [0, 3], so pair
    /// 0 keeps its frequency, pairs 1 and 2 blend and pair 3 is divided by 4.
    const YARN: Yarn = (Real(4.0), 64, Real(32.0), Real(1.0));

    #[test]
    fn sinusoidal_tables_pass_every_check() {
        let mut rng = Rng::new(21);
        for (b, s, dim) in [(2, 5, 6), (1, 7, 5), (3, 1, 1)] {
            let op = Positions::SinusoidalTable { dim };
            // Token ids, or vectors (inside a memory body the table reads `[b, m + s, d]`).
            for positions in [
                Arg::ids(b, s, 9, &mut rng),
                Arg::seq(&[b, s, 3], 1, &mut rng),
            ] {
                let case = Case {
                    op: &op,
                    args: vec![positions],
                    out_seq: Some(0),
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                // No gradient check: the table reads its input's length, not its values, so no
                // gradient reaches its one input (and a constant has no backward pass to run).
                // Moving a position's value moves no row (the causality check wants a pointwise
                // op to move its output); each decoding call holds the rows of every position
                // so far, those of the whole sequence: no row depends on a later position.
                case.decodes_the_rows_of_every_position_so_far(2);
            }
        }
    }

    #[test]
    fn rope_tables_pass_every_check_with_and_without_yarn() {
        let mut rng = Rng::new(22);
        for yarn in [None, Some(YARN)] {
            for (b, s, head_dim) in [(2, 6, 8), (1, 9, 6), (3, 2, 2)] {
                let op = Positions::RopeTable {
                    head_dim,
                    base: Real(100.0),
                    yarn,
                };
                let case = Case {
                    op: &op,
                    args: vec![Arg::ids(b, s, 5, &mut rng)],
                    out_seq: Some(0),
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                // As for the sinusoidal table, no gradient check (its one input is token ids,
                // read for their length) and no moving of a position's value (no row reads
                // one); decoding gives the rows of each call's positions, those of the whole
                // sequence: no row depends on a later position.
                case.decodes_like_the_whole_sequence(3);
            }
        }
    }

    #[test]
    fn adding_positions_passes_every_check() {
        let mut rng = Rng::new(23);
        // A learned table with more rows than positions, or exactly as many (a sinusoidal
        // one). The op reads rows offset..offset + s of the table it gets, so every decoding
        // call gets it whole (a learned table is a parameter; a sinusoidal one holds the rows
        // of every position so far).
        for (b, s, d, rows) in [(2, 5, 4, 8), (1, 3, 7, 3), (3, 6, 1, 9)] {
            let case = Case {
                op: &Positions::Add,
                args: vec![
                    Arg::seq(&[b, s, d], 1, &mut rng),
                    Arg::fixed(&[rows, d], &mut rng),
                ],
                out_seq: Some(1),
                tol: 1e-5,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(2);
        }
    }

    #[test]
    fn applying_rope_passes_every_check() {
        let mut rng = Rng::new(24);
        for (b, h, s, d) in [(2, 3, 5, 8), (1, 1, 7, 2), (2, 2, 4, 6)] {
            // The table of the call's positions (a RoPE table decodes rows offset..offset + s):
            // cut into steps with x.
            let case = Case {
                op: &Positions::ApplyRope,
                args: vec![
                    Arg::seq(&[b, h, s, d], 2, &mut rng),
                    Arg::seq(&[s, d / 2, 2], 0, &mut rng),
                ],
                out_seq: Some(2),
                tol: 1e-5,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(2);
        }
    }

    #[test]
    fn infer_errors_and_position_limits() {
        let ty = |dtype, shape: &[Dim]| TensorType {
            dtype,
            shape: shape.to_vec(),
        };
        let ids = ty(DType::I64, &[Dim::Batch, Dim::Seq]);
        let x = ty(DType::F32, &[Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        let learned = ty(DType::F32, &[Dim::Fixed(8), Dim::Fixed(4)]);
        let add = Positions::Add;
        assert_eq!(
            add.infer(&[ids.clone(), learned.clone()]),
            Err(InferError::TokenIds)
        );
        let wide = ty(DType::F32, &[Dim::Fixed(8), Dim::Fixed(5)]);
        assert!(matches!(
            add.infer(&[x.clone(), wide]),
            Err(InferError::Shapes(e)) if e.contains("does not fit")
        ));
        let rope = |head_dim| Positions::RopeTable {
            head_dim,
            base: Real(10000.0),
            yarn: None,
        };
        assert_eq!(
            rope(5).infer(std::slice::from_ref(&ids)),
            Err(InferError::Attribute(
                "rotary embeddings need an even head width, got 5".into()
            ))
        );
        let table = rope(4).infer(std::slice::from_ref(&ids)).unwrap();
        assert_eq!(table.shape, vec![Dim::Seq, Dim::Fixed(2), Dim::Fixed(2)]);
        let q = |d| {
            ty(
                DType::F32,
                &[Dim::Batch, Dim::Fixed(2), Dim::Seq, Dim::Fixed(d)],
            )
        };
        assert_eq!(Positions::ApplyRope.infer(&[q(4), table.clone()]), Ok(q(4)));
        assert!(matches!(
            Positions::ApplyRope.infer(&[q(6), table.clone()]),
            Err(InferError::Shapes(_))
        ));
        assert_eq!(
            Positions::ApplyRope.infer(&[ids.clone(), table]),
            Err(InferError::TokenIds)
        );
        let flat = ty(DType::I64, &[Dim::Batch]);
        assert!(matches!(
            Positions::SinusoidalTable { dim: 4 }.infer(&[flat]),
            Err(InferError::Shapes(_))
        ));
        // A learned table limits the sequence to its rows; computed tables do not.
        let sinusoidal = Positions::SinusoidalTable { dim: 4 }
            .infer(std::slice::from_ref(&ids))
            .unwrap();
        assert_eq!(add.position_limit(&[&x, &learned]), Some(8));
        assert_eq!(add.position_limit(&[&x, &sinusoidal]), None);
        assert_eq!(rope(4).position_limit(&[&ids]), None);
        // An encoder's fixed source does not limit the decoded sequence, even through a table
        // of fixed rows (a sinusoidal table of the source, or a learned one).
        let source = ty(DType::F32, &[Dim::Batch, Dim::Fixed(6), Dim::Fixed(4)]);
        let of_source = ty(DType::F32, &[Dim::Fixed(6), Dim::Fixed(4)]);
        assert_eq!(add.position_limit(&[&source, &of_source]), None);
        assert_eq!(add.position_limit(&[&source, &learned]), None);
    }
}
