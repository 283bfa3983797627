//! Cross-band attention: at every position, each band of a band pyramid attends over the
//! bands (see the `band_pyramid` layer's `cross_band`).

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::math::softmax;
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;
use burn::prelude::*;
use burn::tensor::activation;

/// `(q0..q{n−1}, k0..k{n−1}, v0..v{n−1}, each [b, s, c]) → [b, s, n·c]`: at every position,
/// band i attends over the n bands, Σ_j softmax_j(q_i·k_j/√c) v_j.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BandAttention {
    /// Bands n.
    pub bands: u64,
}

impl BandAttention {
    /// The inputs of one part (`"q"`, `"k"` or `"v"`), band by band.
    fn part<'a, T>(&self, ins: &'a [T], part: &str) -> Vec<&'a T> {
        (0..self.bands)
            .map(|i| port(self.ports(), ins, &format!("{part}{i}")))
            .collect()
    }
}

impl OpDef for BandAttention {
    fn name(&self) -> &'static str {
        "band_attention"
    }

    fn attrs(&self) -> String {
        format!("bands={}", self.bands)
    }

    fn ports(&self) -> &'static [&'static str] {
        let n = self.bands;
        super::counted_ports("band", n, || {
            ["q", "k", "v"]
                .iter()
                .flat_map(|p| (0..n).map(move |i| format!("{p}{i}")))
                .collect()
        })
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        if self.bands == 0 {
            return Err(InferError::Attribute(
                "band attention needs one band or more".into(),
            ));
        }
        let first = float_input(port(self.ports(), ins, "q0"))?;
        let [b, s, Dim::Fixed(c)] = first.shape.as_slice() else {
            return Err(shapes(format!(
                "expects [batch, seq, width] per band, got {first}"
            )));
        };
        for x in ins {
            if float_input(x)?.shape != first.shape {
                return Err(shapes(format!(
                    "band queries, keys and values differ: {first} and {x}"
                )));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: vec![*b, *s, Dim::Fixed(self.bands * c)],
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        // Every band's query against every band's key, and the values: 4 · out · n with an
        // output of n bands.
        let q = port(self.ports(), ins, "q0").numel(batch, seq);
        4 * self.bands * q * self.bands
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
        let n = self.bands as usize;
        let (q, k, v) = (
            self.part(ins, "q"),
            self.part(ins, "k"),
            self.part(ins, "v"),
        );
        let (b, s, c) = (q[0].shape[0], q[0].shape[1], q[0].shape[2]);
        let mut out = RefTensor::zeros(&[b, s, n * c]);
        for r in 0..b * s {
            let at = |t: &RefTensor| t.data[r * c..(r + 1) * c].to_vec();
            for (i, qt) in q.iter().enumerate() {
                let qi = at(qt);
                let scores: Vec<f64> = k
                    .iter()
                    .map(|kt| {
                        let kj = at(kt);
                        qi.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>() / (c as f64).sqrt()
                    })
                    .collect();
                for (pj, vt) in softmax(&scores).iter().zip(&v) {
                    for (f, vf) in at(vt).iter().enumerate() {
                        out.data[(r * n + i) * c + f] += pj * vf;
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let n = self.bands as usize;
        let stack = |part: &str| {
            Tensor::stack::<4>(
                self.part(ins, part).into_iter().map(|v| v.f3()).collect(),
                2,
            )
        };
        let (q, k, v) = (stack("q"), stack("k"), stack("v"));
        let [b, s, _, c] = q.dims();
        let w = activation::softmax(
            q.matmul(k.swap_dims(2, 3))
                .mul_scalar(1.0 / (c as f64).sqrt()),
            3,
        );
        V::F3(w.matmul(v).reshape([b, s, n * c]))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    #[test]
    fn every_check_passes_on_random_shapes() {
        let mut rng = Rng::new(41);
        for (n, b, s, c) in [(1, 2, 3, 4), (2, 1, 1, 1), (3, 2, 6, 5), (4, 3, 5, 7)] {
            let op = BandAttention { bands: n };
            let case = Case {
                op: &op,
                args: (0..3 * n)
                    .map(|_| Arg::seq(&[b, s, c], 1, &mut rng))
                    .collect(),
                out_seq: Some(1),
                tol: 1e-4,
            };
            assert_eq!(op.ports().len(), 3 * n as usize);
            case.infers_the_forward_shape();
            case.matches_the_reference();
            if n > 1 {
                case.gradients_reach_every_input(&[]);
            } else {
                // One band attends to itself alone: its softmax weight is 1 whatever the
                // scores, so its query and key get no gradient.
                case.gradients_reach_every_input(&["q0", "k0"]);
            }
            case.later_positions_change_no_earlier_output();
            case.decodes_like_the_whole_sequence(s.min(2));
        }
    }

    #[test]
    fn ports_name_the_bands_and_infer_errors_have_their_variants() {
        let op = BandAttention { bands: 2 };
        assert_eq!(op.ports(), &["q0", "q1", "k0", "k1", "v0", "v1"]);
        assert!(std::ptr::eq(op.ports(), BandAttention { bands: 2 }.ports()));
        let t = |shape: &[Dim]| TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let x = t(&[Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        let ins = vec![x.clone(); 6];
        assert_eq!(
            op.infer(&ins).unwrap().shape,
            vec![Dim::Batch, Dim::Seq, Dim::Fixed(6)]
        );
        assert_eq!(op.matmul_flops(&[&x], 2, 5), 4 * (2 * 5 * 6) * 2);
        let mut bad = ins.clone();
        bad[3] = t(&[Dim::Batch, Dim::Seq, Dim::Fixed(4)]);
        assert!(matches!(op.infer(&bad), Err(InferError::Shapes(_))));
        bad[3] = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(op.infer(&bad), Err(InferError::TokenIds));
        let flat = vec![t(&[Dim::Batch, Dim::Fixed(3)]); 6];
        assert!(matches!(op.infer(&flat), Err(InferError::Shapes(_))));
        assert!(matches!(
            BandAttention { bands: 0 }.infer(&[]),
            Err(InferError::Attribute(_))
        ));
    }
}
