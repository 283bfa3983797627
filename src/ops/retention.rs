//! RetNet's multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to
//! Transformer for Large Language Models", §2.1–2.2), the core between the projections:
//!
//! head i has the decay γ_i = 1 − 2^(−5−i) and computes, at position t,
//! `o_t = Σ_{m ≤ t} γ_i^(t−m) (q_t · k_m / √d_k) v_m`, the parallel form `(Q Kᵀ ⊙ D) V` with
//! `D_tm = γ^(t−m)` for m ≤ t and 0 otherwise; decoding uses the recurrent form
//! `S_t = γ S_(t−1) + k_tᵀ v_t`, `o_t = q_t S_t` (chunk by chunk: a prompt, then one position
//! at a time). The heads' outputs are then normalized as the paper's GroupNorm does: per
//! position and head over the head's d_v features, then scaled and shifted per feature.
//!
//! The paper's row normalizations of D and of the scores rescale each (position, head)
//! by a positive factor, which the GroupNorm removes (up to its ε): they are left out.
//!
//! The forward pass (no previous state) runs as one fused kernel, [`fused::retention`];
//! decoding, which carries the state, and mixed-precision products take the plain Burn path
//! ([`fused::retention_chunk_plain`] and [`fused::retention_group_norm_plain`]).

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, Real, TensorType};
use crate::runtime::fused;
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;

pub use crate::runtime::fused::retention_decay as decay;

/// `(q [b, h, s, d_k], k [b, h, s, d_k], v [b, h, s, d_v], weight [h·d_v], bias [h·d_v]) →
/// [b, s, h·d_v]`: retention with per-head decays, then the heads' GroupNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Retention {
    /// The GroupNorm's ε (added to each group's variance).
    pub eps: Real,
}

/// What decoding keeps: per head the state `S = Σ_m γ^(T−1−m) k_mᵀ v_m` over the T
/// positions seen, `[b, h, d_k, d_v]`.
pub struct RetentionState {
    s: Tensor<4>,
}

impl OpState for RetentionState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.s = self.s.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.s.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

impl Retention {
    /// The inputs q, k, v and the norm's weight and bias.
    fn inputs(&self, ins: &[&V]) -> ([Tensor<4>; 3], [Tensor<1>; 2]) {
        let p = self.ports();
        let qkv = ["q", "k", "v"].map(|n| port(p, ins, n).f4());
        (qkv, ["weight", "bias"].map(|n| port(p, ins, n).f1()))
    }

    /// The plain path following the state `prev` of the positions before: the output and the
    /// new state.
    fn run(&self, ins: &[&V], ctx: &Ctx, prev: Option<Tensor<4>>) -> (V, Tensor<4>) {
        let ([q, k, v], [w, b]) = self.inputs(ins);
        let (o, state) = fused::retention_chunk_plain(q, k, v, prev, |a, b| mm(a, b, ctx));
        let y = fused::retention_group_norm_plain(o, w, b, self.eps.0);
        (V::F3(y), state)
    }
}

impl OpDef for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn attrs(&self) -> String {
        format!("decay=1-2^(-5-head) eps={}", self.eps)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["q", "k", "v", "weight", "bias"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let q = float_input(port(p, ins, "q"))?;
        let (k, v) = (
            float_input(port(p, ins, "k"))?,
            float_input(port(p, ins, "v"))?,
        );
        let [b, Dim::Fixed(h), s, dk] = q.shape.as_slice() else {
            return Err(shapes(format!(
                "expects queries [batch, heads, seq, width], got {q}"
            )));
        };
        let [.., Dim::Fixed(dv)] = v.shape.as_slice() else {
            return Err(shapes(format!(
                "expects values [batch, heads, seq, width], got {v}"
            )));
        };
        let same_lead = |t: &TensorType| t.shape.len() == 4 && t.shape[..3] == q.shape[..3];
        if k.shape.len() != 4 || k.shape[..3] != q.shape[..3] || k.shape[3] != *dk || !same_lead(v)
        {
            return Err(shapes(format!(
                "keys {k} and values {v} do not fit queries {q}"
            )));
        }
        let width = vec![Dim::Fixed(h * dv)];
        for name in ["weight", "bias"] {
            let g = port(p, ins, name);
            if g.shape != width {
                return Err(shapes(format!(
                    "the norm's {name} {g} does not fit {h} heads of {dv} values"
                )));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: vec![*b, *s, Dim::Fixed(h * dv)],
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        // Q Kᵀ and (·) V: 2 multiply-adds per pair of positions and feature.
        let (q, v) = (*port(p, ins, "q"), *port(p, ins, "v"));
        2 * seq * (q.numel(batch, seq) + v.numel(batch, seq))
    }

    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64 {
        // The decay matrix D and the scores: h·s·s each, as attention's scores and weights.
        let p = self.ports();
        super::attention::score_bytes(
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
        let (w, bias) = (*port(p, ins, "weight"), *port(p, ins, "bias"));
        let (b, h, s, dk) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
        let dv = v.shape[3];
        let at = |t: &RefTensor, bi: usize, hi: usize, pos: usize, j: usize| {
            t.data[((bi * h + hi) * s + pos) * t.shape[3] + j]
        };
        let mut out = RefTensor::zeros(&[b, s, h * dv]);
        for bi in 0..b {
            for hi in 0..h {
                let g = 1.0 - 0.5f64.powi(5 + hi as i32);
                for t in 0..s {
                    let mut o = vec![0.0; dv];
                    for m in 0..=t {
                        let dot: f64 = (0..dk)
                            .map(|j| at(q, bi, hi, t, j) * at(k, bi, hi, m, j))
                            .sum();
                        let wgt = g.powi((t - m) as i32) * dot / (dk as f64).sqrt();
                        for (j, oj) in o.iter_mut().enumerate() {
                            *oj += wgt * at(v, bi, hi, m, j);
                        }
                    }
                    let mean = o.iter().sum::<f64>() / dv as f64;
                    let var = o.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / dv as f64;
                    for (j, oj) in o.iter().enumerate() {
                        let c = hi * dv + j;
                        out.data[(bi * s + t) * h * dv + c] =
                            (oj - mean) / (var + self.eps.0).sqrt() * w.data[c] + bias.data[c];
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        // Without a previous state the fused kernel (which keeps no state) computes it all;
        // decoding and mixed-precision products take the plain path.
        if ctx.matmul_dtype.is_none() {
            let ([q, k, v], [w, b]) = self.inputs(ins);
            return V::F3(fused::retention(q, k, v, w, b, self.eps.0));
        }
        self.run(ins, ctx, None).0
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let prev = take_state::<RetentionState>(state).map(|st| st.s);
        let (y, s) = self.run(ins, ctx, prev);
        *state = Some(Box::new(RetentionState { s }));
        y
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    const OP: Retention = Retention { eps: Real(1e-5) };

    fn args(b: usize, h: usize, s: usize, dk: usize, dv: usize, rng: &mut Rng) -> Vec<Arg> {
        vec![
            Arg::seq(&[b, h, s, dk], 2, rng),
            Arg::seq(&[b, h, s, dk], 2, rng),
            Arg::seq(&[b, h, s, dv], 2, rng),
            Arg::fixed(&[h * dv], rng),
            Arg::fixed(&[h * dv], rng),
        ]
    }

    #[test]
    fn every_check_passes_on_random_shapes() {
        let mut rng = Rng::new(31);
        for (b, h, s, dk, dv) in [(1, 1, 1, 2, 2), (2, 3, 7, 4, 5), (1, 4, 12, 8, 8)] {
            let case = Case {
                op: &OP,
                args: args(b, h, s, dk, dv, &mut rng),
                out_seq: Some(1),
                tol: 1e-4,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
            for prompt in [1, 3] {
                case.decodes_like_the_whole_sequence(prompt);
            }
            if s > 2 {
                // Beam search keeps rows in a new order (here reversed): the state follows.
                case.decodes_after_reordering_rows(2, &case.reversed_rows());
            }
        }
    }

    #[test]
    fn decays_are_the_papers_and_long_sequences_stay_finite() {
        assert_eq!(decay(0), 1.0 - 1.0 / 32.0);
        assert_eq!(decay(3), 1.0 - 1.0 / 256.0);
        // 300 positions: γ^t underflows nowhere that matters and the state stays finite.
        let mut rng = Rng::new(4);
        let case = Case {
            op: &OP,
            args: args(1, 2, 300, 4, 4, &mut rng),
            out_seq: Some(1),
            tol: 2e-4,
        };
        case.matches_the_reference();
        case.decodes_like_the_whole_sequence(200);
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let t = |shape: &[Dim]| TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let (b, s, f) = (Dim::Batch, Dim::Seq, Dim::Fixed);
        let q = t(&[b, f(2), s, f(4)]);
        let w = t(&[f(8)]);
        let ok = [q.clone(), q.clone(), q.clone(), w.clone(), w.clone()];
        assert_eq!(OP.infer(&ok).unwrap().shape, vec![b, s, f(8)]);
        let mut bad = ok.clone();
        bad[1] = t(&[b, f(2), s, f(3)]);
        assert!(matches!(OP.infer(&bad), Err(InferError::Shapes(_))));
        let mut bad = ok.clone();
        bad[3] = t(&[f(7)]);
        assert!(OP.infer(&bad).unwrap_err().to_string().contains("weight"));
        let mut bad = ok;
        bad[0] = TensorType {
            dtype: DType::I64,
            shape: vec![b, s],
        };
        assert_eq!(OP.infer(&bad), Err(InferError::TokenIds));
    }
}
