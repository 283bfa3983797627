//! Cross-attention over an encoder's output, and the key-padding mask of token ids.
//!
//! An encoder-decoder's cross-attention keys and values depend only on the source: the
//! runtime computes them on the first call of a decoding and keeps them (its `source`
//! values), so each call of this op gets them whole.

use super::{add_key_bias, key_bias_fits};
use crate::ir::reference::math::softmax;
use crate::ir::{DType, Mixing, TensorType};
use crate::ops::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::tensor::activation;

/// `(q [b, H, s, d], k [b, H, S, d], v [b, H, S, d], key_mask? [b, S]) → [b, H, s, d]`:
/// softmax(q kᵀ/√d + key_mask) v over all S source positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrossAttention {
    /// The fourth input (a key-padding mask from [`PadBias`]) is present.
    pub key_mask: bool,
}

impl OpDef for CrossAttention {
    fn name(&self) -> &'static str {
        "cross_attention"
    }

    fn attrs(&self) -> String {
        if self.key_mask {
            "key_mask".into()
        } else {
            String::new()
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        if self.key_mask {
            &["q", "k", "v", "key_mask"]
        } else {
            &["q", "k", "v"]
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        // Output t reads the source, not later decoder positions.
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let q = float_input(port(p, ins, "q"))?;
        let (k, v) = (port(p, ins, "k"), port(p, ins, "v"));
        if self.key_mask {
            key_bias_fits(port(p, ins, "key_mask"), k)?;
        }
        match (q.shape.as_slice(), k.shape.as_slice()) {
            ([b, h, _, d], [b2, h2, _, d2]) if b == b2 && h == h2 && d == d2 && k == v => {
                Ok(TensorType {
                    dtype: DType::F32,
                    shape: q.shape.clone(),
                })
            }
            _ => Err(shapes(format!(
                "keys {k} and values {v} do not fit queries {q}"
            ))),
        }
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        // q·kᵀ and p·v: 2 · 2 · (output size) · source positions.
        4 * port(p, ins, "q").numel(batch, seq) * port(p, ins, "k").len(2, seq)
    }

    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64 {
        let p = self.ports();
        super::score_bytes(
            port::<&TensorType>(p, ins, "q"),
            port::<&TensorType>(p, ins, "k"),
            seq,
        )
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let (q, k, v) = (*port(p, ins, "q"), *port(p, ins, "k"), *port(p, ins, "v"));
        let mask = self.key_mask.then(|| *port(p, ins, "key_mask"));
        let (b, h, s, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
        let t = k.shape[2];
        let mut out = RefTensor::zeros(&q.shape);
        for bh in 0..b * h {
            for i in 0..s {
                let qi = &q.data[(bh * s + i) * d..(bh * s + i + 1) * d];
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        let kj = &k.data[(bh * t + j) * d..(bh * t + j + 1) * d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                            + mask.map_or(0.0, |m| m.data[bh / h * t + j])
                    })
                    .collect();
                let p = softmax(&scores);
                for c in 0..d {
                    out.data[(bh * s + i) * d + c] =
                        (0..t).map(|j| p[j] * v.data[(bh * t + j) * d + c]).sum();
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        let (q, k, v) = (
            port(p, ins, "q").f4(),
            port(p, ins, "k").f4(),
            port(p, ins, "v").f4(),
        );
        let d = q.dims()[3] as f64;
        let mut scores = mm(q.div_scalar(d.sqrt()), k.swap_dims(2, 3), ctx);
        if self.key_mask {
            scores = add_key_bias(scores, port::<&V>(p, ins, "key_mask"));
        }
        V::F4(mm(activation::softmax(scores, 3), v, ctx))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// Key-padding mask of token ids `ids [b, S] → [b, S]`: −1e9 where the id is the padding id,
/// else 0; added to attention logits, it removes padded keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PadBias {
    /// The padding id.
    pub pad: i64,
}

impl OpDef for PadBias {
    fn name(&self) -> &'static str {
        "pad_bias"
    }

    fn attrs(&self) -> String {
        format!("pad={}", self.pad)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["ids"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let ids = port(self.ports(), ins, "ids");
        match ids.shape.as_slice() {
            [b, s] if ids.dtype == DType::I64 => Ok(TensorType {
                dtype: DType::F32,
                shape: vec![*b, *s],
            }),
            _ => Err(shapes(format!(
                "expects source ids [batch, len], got {ids}"
            ))),
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
        let ids = *port(self.ports(), ins, "ids");
        let pad = self.pad as f64;
        Ok(RefTensor {
            shape: ids.shape.clone(),
            data: ids
                .data
                .iter()
                .map(|&id| if id == pad { -1e9 } else { 0.0 })
                .collect(),
        })
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let ids = port(self.ports(), ins, "ids").ids();
        V::F2(ids.equal_elem(self.pad).float().mul_scalar(-1e9))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;
    use crate::ops::testing::{Arg, Case};
    use crate::util::Rng;

    #[test]
    fn cross_attention_passes_every_check_with_and_without_a_key_mask() {
        let mut rng = Rng::new(31);
        for key_mask in [false, true] {
            let op = CrossAttention { key_mask };
            for (b, h, s, src, d) in [(1, 1, 1, 3, 3), (2, 3, 5, 4, 4), (3, 2, 7, 6, 5)] {
                // The source's keys, values and mask come whole: they have no decoder
                // positions. (Over a single source position every weight would be 1, so q, k
                // and the mask would move nothing: each shape has several.)
                let mut args = vec![
                    Arg::seq(&[b, h, s, d], 2, &mut rng),
                    Arg::fixed(&[b, h, src, d], &mut rng),
                    Arg::fixed(&[b, h, src, d], &mut rng),
                ];
                if key_mask {
                    args.push(Arg::fixed(&[b, src], &mut rng));
                }
                let case = Case {
                    op: &op,
                    args,
                    out_seq: Some(2),
                    tol: 1e-4,
                };
                case.infers_the_forward_shape_batched(&[1, 2, 3][..op.ports().len() - 1]);
                case.matches_the_reference();
                case.later_positions_change_no_earlier_output();
                case.decodes_like_the_whole_sequence(2);
                case.gradients_reach_every_input(&[]);
            }
        }
    }

    #[test]
    fn cross_attention_shapes_flops_and_mismatches() {
        let t = |shape: &[Dim]| TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let (b, s, f) = (Dim::Batch, Dim::Seq, Dim::Fixed);
        let q = t(&[b, f(2), s, f(4)]);
        let kv = t(&[b, f(2), f(6), f(4)]);
        let mask = t(&[b, f(6)]);
        let op = CrossAttention { key_mask: true };
        let good = [q.clone(), kv.clone(), kv.clone(), mask.clone()];
        assert_eq!(op.infer(&good).unwrap(), q);
        assert_eq!(
            op.matmul_flops(&[&q, &kv, &kv, &mask], 3, 5),
            4 * (3 * 2 * 5 * 4) * 6
        );
        let ids = TensorType {
            dtype: DType::I64,
            shape: vec![b, f(6)],
        };
        let mut bad = good.clone();
        bad[3] = ids.clone();
        assert_eq!(op.infer(&bad).unwrap_err(), InferError::TokenIds);
        bad[3] = t(&[b, f(5)]);
        assert_eq!(
            op.infer(&bad).unwrap_err(),
            shapes(format!("key mask {} does not fit keys {kv}", bad[3]))
        );
        let mut bad = good.clone();
        bad[2] = t(&[b, f(2), f(5), f(4)]);
        assert_eq!(
            op.infer(&bad).unwrap_err(),
            shapes(format!(
                "keys {kv} and values {} do not fit queries {q}",
                bad[2]
            ))
        );
        // Pad bias: ids in, floats out.
        let pb = PadBias { pad: 0 };
        assert_eq!(pb.infer(std::slice::from_ref(&ids)).unwrap(), mask);
        assert_eq!(
            pb.infer(std::slice::from_ref(&mask)).unwrap_err(),
            shapes(format!("expects source ids [batch, len], got {mask}"))
        );
    }

    #[test]
    fn pad_bias_passes_every_check() {
        let mut rng = Rng::new(5);
        for (b, s) in [(1, 1), (2, 5), (3, 7)] {
            let mut ids = Arg::ids(b, s, 3, &mut rng);
            // A padding id at the last position, so that moving it moves the output.
            ids.t.data[s - 1] = 0.0;
            let op = PadBias { pad: 0 };
            let case = Case {
                op: &op,
                args: vec![ids],
                out_seq: Some(1),
                tol: 1e-6,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            // No gradient check: the op's only input is token ids.
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(2);
            let out = op.reference(&[&case.args[0].t]).unwrap();
            assert_eq!(out.data[s - 1], -1e9);
        }
    }
}
