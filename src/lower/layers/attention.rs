//! Attention over the sequence (`attention`) and over an encoder's output (`cross_attention`).

use crate::diag::Code;
use crate::ir::{AttnScale, Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::heads::Heads;
use crate::ops::norm::Norm;
use crate::ops::positions::Positions;
use crate::spec::model::Rope;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    #[allow(clippy::too_many_arguments)] // the fields of `Layer::Attention`
    pub(in crate::lower) fn attention(
        &mut self,
        at: At,
        x: NodeIndex,
        heads: &u32,
        kv_heads: &Option<u32>,
        head_dim: &Option<u32>,
        causal: &bool,
        rope: &Option<Rope>,
        qk_norm: &bool,
        bias: &bool,
        dropout: &f64,
        hard: &bool,
        adaptive_temperature: &bool,
    ) -> Option<NodeIndex> {
        let w = self.width(x);
        let h = u64::from(*heads);
        if *hard && *adaptive_temperature {
            self.error(
                Code::Conflict,
                at.field_span("adaptive_temperature"),
                "`adaptive_temperature` has no effect on hard attention: a temperature cannot change an argmax".into(),
                "conflicts with `hard: true`",
                "remove one of `hard` and `adaptive_temperature`",
            );
            return None;
        }
        let kv = kv_heads.map_or(h, u64::from);
        if h % kv != 0 {
            self.error(
                Code::Shape,
                at.field_span("kv_heads"),
                format!("{h} query heads cannot be shared evenly by {kv} key/value heads"),
                "must divide `heads`",
                &format!("use a divisor of {h} for `kv_heads`"),
            );
            return None;
        }
        let hd = match head_dim {
            Some(d) => u64::from(*d),
            None if w.is_multiple_of(h) => w / h,
            None => {
                self.error(
                    Code::Shape,
                    at.field_span("heads"),
                    format!("width {w} is not divisible by {h} heads"),
                    "does not divide the width",
                    "choose `heads` dividing the width, or set `head_dim`",
                );
                return None;
            }
        };
        if rope.is_some() && hd % 2 != 0 {
            self.error(
                Code::Shape,
                at.field_span("rope"),
                format!("rotary embeddings need an even head width, got {hd}"),
                "odd head width",
                "change `heads` or `head_dim` so that the head width is even",
            );
            return None;
        }
        let q = self.linear(&at, "q", x, h * hd, *bias)?;
        let k = self.linear(&at, "k", x, kv * hd, *bias)?;
        let v = self.linear(&at, "v", x, kv * hd, *bias)?;
        let mut q = self.op(&at, Op::Heads(Heads::Split { heads: h }), &[q])?;
        let mut k = self.op(&at, Op::Heads(Heads::Split { heads: kv }), &[k])?;
        let mut v = self.op(&at, Op::Heads(Heads::Split { heads: kv }), &[v])?;
        if *qk_norm {
            q = self.op(&at, Op::Norm(Norm::L2), &[q])?;
            k = self.op(&at, Op::Norm(Norm::L2), &[k])?;
        }
        if let Some(r) = rope {
            let table = self.op(
                &at,
                Op::Positions(Positions::RopeTable {
                    head_dim: hd,
                    base: Real(r.base),
                    yarn: r.yarn.map(|y| {
                        (
                            Real(y.factor),
                            u64::from(y.original_max_len),
                            Real(y.beta_fast),
                            Real(y.beta_slow),
                        )
                    }),
                }),
                &[self.positions],
            )?;
            q = self.op(&at, Op::Positions(Positions::ApplyRope), &[q, table])?;
            k = self.op(&at, Op::Positions(Positions::ApplyRope), &[k, table])?;
        }
        if kv < h {
            k = self.op(&at, Op::RepeatKv { groups: h / kv }, &[k])?;
            v = self.op(&at, Op::RepeatKv { groups: h / kv }, &[v])?;
        }
        let mut ins = vec![q, k, v];
        let scale = if *qk_norm {
            ins.push(self.param(&at, "qk_scale", &[1], Init::Const(Real(10.0))));
            AttnScale::Learned
        } else {
            AttnScale::InvSqrtDim
        };
        if !self.encoding && self.input_bias.is_some() && self.memory > 0 {
            self.error(
                Code::Structure,
                at.span,
                "`task.mask_padding` cannot mask the keys of attention inside `memory_tokens`"
                    .into(),
                "attention over memory tokens",
                "leave out `mask_padding`, or the memory tokens",
            );
            return None;
        }
        // Encoder attention over the source's own positions skips its padding; so does a
        // decoder-only model's attention over its input when the task masks padding.
        let key_bias = if self.encoding {
            self.key_bias
        } else {
            self.input_bias
        }
        .filter(|_| self.memory == 0);
        ins.extend(key_bias);
        let a = self.op(
            &at,
            Op::Attention {
                causal: *causal,
                kv_groups: 1,
                scale,
                dropout: Real(*dropout),
                hard: *hard,
                adaptive: *adaptive_temperature,
                key_mask: key_bias.is_some(),
            },
            &ins,
        )?;
        let m = self.op(&at, Op::Heads(Heads::Merge), &[a])?;
        self.linear(&at, "out", m, w, *bias)
    }

    pub(in crate::lower) fn cross_attention(
        &mut self,
        at: At,
        x: NodeIndex,
        heads: &u32,
    ) -> Option<NodeIndex> {
        let Some(mem) = self.encoder else {
            self.error(
                Code::Structure,
                at.span,
                "`cross_attention` reads an encoder's output, and the model has no `encoder`"
                    .into(),
                "no encoder to attend to",
                "add `encoder: [...]` to the model, or use `attention`",
            );
            return None;
        };
        let (d, h) = self.heads_divide(&at, x, *heads)?;
        let q = self.linear(&at, "q", x, d, true)?;
        let k = self.linear(&at, "k", mem, d, true)?;
        let v = self.linear(&at, "v", mem, d, true)?;
        let split = |l: &mut Self, t| l.op(&at, Op::Heads(Heads::Split { heads: h }), &[t]);
        let (q, k, v) = (split(self, q)?, split(self, k)?, split(self, v)?);
        let mut ins = vec![q, k, v];
        ins.extend(self.key_bias);
        let op = Op::CrossAttention {
            key_mask: self.key_bias.is_some(),
        };
        let o = self.op(&at, op, &ins)?;
        let o = self.op(&at, Op::Heads(Heads::Merge), &[o])?;
        self.linear(&at, "out", o, d, true)
    }
}
