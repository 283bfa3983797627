//! Reshaping a sequence: zero-padding and cropping its positions, slicing and concatenating its
//! features.

use super::positions::seq_of;
use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
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
        let f32 = |shape: Vec<Dim>| {
            Ok(TensorType {
                dtype: DType::F32,
                shape,
            })
        };
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
                let widths: Vec<usize> = parts.iter().map(|t| *t.shape.last().unwrap_or(&0)).collect();
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
                seq_of(*port(p, ins, "like")),
            )),
            Sequence::SliceFeatures { start, len } => {
                V::F3(port(p, ins, "x").f3().narrow(2, *start as usize, *len as usize))
            }
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

/// Port names `x0`, `x1`, … of an op with `n` inputs (`n` an attribute), made once for each n
/// (the names of ports are static).
pub fn numbered_ports(n: usize) -> &'static [&'static str] {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static MADE: OnceLock<Mutex<(Vec<&'static str>, HashMap<usize, &'static [&'static str]>)>> =
        OnceLock::new();
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (names, lists) = &mut *made;
    while names.len() < n {
        let name: &'static str = Box::leak(format!("x{}", names.len()).into_boxed_str());
        names.push(name);
    }
    let names = &names[..n];
    lists
        .entry(n)
        .or_insert_with(|| Box::leak(names.to_vec().into_boxed_slice()))
}
