//! Attention over the sequence's own positions (its cache of keys and values for decoding
//! is [`KvState`]).

use super::kv::append;
use super::weights::{adaptive_softmax, attention_weights, hard_weights};
use super::{add_key_bias, key_bias_fits, AttnScale, KvState};
use crate::ir::{DType, Dim, Mixing, Real, TensorType};
use crate::ops::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::runtime::ops::{dropout, dropout_key, mm, record_entropy, Ctx};
use crate::runtime::{fused, V};
use burn::prelude::*;

/// `(q [b, hq, s, d], k [b, hkv, s, d], v [b, hkv, s, d], scale? [1], key_mask? [b, s]) →
/// [b, hq, s, d]` with hq = hkv · kv_groups; query head h reads KV head ⌊h / kv_groups⌋.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SelfAttention {
    /// Mask later positions.
    pub causal: bool,
    /// Query heads per KV head (1: ordinary attention).
    pub kv_groups: u64,
    /// Logit scaling.
    pub scale: AttnScale,
    /// Dropout on the attention weights.
    pub dropout: Real,
    /// Hard (argmax) attention, trained straight-through.
    pub hard: bool,
    /// Entropy-adaptive temperature at inference.
    pub adaptive: bool,
    /// A last input `[b, t]` is added to every query's logits over the t keys (a key-padding
    /// mask from [`super::PadBias`]).
    pub key_mask: bool,
}

impl OpDef for SelfAttention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn attrs(&self) -> String {
        format!(
            "causal={} kv_groups={} scale={} dropout={}{}{}{}",
            self.causal,
            self.kv_groups,
            match self.scale {
                AttnScale::InvSqrtDim => "1/sqrt(d)",
                AttnScale::Learned => "learned",
            },
            self.dropout,
            if self.hard { " hard" } else { "" },
            if self.adaptive {
                " adaptive_temperature"
            } else {
                ""
            },
            if self.key_mask { " key_mask" } else { "" }
        )
    }

    fn ports(&self) -> &'static [&'static str] {
        match (self.scale, self.key_mask) {
            (AttnScale::InvSqrtDim, false) => &["q", "k", "v"],
            (AttnScale::Learned, false) => &["q", "k", "v", "scale"],
            (AttnScale::InvSqrtDim, true) => &["q", "k", "v", "key_mask"],
            (AttnScale::Learned, true) => &["q", "k", "v", "scale", "key_mask"],
        }
    }

    fn is_pure(&self) -> bool {
        self.dropout.0 <= 0.0
    }

    fn mixing(&self) -> Mixing {
        if self.causal {
            Mixing::Causal
        } else {
            Mixing::Full
        }
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        if self.kv_groups == 0 {
            return Err(InferError::Attribute(
                "attention needs at least one query head per key/value head (kv_groups ≥ 1)".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout.0) {
            return Err(InferError::Attribute(format!(
                "attention dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        let p = self.ports();
        let q = float_input(port(p, ins, "q"))?;
        let k = float_input(port(p, ins, "k"))?;
        let v = float_input(port(p, ins, "v"))?;
        if self.key_mask {
            key_bias_fits(port(p, ins, "key_mask"), k)?;
        }
        match (q.shape.as_slice(), k.shape.as_slice()) {
            ([b, Dim::Fixed(hq), s, d], [_, Dim::Fixed(hk), _, dk]) => {
                if *hq != hk * self.kv_groups {
                    return Err(shapes(format!(
                        "{hq} query heads cannot share {hk} key/value heads in groups of {}",
                        self.kv_groups
                    )));
                }
                if d != dk || k.shape != v.shape {
                    return Err(shapes(format!(
                        "query {q}, key {k} and value {v} do not fit"
                    )));
                }
                Ok(TensorType {
                    dtype: DType::F32,
                    shape: vec![*b, Dim::Fixed(*hq), *s, *d],
                })
            }
            _ => Err(shapes(format!(
                "expects [batch, heads, seq, head_dim] inputs, got {q} and {k}"
            ))),
        }
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        // q·kᵀ and p·v over the full score matrix, as computed: 2 · 2 · (output size) · seq.
        4 * port(self.ports(), ins, "q").numel(batch, seq) * seq
    }

    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64 {
        let p = self.ports();
        let (q, k) = (
            port::<&TensorType>(p, ins, "q"),
            port::<&TensorType>(p, ins, "k"),
        );
        // The variants that read or change the probabilities hold the whole score and weight
        // matrices; plain attention runs as one fused kernel.
        if self.hard || self.adaptive || self.key_mask {
            super::score_bytes(q, k, seq)
        } else {
            super::fused_score_bytes(q, k, seq)
        }
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        // A key mask over the decoder's own tokens (`mask_padding`) covers every position, so
        // each step would recompute the prefix.
        self.causal && !self.key_mask
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let (q, k, v) = (*port(p, ins, "q"), *port(p, ins, "k"), *port(p, ins, "v"));
        let bias = self.key_mask.then(|| *port(p, ins, "key_mask"));
        let (b, hq, s, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
        let (hk, t) = (k.shape[1], k.shape[2]);
        let g = self.kv_groups as usize;
        if hk * g != hq || t < s {
            return Err(format!(
                "attention of {hq} query heads over {hk} key/value heads in groups of {g}, {s} queries over {t} keys"
            ));
        }
        let factor = match self.scale {
            AttnScale::InvSqrtDim => 1.0 / (d as f64).sqrt(),
            AttnScale::Learned => port(p, ins, "scale").data[0],
        };
        // The queries are the last s of the t positions.
        let earlier = t - s;
        let mut out = RefTensor::zeros(&q.shape);
        for bi in 0..b {
            for h in 0..hq {
                let kh = h / g;
                let qb = (bi * hq + h) * s * d;
                let kb = (bi * hk + kh) * t * d;
                for i in 0..s {
                    let keys = if self.causal { earlier + i + 1 } else { t };
                    let logits: Vec<f64> = (0..keys)
                        .map(|j| {
                            (0..d)
                                .map(|c| q.data[qb + i * d + c] * k.data[kb + j * d + c])
                                .sum::<f64>()
                                * factor
                                + bias.map_or(0.0, |m| m.data[bi * t + j])
                        })
                        .collect();
                    let w = attention_weights(&logits, self.hard, self.adaptive);
                    for c in 0..d {
                        out.data[qb + i * d + c] =
                            (0..keys).map(|j| w[j] * v.data[kb + j * d + c]).sum();
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        let (k, v) = (port(p, ins, "k").f4(), port(p, ins, "v").f4());
        V::F4(self.attend(ins, k, v, ctx))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let p = self.ports();
        let (k, v) = (port(p, ins, "k").f4(), port(p, ins, "v").f4());
        let earlier = take_state::<KvState>(state);
        let (ek, ev) = earlier.map(|e| (e.k, e.v)).unzip();
        // Grown by one call's positions, or written into buffers of a fixed capacity; there
        // the positions not written yet lie after every query's causal limit, so they get
        // probability 0 and the output is the growing cache's.
        let k = append(ek, k, ctx.offset, ctx.kv_capacity);
        let v = append(ev, v, ctx.offset, ctx.kv_capacity);
        let out = self.attend(ins, k.clone(), v.clone(), ctx);
        *state = Some(Box::new(KvState { k, v }));
        V::F4(out)
    }
}

impl SelfAttention {
    /// Attention of the queries in `ins` over keys `k` and values `v` (`[b, H_kv, T, d]`,
    /// where T may exceed the queries' length by `ctx.offset` cached positions). Grouped
    /// formulation: the G query heads of a KV head become G·s rows of one matmul, so K/V are
    /// never repeated.
    fn attend(&self, ins: &[&V], k: Tensor<4>, v: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
        let ports = self.ports();
        let q = port(ports, ins, "q").f4();
        let [b, hq, s, d] = q.dims();
        let hk = k.dims()[1];
        let g = self.kv_groups as usize;
        let p = self.dropout.0;
        // Query i (absolute position offset + i) sees keys j ≤ offset + i.
        let vis = fused::Visible {
            queries: s,
            causal: self.causal,
            offset: ctx.offset,
        };
        let inv_sqrt = 1.0 / (d as f64).sqrt();
        // Plain and hard attention are one fused op (the 1/√d scale folded into its product,
        // the dropout of the weights in training inside it); the variants that change or read
        // the probabilities (adaptive attention, key padding, the entropy term, mixed
        // precision) are built from tensor ops.
        let hard = self.hard && !ctx.soft_attention;
        let variant = (!hard && self.adaptive && !ctx.train)
            || self.key_mask
            || ctx.wants_attention_entropy()
            || ctx.matmul_dtype.is_some();
        // A learned scale multiplies q. 1/√d goes into the fused product, or else on q
        // ([.., s, d]) rather than on the scores ([.., s, t]): one pass over the smaller
        // tensor, forward and backward.
        let (q, factor) = match self.scale {
            AttnScale::InvSqrtDim => (q, Some(inv_sqrt)),
            AttnScale::Learned => (
                q * port(ports, ins, "scale").f1().reshape([1, 1, 1, 1]),
                None,
            ),
        };
        if !variant {
            let scale = factor.unwrap_or(1.0) as f32;
            // The same key, drawn at the same place, as the separate dropout below: the same
            // mask on the weights [b, h, s, t].
            let drop = (ctx.train && p > 0.0).then(|| (p, dropout_key(ctx, &q.device())));
            let masks = ctx.consts;
            return match (hard, drop) {
                (true, drop) => {
                    fused::attention_hard((q, k, v), scale, vis, drop, ctx.train, masks)
                }
                (false, Some((p, key))) => {
                    fused::attention_dropout(q, k, v, scale, vis, p, key, masks)
                }
                (false, None) => fused::attention(q, k, v, scale, vis, masks),
            };
        }
        let q = match factor {
            Some(f) => q.mul_scalar(f),
            None => q,
        };
        let q = q.reshape([b, hk, g * s, d]);
        let mut scores = mm(q, k.swap_dims(2, 3), ctx);
        if self.key_mask {
            scores = add_key_bias(scores, port::<&V>(ports, ins, "key_mask"));
        }
        let probs = if hard {
            hard_weights(
                fused::softmax_plain_mask(scores, vis, ctx.consts),
                ctx.train,
            )
        } else if self.adaptive && !ctx.train {
            adaptive_softmax(fused::softmax_plain_mask(scores, vis, ctx.consts))
        } else {
            fused::softmax_rows(scores, vis, ctx.consts)
        };
        record_entropy(&probs, ctx);
        let probs = dropout(probs, p, ctx);
        mm(probs, v, ctx).reshape([b, hq, s, d])
    }
}

#[cfg(test)]
mod tests;
