//! The position-wise linear model of the rule-extrapolation paper (Mészáros et al. 2024): a
//! weight for every pair of positions s ≤ t; it decodes with every earlier input as its
//! state.

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// `(x [b, s, i], weight [L, i, L, o], bias [L, o]?) → [b, s, o]`:
/// `y[t] = Σ_{s'≤t} x[s'] · weight[s', :, t, :] + bias[t]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PositionLinear {
    /// Longest sequence L.
    pub max_len: u64,
    /// Whether the third input (bias) is present.
    pub bias: bool,
}

/// What a position-wise linear map keeps between decoding calls: the inputs of every earlier
/// position `[b, t, i]`.
pub struct PositionLinearState {
    inputs: Tensor<3>,
}

impl OpState for PositionLinearState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.inputs = self.inputs.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.inputs.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

/// The outputs at positions offset..t from the inputs of every position so far, `x [b, t, i]`:
/// y_u = Σ_{r≤u} x_r · w[r, :, u, :] + bias[u]. When decoding, `x` holds the earlier
/// positions' inputs too and only the new positions are computed.
fn outputs(
    x: Tensor<3>,
    w: Tensor<4>,
    bias: Option<Tensor<2>>,
    offset: usize,
    ctx: &Ctx,
) -> Tensor<3> {
    let [b, t, i] = x.dims();
    let o = w.dims()[3];
    let s = t - offset;
    // Only the first t input positions and the s output positions matter:
    // y = x[b, t·i] · (w ⊙ mask)[t·i, s·o], the mask keeping r ≤ offset + c.
    let w = w.narrow(0, 0, t).narrow(2, offset, s);
    let mask: Vec<f32> = (0..t * s)
        .map(|k| f32::from(u8::from(k / s <= offset + k % s)))
        .collect();
    let mask =
        Tensor::<2>::from_data(TensorData::new(mask, [t, s]), ctx.device).reshape([t, 1, s, 1]);
    let wm = (w * mask).reshape([t * i, s * o]);
    let y = mm(x.reshape([b, t * i]), wm, ctx).reshape([b, s, o]);
    match bias {
        Some(bias) => y + bias.narrow(0, offset, s).unsqueeze::<3>(),
        None => y,
    }
}

impl PositionLinear {
    fn bias_of(&self, ins: &[&V]) -> Option<Tensor<2>> {
        self.bias.then(|| port(self.ports(), ins, "bias").f2())
    }
}

impl OpDef for PositionLinear {
    fn name(&self) -> &'static str {
        "position_linear"
    }

    fn attrs(&self) -> String {
        format!("max_len={} bias={}", self.max_len, self.bias)
    }

    fn ports(&self) -> &'static [&'static str] {
        if self.bias {
            &["x", "weight", "bias"]
        } else {
            &["x", "weight"]
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let max_len = self.max_len;
        let x = float_input(port(p, ins, "x"))?;
        let weight = port(p, ins, "weight");
        let (l, i, o) = match weight.shape.as_slice() {
            [Dim::Fixed(l), i, Dim::Fixed(l2), Dim::Fixed(o)] if l == l2 => (*l, *i, *o),
            _ => {
                return Err(shapes(format!(
                    "position-linear weight {weight} is not [L, in, L, out]"
                )))
            }
        };
        if l != max_len || x.shape.last() != Some(&i) {
            return Err(shapes(format!(
                "position-linear weight {weight} does not fit input {x}"
            )));
        }
        if self.bias && port(p, ins, "bias").shape != vec![Dim::Fixed(l), Dim::Fixed(o)] {
            return Err(shapes("bias shape does not match [max_len, out]"));
        }
        match x.shape.as_slice() {
            [b, s, _] => {
                if let Dim::Fixed(n) = s {
                    if *n > max_len {
                        return Err(shapes(format!(
                            "a sequence of {n} positions exceeds max_len {max_len}"
                        )));
                    }
                }
                Ok(TensorType {
                    dtype: DType::F32,
                    shape: vec![*b, *s, Dim::Fixed(o)],
                })
            }
            _ => Err(shapes(format!("expects [batch, seq, width], got {x}"))),
        }
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        let (x, w) = (port(p, ins, "x"), port(p, ins, "weight"));
        // Every output reads the inputs of up to `seq` positions.
        let (i, o) = (w.len(1, seq), w.len(3, seq));
        let out = x.numel(batch, seq) / x.len(2, seq).max(1) * o;
        2 * out * i * seq
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        Some(self.max_len as usize)
    }

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let (x, w) = (*port(p, ins, "x"), *port(p, ins, "weight"));
        let (b, s, i) = (x.shape[0], x.shape[1], x.shape[2]);
        let (l, o) = (self.max_len as usize, w.shape[3]);
        let mut out = RefTensor::zeros(&[b, s, o]);
        for bi in 0..b {
            for t in 0..s {
                for oi in 0..o {
                    let mut acc = if self.bias {
                        port(p, ins, "bias").data[t * o + oi]
                    } else {
                        0.0
                    };
                    for sp in 0..=t {
                        for ii in 0..i {
                            acc += x.data[(bi * s + sp) * i + ii]
                                * w.data[((sp * i + ii) * l + t) * o + oi];
                        }
                    }
                    out.data[(bi * s + t) * o + oi] = acc;
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        let w = port(p, ins, "weight").f4();
        debug_assert_eq!(w.dims()[0], self.max_len as usize);
        V::F3(outputs(
            port(p, ins, "x").f3(),
            w,
            self.bias_of(ins),
            0,
            ctx,
        ))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let p = self.ports();
        let mut x = port(p, ins, "x").f3();
        if let Some(earlier) = take_state::<PositionLinearState>(state) {
            x = Tensor::cat(vec![earlier.inputs, x], 1);
        }
        let w = port(p, ins, "weight").f4();
        let y = outputs(x.clone(), w, self.bias_of(ins), ctx.offset, ctx);
        *state = Some(Box::new(PositionLinearState { inputs: x }));
        V::F3(y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    fn ty(shape: Vec<Dim>) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape,
        }
    }

    fn fixed(shape: &[u64]) -> TensorType {
        ty(shape.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    #[test]
    fn every_check_passes_with_and_without_bias() {
        let mut rng = Rng::new(41);
        for bias in [true, false] {
            // A sequence shorter than max_len, one as long, odd widths.
            for (l, (b, s, i, o)) in [(7, (2, 5, 3, 4)), (6, (3, 6, 1, 5)), (9, (1, 8, 4, 1))] {
                let op = PositionLinear { max_len: l, bias };
                let l = l as usize;
                let mut args = vec![
                    Arg::seq(&[b, s, i], 1, &mut rng),
                    Arg::fixed(&[l, i, l, o], &mut rng),
                ];
                if bias {
                    args.push(Arg::fixed(&[l, o], &mut rng));
                }
                let case = Case {
                    op: &op,
                    args,
                    out_seq: Some(1),
                    tol: 1e-4,
                };
                case.decodes_like_the_whole_sequence(3);
                case.passes_the_checks_of_a_decoding_op(2, &case.reversed_rows());
            }
        }
    }

    #[test]
    fn attributes_limits_and_flops() {
        let op = PositionLinear {
            max_len: 16,
            bias: true,
        };
        assert_eq!(op.attrs(), "max_len=16 bias=true");
        assert_eq!(op.position_limit(&[]), Some(16));
        let x = ty(vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        let w = fixed(&[16, 3, 16, 5]);
        assert_eq!(op.matmul_flops(&[&x, &w], 2, 10), 2 * (2 * 10 * 5) * 3 * 10);
    }

    #[test]
    fn infer_errors_name_what_does_not_fit() {
        let op = PositionLinear {
            max_len: 8,
            bias: true,
        };
        let x = ty(vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        let (w, b) = (fixed(&[8, 3, 8, 2]), fixed(&[8, 2]));
        assert_eq!(
            op.infer(&[x.clone(), w.clone(), b.clone()]).unwrap().shape,
            vec![Dim::Batch, Dim::Seq, Dim::Fixed(2)]
        );
        let ids = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(
            op.infer(&[ids, w.clone(), b.clone()]).unwrap_err(),
            InferError::TokenIds
        );
        let err = |ins: &[TensorType]| match op.infer(ins) {
            Err(InferError::Shapes(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            err(&[x.clone(), fixed(&[8, 3, 7, 2]), b.clone()]).contains("is not [L, in, L, out]")
        );
        assert!(err(&[x.clone(), fixed(&[9, 3, 9, 2]), b.clone()]).contains("does not fit"));
        assert!(err(&[x.clone(), w.clone(), fixed(&[8, 3])]).contains("bias"));
        let long = ty(vec![Dim::Batch, Dim::Fixed(9), Dim::Fixed(3)]);
        assert_eq!(
            err(&[long, w, b]),
            "a sequence of 9 positions exceeds max_len 8"
        );
    }
}
