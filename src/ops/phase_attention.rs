//! Phase-coherent attention: multi-head attention whose logits add the phase coherence of
//! the two positions (see the `phase_attention` layer), cosine or complex, causal or not.

use super::attention::append;
use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::math::softmax;
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::{mm, record_entropy, Ctx};
use crate::runtime::{fused, V};
use burn::prelude::*;

/// `(q [b, h, s, e], k, v, phase [b, h, s, P], amp?, blend [2]) → [b, h, s, e]`: softmax over
/// keys of blend₀·q·k/√e + blend₁·C, with C the phase coherence of the two positions; `amp`
/// only in the complex mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhaseAttention {
    /// Mask later positions.
    pub causal: bool,
    /// Complex (amplitude-weighted) coherence |Σ a a' e^{i(φ−φ')}| / Σ a a' instead of the
    /// cosine one, mean cos(φ − φ').
    pub complex: bool,
}

impl OpDef for PhaseAttention {
    fn name(&self) -> &'static str {
        "phase_attention"
    }

    fn attrs(&self) -> String {
        format!(
            "causal={} mode={}",
            self.causal,
            if self.complex { "complex" } else { "cosine" }
        )
    }

    fn ports(&self) -> &'static [&'static str] {
        if self.complex {
            &["q", "k", "v", "phase", "amp", "blend"]
        } else {
            &["q", "k", "v", "phase", "blend"]
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        if self.causal {
            Mixing::Causal
        } else {
            Mixing::Full
        }
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let q = float_input(port(p, ins, "q"))?;
        let [b, h, s, _] = q.shape.as_slice() else {
            return Err(shapes(format!(
                "expects [batch, heads, seq, width], got {q}"
            )));
        };
        let ph = float_input(port(p, ins, "phase"))?;
        let (k, v) = (port(p, ins, "k"), port(p, ins, "v"));
        let ok_kv = k.shape == q.shape && v.shape == q.shape;
        let ok_ph = matches!(ph.shape.as_slice(), [b2, h2, s2, Dim::Fixed(_)] if b2 == b && h2 == h && s2 == s);
        let ok_amp = !self.complex || port(p, ins, "amp").shape == ph.shape;
        let blend = port(p, ins, "blend").shape == vec![Dim::Fixed(2)];
        if !(ok_kv && ok_ph && ok_amp && blend) {
            return Err(shapes(format!(
                "phase attention inputs do not fit: q {q}, k {k}, v {v}, phase {ph}"
            )));
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: q.shape.clone(),
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        // The full score matrix and the values, as for attention.
        4 * port(self.ports(), ins, "q").numel(batch, seq) * seq
    }

    fn workspace_bytes(&self, ins: &[&TensorType], seq: u64) -> u64 {
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
        self.causal
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let (q, k, v, ph) = (
            *port(p, ins, "q"),
            *port(p, ins, "k"),
            *port(p, ins, "v"),
            *port(p, ins, "phase"),
        );
        let amp = self.complex.then(|| *port(p, ins, "amp"));
        let blend = &port(p, ins, "blend").data;
        let (bh, s, e) = (q.shape[0] * q.shape[1], q.shape[2], q.shape[3]);
        let np = ph.shape[3];
        let mut out = RefTensor::zeros(&q.shape);
        // Row j of sequence r of `t`, `w` wide.
        fn at(t: &RefTensor, r: usize, s: usize, j: usize, w: usize) -> &[f64] {
            &t.data[(r * s + j) * w..(r * s + j + 1) * w]
        }
        for r in 0..bh {
            let row = |t, j, w| at(t, r, s, j, w);
            for i in 0..s {
                let (qi, phi) = (row(q, i, e), row(ph, i, np));
                let keys = if self.causal { i + 1 } else { s };
                let logits: Vec<f64> = (0..keys)
                    .map(|j| {
                        let dot: f64 = qi.iter().zip(row(k, j, e)).map(|(a, b)| a * b).sum();
                        let phj = row(ph, j, np);
                        let coherence = match amp {
                            None => {
                                (0..np).map(|m| (phi[m] - phj[m]).cos()).sum::<f64>() / np as f64
                            }
                            Some(a) => {
                                let (ai, aj) = (row(a, i, np), row(a, j, np));
                                let (mut re, mut im, mut norm) = (0.0, 0.0, 0.0);
                                for m in 0..np {
                                    let w = ai[m] * aj[m];
                                    re += w * (phi[m] - phj[m]).cos();
                                    im += w * (phi[m] - phj[m]).sin();
                                    norm += w;
                                }
                                (re * re + im * im + 1e-12).sqrt() / (norm + 1e-6)
                            }
                        };
                        blend[0] * dot / (e as f64).sqrt() + blend[1] * coherence
                    })
                    .collect();
                for (j, wj) in softmax(&logits).iter().enumerate() {
                    for (f, vf) in row(v, j, e).iter().enumerate() {
                        out.data[(r * s + i) * e + f] += wj * vf;
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        V::F4(self.attend(ins, PhaseKeys::of(self, ins), true, ctx))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let keys = PhaseKeys::of(self, ins).after(take_state::<PhaseKeys>(state), ctx);
        let out = self.attend(ins, keys.clone(), false, ctx);
        *state = Some(Box::new(keys));
        V::F4(out)
    }
}

impl PhaseAttention {
    /// The queries in `ins` over `keys`, which may start `ctx.offset` cached positions
    /// earlier. `own`: the keys are this call's own positions (the queries' phases are the
    /// keys', so their cosines and sines are computed once).
    fn attend(&self, ins: &[&V], keys: PhaseKeys, own: bool, ctx: &Ctx) -> Tensor<4> {
        let p = self.ports();
        let (q, ph) = (port(p, ins, "q").f4(), port(p, ins, "phase").f4());
        let blend = port(p, ins, "blend").f1();
        let [_, _, s, e] = q.dims();
        let np = ph.dims()[3];
        let (cq, sq) = (ph.clone().cos(), ph.sin());
        let (ck, sk) = if own {
            (cq.clone(), sq.clone())
        } else {
            (keys.phase.clone().cos(), keys.phase.sin())
        };
        let tr = |x: Tensor<4>| x.swap_dims(2, 3);
        let weight = |i: usize, scale: f64| {
            blend
                .clone()
                .narrow(0, i, 1)
                .reshape([1, 1, 1, 1])
                .mul_scalar(scale)
        };
        let dot_weight = weight(0, 1.0 / (e as f64).sqrt());
        // Query i (absolute position offset + i) sees keys j ≤ offset + i.
        let vis = fused::Visible {
            queries: s,
            causal: self.causal,
            offset: ctx.offset,
        };
        let logits = if self.complex {
            let aq = port(p, ins, "amp").f4();
            let ak = keys.amp.expect("complex mode has amplitudes");
            let (caq, saq) = (aq.clone() * cq, aq.clone() * sq);
            let (cak, sak) = (ak.clone() * ck, ak.clone() * sk);
            let re = mm(caq.clone(), tr(cak.clone()), ctx) + mm(saq.clone(), tr(sak.clone()), ctx);
            let im = mm(saq, tr(cak), ctx) - mm(caq, tr(sak), ctx);
            let norm = mm(aq, tr(ak), ctx);
            let coherence = (re.powi_scalar(2) + im.powi_scalar(2))
                .add_scalar(1e-12)
                .sqrt()
                / norm.add_scalar(1e-6);
            mm(q * dot_weight, tr(keys.k), ctx) + coherence * weight(1, 1.0)
        } else {
            // blend₀ q·k/√e + blend₁ mean cos(φ − φ'), and mean cos(φ − φ') = (cos φ · cos φ' +
            // sin φ · sin φ') / P: one product of [q w₀, cos φ w₁, sin φ w₁] with [k, cos φ',
            // sin φ'], the weights on the query side (s × (e + 2P) values, not s × s).
            let coh_weight = weight(1, 1.0 / np as f64);
            let qs = Tensor::cat(
                vec![q * dot_weight, cq * coh_weight.clone(), sq * coh_weight],
                3,
            );
            let ks = Tensor::cat(vec![keys.k, ck, sk], 3);
            if !ctx.wants_attention_entropy() && ctx.matmul_dtype.is_none() {
                // softmax(qs ksᵀ) v is attention of qs over ks with values v: the fused
                // kernel (nothing of size s × s kept for the backward pass).
                return fused::attention(qs, ks, keys.v, 1.0, vis, ctx.consts);
            }
            mm(qs, tr(ks), ctx)
        };
        let probs = fused::softmax_rows(logits, vis, ctx.consts);
        record_entropy(&probs, ctx);
        mm(probs, keys.v, ctx)
    }
}

/// The key side of phase-coherent attention, `[b, h, t, ·]` each: keys, values, the keys'
/// phases and (complex mode) amplitudes. Its decoding state: t covers the earlier positions
/// too.
#[derive(Clone)]
pub struct PhaseKeys {
    /// Keys `[b, h, t, e]`.
    pub k: Tensor<4>,
    /// Values `[b, h, t, e]`.
    pub v: Tensor<4>,
    /// The keys' phases `[b, h, t, P]`.
    pub phase: Tensor<4>,
    /// The keys' amplitudes `[b, h, t, P]` (complex mode only).
    pub amp: Option<Tensor<4>>,
}

impl PhaseKeys {
    /// The key side of this call's own positions (the op's inputs).
    fn of(op: &PhaseAttention, ins: &[&V]) -> Self {
        let p = op.ports();
        Self {
            k: port(p, ins, "k").f4(),
            v: port(p, ins, "v").f4(),
            phase: port(p, ins, "phase").f4(),
            amp: op.complex.then(|| port(p, ins, "amp").f4()),
        }
    }

    /// `earlier`'s positions followed by this call's (along the sequence axis): concatenated,
    /// or written in place into buffers of `ctx.kv_capacity` positions (see
    /// [`super::attention::append`]; the positions not written yet come after every query's
    /// causal limit, so they get probability 0).
    fn after(self, earlier: Option<PhaseKeys>, ctx: &Ctx) -> Self {
        let (off, cap) = (ctx.offset, ctx.kv_capacity);
        let add = |a: Option<Tensor<4>>, b: Tensor<4>| append(a, b, off, cap);
        match earlier {
            None => Self {
                k: add(None, self.k),
                v: add(None, self.v),
                phase: add(None, self.phase),
                amp: self.amp.map(|b| add(None, b)),
            },
            Some(e) => Self {
                k: add(Some(e.k), self.k),
                v: add(Some(e.v), self.v),
                phase: add(Some(e.phase), self.phase),
                amp: self.amp.map(|b| add(e.amp, b)),
            },
        }
    }
}

impl OpState for PhaseKeys {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        let sel = |t: &Tensor<4>| t.clone().select(0, rows.clone());
        *self = PhaseKeys {
            k: sel(&self.k),
            v: sel(&self.v),
            phase: sel(&self.phase),
            amp: self.amp.as_ref().map(sel),
        };
    }

    fn device(&self) -> Device {
        self.k.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        Some(self.k.dims())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    /// Inputs for `[b, h, s, e]` with `np` phases: phases in (−π, π), amplitudes positive
    /// (as the layer makes them: π·tanh and softplus).
    fn args(
        op: &PhaseAttention,
        b: usize,
        h: usize,
        s: usize,
        e: usize,
        np: usize,
        rng: &mut Rng,
    ) -> Vec<Arg> {
        let mut a: Vec<Arg> = (0..3).map(|_| Arg::seq(&[b, h, s, e], 2, rng)).collect();
        let mut ph = Arg::seq(&[b, h, s, np], 2, rng);
        for v in &mut ph.t.data {
            *v = std::f64::consts::PI * v.tanh();
        }
        a.push(ph);
        if op.complex {
            let mut amp = Arg::seq(&[b, h, s, np], 2, rng);
            for v in &mut amp.t.data {
                *v = v.exp().ln_1p();
            }
            a.push(amp);
        }
        a.push(Arg::fixed(&[2], rng));
        a
    }

    #[test]
    fn every_check_passes_in_both_modes_causal_or_not() {
        let mut rng = Rng::new(31);
        for causal in [true, false] {
            for complex in [false, true] {
                let op = PhaseAttention { causal, complex };
                for (b, h, s, e, np) in [(1, 1, 1, 1, 1), (2, 3, 6, 4, 2), (3, 2, 7, 5, 3)] {
                    let case = Case {
                        op: &op,
                        args: args(&op, b, h, s, e, np, &mut rng),
                        out_seq: Some(2),
                        tol: 1e-4,
                    };
                    case.infers_the_forward_shape();
                    case.matches_the_reference();
                    // One position attends to itself alone: its softmax weight is 1 whatever
                    // the logits, so only the values get a gradient.
                    if s > 1 {
                        case.gradients_reach_every_input(&[]);
                    } else {
                        case.gradients_reach_every_input(&["q", "k", "phase", "amp", "blend"]);
                    }
                    case.later_positions_change_no_earlier_output();
                    assert_eq!(op.incremental(), causal);
                    if causal {
                        case.decodes_like_the_whole_sequence(s.min(3));
                    }
                }
            }
        }
    }

    #[test]
    fn its_decoding_state_keeps_rows_and_reports_its_keys() {
        let mut rng = Rng::new(32);
        let op = PhaseAttention {
            causal: true,
            complex: true,
        };
        let device = crate::runtime::DeviceKind::Cpu.device(false);
        let a = args(&op, 3, 2, 4, 5, 2, &mut rng);
        let vs: Vec<V> = a
            .iter()
            .map(|a| super::super::testing::value(&a.t, &device))
            .collect();
        let refs: Vec<&V> = vs.iter().collect();
        let mut state = None;
        op.decode(
            &refs,
            &super::super::testing::ctx(&device, 3, 4),
            &mut state,
        );
        let mut st = take_state::<PhaseKeys>(&mut state).expect("a state");
        assert_eq!(st.key_shape(), Some([3, 2, 4, 5]));
        let rows = Tensor::<1, Int>::from_ints([2, 2], &device);
        let k2 = super::super::testing::host(V::F4(st.k.clone().narrow(0, 2, 1)));
        st.select_rows(&rows);
        assert_eq!(st.key_shape(), Some([2, 2, 4, 5]));
        assert_eq!(st.amp.as_ref().map(Tensor::dims), Some([2, 2, 4, 2]));
        let got = super::super::testing::host(V::F4(st.k.narrow(0, 1, 1)));
        assert_eq!(got, k2);
    }

    #[test]
    fn infer_errors_have_their_variants() {
        let t = |shape: &[Dim]| TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let q = t(&[Dim::Batch, Dim::Fixed(2), Dim::Seq, Dim::Fixed(4)]);
        let ph = t(&[Dim::Batch, Dim::Fixed(2), Dim::Seq, Dim::Fixed(3)]);
        let blend = t(&[Dim::Fixed(2)]);
        let op = PhaseAttention {
            causal: true,
            complex: false,
        };
        let ins = vec![q.clone(), q.clone(), q.clone(), ph.clone(), blend.clone()];
        assert_eq!(op.infer(&ins).unwrap(), q);
        assert_eq!(op.matmul_flops(&[&q], 2, 5), 4 * 2 * 2 * 5 * 4 * 5);
        let mut bad = ins.clone();
        bad[0] = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(op.infer(&bad), Err(InferError::TokenIds));
        let mut bad = ins.clone();
        bad[4] = t(&[Dim::Fixed(3)]);
        assert!(matches!(op.infer(&bad), Err(InferError::Shapes(_))));
        let complex = PhaseAttention {
            causal: false,
            complex: true,
        };
        let amp = t(&[Dim::Batch, Dim::Fixed(2), Dim::Seq, Dim::Fixed(2)]);
        let e = complex
            .infer(&[q.clone(), q.clone(), q.clone(), ph, amp, blend])
            .unwrap_err();
        assert!(matches!(e, InferError::Shapes(_)), "{e}");
        assert!(matches!(
            op.infer(&[
                t(&[Dim::Batch, Dim::Seq, Dim::Fixed(4)]),
                q.clone(),
                q.clone(),
                q.clone(),
                t(&[Dim::Fixed(2)])
            ]),
            Err(InferError::Shapes(_))
        ));
    }
}
