//! Reshaping a sequence: zero-padding and cropping its positions, slicing and concatenating its
//! features.

use super::positions::seq_of;
use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{Dim, Mixing, TensorType};
use crate::runtime::ops::{pad_axis, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// A change of a sequence's positions or features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sequence {
    /// `[.., s, d] → [.., len, d]`, zero-padding the second-to-last axis (s ≤ len; a sequence
    /// `[b, s, d]` or a kernel `[s, d]`).
    Pad {
        /// Padded length.
        len: u64,
    },
    /// `(x [b, len, d], like [b, s, ..]) → [b, s, d]`: the first s positions.
    Crop,
    /// `[.., d] → [.., len]`: features start..start+len.
    SliceFeatures {
        /// First feature.
        start: u64,
        /// Number of features.
        len: u64,
    },
    /// `(x_1 [.., d_1], …, x_n [.., d_n]) → [.., Σ d_i]`: features side by side.
    ConcatFeatures {
        /// Number of inputs n.
        parts: u64,
    },
}

impl OpDef for Sequence {
    fn name(&self) -> &'static str {
        match self {
            Sequence::Pad { .. } => "pad_seq",
            Sequence::Crop => "crop_seq",
            Sequence::SliceFeatures { .. } => "slice_features",
            Sequence::ConcatFeatures { .. } => "concat_features",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Sequence::Pad { len } => format!("len={len}"),
            Sequence::Crop => String::new(),
            Sequence::SliceFeatures { start, len } => format!("start={start} len={len}"),
            Sequence::ConcatFeatures { parts } => format!("parts={parts}"),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Sequence::Pad { .. } | Sequence::SliceFeatures { .. } => &["x"],
            Sequence::Crop => &["x", "like"],
            Sequence::ConcatFeatures { parts } => numbered_ports(*parts as usize),
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let f32 = super::f32_type;
        match self {
            Sequence::Pad { len } => {
                let x = float_input(port(p, ins, "x"))?;
                let r = x.shape.len();
                if r < 2 {
                    return Err(shapes(format!("expects [.., seq, width], got {x}")));
                }
                if let Dim::Fixed(s) = x.shape[r - 2] {
                    if s > *len {
                        return Err(shapes(format!(
                            "cannot pad a sequence of {s} positions to {len}"
                        )));
                    }
                }
                let mut s = x.shape.clone();
                s[r - 2] = Dim::Fixed(*len);
                f32(s)
            }
            Sequence::Crop => {
                let x = float_input(port(p, ins, "x"))?;
                match (x.shape.as_slice(), port(p, ins, "like").shape.as_slice()) {
                    ([b, _, d], [_, s, ..]) => f32(vec![*b, *s, *d]),
                    _ => Err(shapes("crop expects [batch, len, width]")),
                }
            }
            Sequence::SliceFeatures { start, len } => {
                let x = float_input(port(p, ins, "x"))?;
                let what = || format!("cannot take features {start}..{} of {x}", start + len);
                if *len == 0 {
                    return Err(InferError::Attribute(what()));
                }
                match x.shape.split_last() {
                    Some((Dim::Fixed(d), lead)) if lead.len() == 2 && start + len <= *d => {
                        let mut shape = lead.to_vec();
                        shape.push(Dim::Fixed(*len));
                        f32(shape)
                    }
                    _ => Err(shapes(what())),
                }
            }
            Sequence::ConcatFeatures { .. } => {
                if ins.is_empty() || ins[0].shape.len() != 3 {
                    return Err(shapes("expects one or more [batch, seq, width] inputs"));
                }
                let mut total = 0;
                let mut lead: Option<&[Dim]> = None;
                for name in p {
                    let x = float_input(port(p, ins, name))?;
                    let Some((Dim::Fixed(d), l)) = x.shape.split_last() else {
                        return Err(shapes(format!("expects a fixed feature width, got {x}")));
                    };
                    if lead.is_some_and(|lead| lead != l) {
                        return Err(shapes(format!(
                            "inputs of different shapes: {} and {x}",
                            ins[0]
                        )));
                    }
                    lead = Some(l);
                    total += d;
                }
                let mut shape = lead.unwrap_or_default().to_vec();
                shape.push(Dim::Fixed(total));
                f32(shape)
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
        match self {
            // Padding a kernel parameter does not limit the input.
            Sequence::Pad { len } => {
                let x = port(self.ports(), ins, "x");
                let seq = x.shape.iter().rev().nth(1);
                seq.is_some_and(|d| matches!(d, Dim::Seq | Dim::SeqPlus(_)))
                    .then_some(*len as usize)
            }
            Sequence::Crop | Sequence::SliceFeatures { .. } | Sequence::ConcatFeatures { .. } => {
                None
            }
        }
    }

    fn incremental(&self) -> bool {
        // Padding and cropping serve whole-sequence transforms (an FFT over the padded
        // length); the features of position t are position t's.
        match self {
            Sequence::Pad { .. } | Sequence::Crop => false,
            Sequence::SliceFeatures { .. } | Sequence::ConcatFeatures { .. } => true,
        }
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        Ok(match self {
            Sequence::Pad { len } => {
                let x = *port(p, ins, "x");
                let r = x.shape.len();
                let (n, d, len) = (x.shape[r - 2], x.shape[r - 1], *len as usize);
                if n > len {
                    return Err(format!("cannot pad {n} positions to {len}"));
                }
                let mut shape = x.shape.clone();
                shape[r - 2] = len;
                let mut out = RefTensor::zeros(&shape);
                for (i, v) in x.data.iter().enumerate() {
                    let (o, t, j) = (i / (n * d), (i / d) % n, i % d);
                    out.data[(o * len + t) * d + j] = *v;
                }
                out
            }
            Sequence::Crop => {
                let (x, like) = (*port(p, ins, "x"), *port(p, ins, "like"));
                let (b, n, d) = (x.shape[0], x.shape[1], x.shape[2]);
                let s = like.shape[1];
                if s > n {
                    return Err(format!("cannot crop {n} positions to {s}"));
                }
                let mut out = RefTensor::zeros(&[b, s, d]);
                for bi in 0..b {
                    for t in 0..s {
                        for j in 0..d {
                            out.data[(bi * s + t) * d + j] = x.data[(bi * n + t) * d + j];
                        }
                    }
                }
                out
            }
            Sequence::SliceFeatures { start, len } => {
                let x = *port(p, ins, "x");
                let d = *x.shape.last().unwrap_or(&1);
                let (start, len) = (*start as usize, *len as usize);
                let mut shape = x.shape.clone();
                *shape.last_mut().unwrap_or(&mut 0) = len;
                let mut out = RefTensor::zeros(&shape);
                for (r, row) in x.data.chunks(d).enumerate() {
                    for j in 0..len {
                        out.data[r * len + j] = row[start + j];
                    }
                }
                out
            }
            Sequence::ConcatFeatures { .. } => {
                let parts: Vec<&RefTensor> = p.iter().map(|name| *port(p, ins, name)).collect();
                let widths: Vec<usize> = parts
                    .iter()
                    .map(|t| *t.shape.last().unwrap_or(&0))
                    .collect();
                let total: usize = widths.iter().sum();
                let rows = parts[0].data.len() / widths[0].max(1);
                let mut shape = parts[0].shape.clone();
                *shape.last_mut().unwrap_or(&mut 0) = total;
                let mut out = RefTensor::zeros(&shape);
                for r in 0..rows {
                    let mut at = r * total;
                    for (t, w) in parts.iter().zip(&widths) {
                        for j in 0..*w {
                            out.data[at + j] = t.data[r * w + j];
                        }
                        at += w;
                    }
                }
                out
            }
        })
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        match self {
            Sequence::Pad { len } => match port(p, ins, "x") {
                V::F2(x) => V::F2(pad_axis(x.clone(), 0, *len as usize, ctx)),
                other => V::F3(pad_axis(other.f3(), 1, *len as usize, ctx)),
            },
            Sequence::Crop => V::F3(port(p, ins, "x").f3().narrow(
                1,
                0,
                seq_of(port::<&V>(p, ins, "like")),
            )),
            Sequence::SliceFeatures { start, len } => V::F3(port(p, ins, "x").f3().narrow(
                2,
                *start as usize,
                *len as usize,
            )),
            Sequence::ConcatFeatures { .. } => V::F3(Tensor::cat(
                p.iter().map(|name| port(p, ins, name).f3()).collect(),
                2,
            )),
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// Port names `x0`, `x1`, … of an op with `n` inputs (`n` an attribute).
pub fn numbered_ports(n: usize) -> &'static [&'static str] {
    super::counted_ports("x", n as u64, || (0..n).map(|i| format!("x{i}")).collect())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{random, Arg, Case};
    use super::*;
    use crate::ir::DType;
    use crate::util::Rng;

    #[test]
    fn padding_passes_every_check() {
        let mut rng = Rng::new(31);
        for (b, s, d, len) in [(2, 5, 3, 8), (1, 4, 1, 4), (3, 1, 6, 7)] {
            let op = Sequence::Pad { len };
            let case = Case {
                op: &op,
                args: vec![Arg::seq(&[b, s, d], 1, &mut rng)],
                out_seq: Some(1),
                tol: 1e-6,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            // Outputs s.. are padding: moving the last position moves output s − 1 and none
            // before (the general check compares every output before the last, padding
            // included, so only fits when nothing is padded).
            case.moving_a_position_changes_no_earlier_output(&[("x", 1)], s - 1);
            if s as u64 == len {
                case.later_positions_change_no_earlier_output();
            }
            // A causal filter's kernel `[taps, d]`: no batch, no positions.
            let kernel = Case {
                op: &op,
                args: vec![Arg::fixed(&[s, d], &mut rng)],
                out_seq: None,
                tol: 1e-6,
            };
            kernel.infers_the_forward_shape();
            kernel.matches_the_reference();
            kernel.gradients_reach_every_input(&[]);
        }
    }

    #[test]
    fn cropping_passes_every_check() {
        let mut rng = Rng::new(32);
        for (b, n, s, d) in [(2, 8, 5, 3), (1, 4, 4, 2), (3, 7, 1, 5)] {
            // x: a transform's output over the padded length n (a fixed length, not the
            // sequence's); like: the sequence whose positions it keeps (vectors or ids).
            for like in [
                Arg::seq(&[b, s, 2], 1, &mut rng),
                Arg::ids(b, s, 4, &mut rng),
            ] {
                let case = Case {
                    op: &Sequence::Crop,
                    args: vec![Arg::given(random(&[b, n, d], &mut rng), None), like],
                    out_seq: Some(1),
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                // `like` gives its length only: no gradient reaches it.
                case.gradients_reach_every_input(&["like"]);
                // Position t of x is output t; the positions cropped away reach no output.
                case.moving_a_position_changes_no_earlier_output(&[("x", 1)], s - 1);
                case.moving_a_position_changes_no_earlier_output(&[("x", 1)], n - 1);
            }
        }
    }

    #[test]
    fn feature_slices_pass_every_check() {
        let mut rng = Rng::new(33);
        for (b, s, d, start, len) in [(2, 5, 7, 2, 3), (1, 3, 4, 0, 4), (3, 6, 5, 4, 1)] {
            let case = Case {
                op: &Sequence::SliceFeatures { start, len },
                args: vec![Arg::seq(&[b, s, d], 1, &mut rng)],
                out_seq: Some(1),
                tol: 1e-6,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(2);
        }
    }

    #[test]
    fn feature_concatenations_pass_every_check() {
        let mut rng = Rng::new(34);
        for (b, s) in [(2, 5), (1, 3)] {
            for widths in [vec![3], vec![2, 1, 5], vec![4, 4]] {
                let op = Sequence::ConcatFeatures {
                    parts: widths.len() as u64,
                };
                let case = Case {
                    op: &op,
                    args: widths
                        .iter()
                        .map(|&w| Arg::seq(&[b, s, w], 1, &mut rng))
                        .collect(),
                    out_seq: Some(1),
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                case.gradients_reach_every_input(&[]);
                case.later_positions_change_no_earlier_output();
                case.decodes_like_the_whole_sequence(2);
            }
        }
    }

    #[test]
    fn infer_errors_ports_and_position_limits() {
        let ty = |dtype, shape: &[Dim]| TensorType {
            dtype,
            shape: shape.to_vec(),
        };
        let f = |shape: &[Dim]| ty(DType::F32, shape);
        let ids = ty(DType::I64, &[Dim::Batch, Dim::Seq]);
        let x = f(&[Dim::Batch, Dim::Seq, Dim::Fixed(6)]);
        let pad = Sequence::Pad { len: 8 };
        assert_eq!(
            pad.infer(std::slice::from_ref(&ids)),
            Err(InferError::TokenIds)
        );
        assert!(matches!(
            pad.infer(&[f(&[Dim::Fixed(6)])]),
            Err(InferError::Shapes(_))
        ));
        let long = f(&[Dim::Fixed(9), Dim::Fixed(6)]);
        assert_eq!(
            pad.infer(std::slice::from_ref(&long)),
            Err(shapes("cannot pad a sequence of 9 positions to 8"))
        );
        // Padding the sequence limits it; padding a kernel does not.
        assert_eq!(pad.position_limit(&[&x]), Some(8));
        assert_eq!(
            pad.position_limit(&[&f(&[Dim::Fixed(4), Dim::Fixed(6)])]),
            None
        );
        assert!(matches!(
            Sequence::Crop.infer(&[f(&[Dim::Fixed(8), Dim::Fixed(6)]), x.clone()]),
            Err(InferError::Shapes(_))
        ));
        let slice = |start, len| Sequence::SliceFeatures { start, len };
        assert!(matches!(
            slice(2, 0).infer(std::slice::from_ref(&x)),
            Err(InferError::Attribute(_))
        ));
        assert_eq!(
            slice(4, 3).infer(std::slice::from_ref(&x)),
            Err(shapes(format!("cannot take features 4..7 of {x}")))
        );
        let cat = Sequence::ConcatFeatures { parts: 2 };
        assert_eq!(
            cat.infer(&[x.clone(), f(&[Dim::Batch, Dim::Seq, Dim::Fixed(3)])]),
            Ok(f(&[Dim::Batch, Dim::Seq, Dim::Fixed(9)]))
        );
        assert!(matches!(
            cat.infer(&[x.clone(), f(&[Dim::Batch, Dim::Fixed(2), Dim::Fixed(3)])]),
            Err(InferError::Shapes(e)) if e.contains("different shapes")
        ));
        let ids3 = ty(DType::I64, &[Dim::Batch, Dim::Seq, Dim::Fixed(1)]);
        assert_eq!(cat.infer(&[x, ids3]), Err(InferError::TokenIds));
        // Numbered ports, made once per count.
        assert_eq!(cat.ports(), &["x0", "x1"]);
        assert_eq!(numbered_ports(3), &["x0", "x1", "x2"]);
        assert!(std::ptr::eq(numbered_ports(3), numbered_ports(3)));
        assert!(numbered_ports(0).is_empty());
    }
}
