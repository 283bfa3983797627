//! The stacked LSTM (PyTorch `nn.LSTM`: gates i, f, g, o, two biases per layer), with dropout
//! between layers in training; it decodes with each layer's (h, c) as its state.

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::math::sigmoid;
use crate::ir::{DType, Dim, Mixing, Real, TensorType};
use crate::runtime::ops::{dropout, linear, mm, Ctx};
use crate::runtime::{fused, V};
use burn::prelude::*;

/// `(x [b, s, i], then per layer l: l{l}.w_ih [i, 4h], l{l}.w_hh [h, 4h], l{l}.b_ih [4h],
/// l{l}.b_hh [4h]) → [b, s, h]` (the input width i of every layer after the first is h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lstm {
    /// Stacked layers.
    pub layers: u64,
    /// Hidden width h.
    pub hidden: u64,
    /// Dropout between layers (training only).
    pub dropout: Real,
}

/// The parameters of one layer, in port order.
const LAYER_PORTS: [&str; 4] = ["w_ih", "w_hh", "b_ih", "b_hh"];

/// The port of parameter `p` of layer `l`, e.g. `l1.w_hh`.
fn layer_port(l: u64, p: &str) -> String {
    format!("l{l}.{p}")
}

/// The ports of an LSTM of `layers` layers: `x`, then each layer's four parameters.
fn ports_of(layers: u64) -> &'static [&'static str] {
    super::counted_ports("lstm", layers, || {
        std::iter::once("x".to_string())
            .chain((0..layers).flat_map(|l| LAYER_PORTS.map(|p| layer_port(l, p))))
            .collect()
    })
}

/// What an LSTM keeps between decoding calls: every layer's (h, c), each `[b, hidden]`.
pub struct LstmState {
    layers: Vec<(Tensor<2>, Tensor<2>)>,
}

impl OpState for LstmState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        for (h, c) in &mut self.layers {
            *h = h.clone().select(0, rows.clone());
            *c = c.clone().select(0, rows.clone());
        }
    }

    fn device(&self) -> Device {
        self.layers[0].0.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

impl Lstm {
    /// The stacked LSTM from `init` (zeros when `None`): the outputs and the final state.
    fn run(&self, ins: &[&V], ctx: &Ctx, init: Option<LstmState>) -> (Tensor<3>, LstmState) {
        let p = self.ports();
        let h = self.hidden as usize;
        let mut x = port(p, ins, "x").f3();
        let mut finals = Vec::with_capacity(self.layers as usize);
        for l in 0..self.layers {
            if l > 0 {
                x = dropout(x, self.dropout.0, ctx);
            }
            let param = |name: &str| *port(p, ins, &layer_port(l, name));
            let (w_ih, w_hh) = (param("w_ih").f2(), param("w_hh").f2());
            let bias = param("b_ih").f1() + param("b_hh").f1();
            let b = x.dims()[0];
            let xw = linear(x, w_ih, Some(bias), ctx);
            let (hs, cs) = match &init {
                Some(st) => st.layers[l as usize].clone(),
                None => (
                    Tensor::<2>::zeros([b, h], ctx.device),
                    Tensor::<2>::zeros([b, h], ctx.device),
                ),
            };
            let (y, hs, cs) = if ctx.matmul_dtype.is_none() {
                fused::lstm(xw, w_hh, hs, cs)
            } else {
                fused::lstm_plain(xw, w_hh, hs, cs, |a, b| mm(a, b, ctx))
            };
            finals.push((hs, cs));
            x = y;
        }
        (x, LstmState { layers: finals })
    }
}

impl OpDef for Lstm {
    fn name(&self) -> &'static str {
        "lstm"
    }

    fn attrs(&self) -> String {
        format!(
            "layers={} hidden={} dropout={}",
            self.layers, self.hidden, self.dropout
        )
    }

    fn ports(&self) -> &'static [&'static str] {
        ports_of(self.layers)
    }

    fn is_pure(&self) -> bool {
        self.dropout.0 <= 0.0
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        if self.layers == 0 || self.hidden == 0 {
            return Err(InferError::Attribute(format!(
                "an LSTM needs at least one layer and a hidden width, got {} layers of {}",
                self.layers, self.hidden
            )));
        }
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let [b, s, i] = x.shape.as_slice() else {
            return Err(shapes(format!("expects [batch, seq, width], got {x}")));
        };
        let (h, g) = (Dim::Fixed(self.hidden), Dim::Fixed(4 * self.hidden));
        let mut width = *i;
        for l in 0..self.layers {
            let want = [vec![width, g], vec![h, g], vec![g], vec![g]];
            for (name, want) in LAYER_PORTS.iter().zip(want) {
                let name = layer_port(l, name);
                let got = port(p, ins, &name);
                if got.shape != want {
                    let want: Vec<String> = want.iter().map(Dim::to_string).collect();
                    return Err(shapes(format!(
                        "lstm parameter {name} has shape {got}, expected [{}]",
                        want.join(", ")
                    )));
                }
            }
            width = h;
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: vec![*b, *s, h],
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        let p = self.ports();
        // Per layer: the input projection and the recurrent product at every position.
        (0..self.layers)
            .map(|l| {
                let w = |name: &str| {
                    let t = port(p, ins, &layer_port(l, name));
                    t.len(0, seq) * t.len(1, seq)
                };
                2 * batch * seq * (w("w_ih") + w("w_hh"))
            })
            .sum()
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
        let p = self.ports();
        let h = self.hidden as usize;
        let mut x = (*port(p, ins, "x")).clone();
        for l in 0..self.layers {
            let param = |name: &str| *port(p, ins, &layer_port(l, name));
            let (w_ih, w_hh, b_ih, b_hh) =
                (param("w_ih"), param("w_hh"), param("b_ih"), param("b_hh"));
            let (b, s, i_dim) = (x.shape[0], x.shape[1], x.shape[2]);
            let mut y = RefTensor::zeros(&[b, s, h]);
            for bi in 0..b {
                let mut hs = vec![0.0; h];
                let mut cs = vec![0.0; h];
                for si in 0..s {
                    let xt = &x.data[(bi * s + si) * i_dim..(bi * s + si + 1) * i_dim];
                    let gate = |col: usize| {
                        let mut acc = b_ih.data[col] + b_hh.data[col];
                        for (i, xv) in xt.iter().enumerate() {
                            acc += xv * w_ih.data[i * 4 * h + col];
                        }
                        for (j, hv) in hs.iter().enumerate() {
                            acc += hv * w_hh.data[j * 4 * h + col];
                        }
                        acc
                    };
                    let pre: Vec<f64> = (0..4 * h).map(gate).collect();
                    for u in 0..h {
                        let ig = sigmoid(pre[u]);
                        let fg = sigmoid(pre[h + u]);
                        let gg = pre[2 * h + u].tanh();
                        let og = sigmoid(pre[3 * h + u]);
                        cs[u] = fg * cs[u] + ig * gg;
                        hs[u] = og * cs[u].tanh();
                    }
                    y.data[(bi * s + si) * h..(bi * s + si + 1) * h].copy_from_slice(&hs);
                }
            }
            x = y;
        }
        Ok(x)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        V::F3(self.run(ins, ctx, None).0)
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let (y, next) = self.run(ins, ctx, take_state::<LstmState>(state));
        *state = Some(Box::new(next));
        V::F3(y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, Arg, Case};
    use super::*;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;

    fn lstm(layers: u64, hidden: u64, dropout: f64) -> Lstm {
        Lstm {
            layers,
            hidden,
            dropout: Real(dropout),
        }
    }

    /// Random inputs of `op` for x `[b, s, i]`.
    fn args(op: &Lstm, b: usize, s: usize, i: usize, rng: &mut Rng) -> Vec<Arg> {
        let h = op.hidden as usize;
        let mut args = vec![Arg::seq(&[b, s, i], 1, rng)];
        let mut width = i;
        for _ in 0..op.layers {
            args.push(Arg::fixed(&[width, 4 * h], rng));
            args.push(Arg::fixed(&[h, 4 * h], rng));
            args.push(Arg::fixed(&[4 * h], rng));
            args.push(Arg::fixed(&[4 * h], rng));
            width = h;
        }
        args
    }

    fn ty(shape: &[u64]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        }
    }

    #[test]
    fn every_check_passes_with_one_and_several_layers() {
        let mut rng = Rng::new(21);
        for (op, (b, s, i)) in [
            (lstm(1, 3, 0.0), (2, 5, 4)),
            (lstm(2, 5, 0.3), (3, 7, 3)),
            (lstm(3, 2, 0.0), (1, 4, 1)),
        ] {
            let case = Case {
                op: &op,
                args: args(&op, b, s, i, &mut rng),
                out_seq: Some(1),
                tol: 1e-4,
            };
            case.decodes_like_the_whole_sequence(3);
            case.passes_the_checks_of_a_decoding_op(2, &case.reversed_rows());
        }
    }

    #[test]
    fn names_ports_and_attributes_as_printed() {
        let op = lstm(2, 8, 0.1);
        assert_eq!(op.attrs(), "layers=2 hidden=8 dropout=0.1");
        assert_eq!(
            op.ports(),
            [
                "x", "l0.w_ih", "l0.w_hh", "l0.b_ih", "l0.b_hh", "l1.w_ih", "l1.w_hh", "l1.b_ih",
                "l1.b_hh"
            ]
        );
        // The same slice for the same layer count.
        assert!(std::ptr::eq(op.ports(), lstm(2, 3, 0.0).ports()));
        assert!(!op.is_pure() && lstm(2, 8, 0.0).is_pure());
        let (x, w_ih, w_hh, b) = (ty(&[2, 6, 4]), ty(&[4, 32]), ty(&[8, 32]), ty(&[32]));
        let (w_ih1, w_hh1) = (ty(&[8, 32]), ty(&[8, 32]));
        let ins = [&x, &w_ih, &w_hh, &b, &b, &w_ih1, &w_hh1, &b, &b];
        assert_eq!(
            op.matmul_flops(&ins, 2, 6),
            2 * 2 * 6 * (4 * 32 + 8 * 32) + 2 * 2 * 6 * (8 * 32 + 8 * 32)
        );
    }

    #[test]
    fn infer_errors_name_what_does_not_fit() {
        let op = lstm(2, 3, 0.0);
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(4)],
        };
        let good = vec![
            x.clone(),
            ty(&[4, 12]),
            ty(&[3, 12]),
            ty(&[12]),
            ty(&[12]),
            ty(&[3, 12]),
            ty(&[3, 12]),
            ty(&[12]),
            ty(&[12]),
        ];
        assert_eq!(
            op.infer(&good).unwrap().shape,
            vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)]
        );
        let mut ids = good.clone();
        ids[0] = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(op.infer(&ids).unwrap_err(), InferError::TokenIds);
        let mut flat = good.clone();
        flat[0] = ty(&[2, 4]);
        assert!(matches!(op.infer(&flat), Err(InferError::Shapes(_))));
        // The second layer reads the hidden width, not the input's.
        let mut wide = good.clone();
        wide[5] = ty(&[4, 12]);
        assert_eq!(
            op.infer(&wide).unwrap_err(),
            InferError::Shapes(
                "lstm parameter l1.w_ih has shape f32[4, 12], expected [3, 12]".into()
            )
        );
        let mut bias = good.clone();
        bias[4] = ty(&[3]);
        assert!(matches!(op.infer(&bias), Err(InferError::Shapes(m)) if m.contains("l0.b_hh")));
        for bad in [lstm(0, 3, 0.0), lstm(1, 0, 0.0)] {
            let ins: Vec<TensorType> = good[..bad.ports().len()].to_vec();
            assert!(
                matches!(bad.infer(&ins), Err(InferError::Attribute(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dropout_acts_between_layers_in_training_only() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(4);
        let run = |op: &Lstm, args: &[Arg], train: bool| {
            let vs: Vec<V> = args
                .iter()
                .map(|a| super::super::testing::value(&a.t, &device))
                .collect();
            let refs: Vec<&V> = vs.iter().collect();
            let c = Ctx {
                train,
                ..ctx(&device, 2, 6)
            };
            host(op.forward(&refs, &c))
        };
        // One layer: nothing between layers, so training changes nothing.
        let one = lstm(1, 4, 0.5);
        let a = args(&one, 2, 6, 3, &mut rng);
        assert_eq!(run(&one, &a, true), run(&one, &a, false));
        // Two layers: the second reads a dropped-out first layer.
        let two = lstm(2, 4, 0.5);
        let a = args(&two, 2, 6, 3, &mut rng);
        assert_ne!(run(&two, &a, true), run(&two, &a, false));
        let none = lstm(2, 4, 0.0);
        assert_eq!(run(&none, &a, true), run(&none, &a, false));
    }

    #[test]
    fn the_mixed_precision_path_matches_the_fused_recurrence() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(9);
        let op = lstm(2, 5, 0.0);
        let a = args(&op, 3, 6, 4, &mut rng);
        let vs: Vec<V> = a
            .iter()
            .map(|a| super::super::testing::value(&a.t, &device))
            .collect();
        let refs: Vec<&V> = vs.iter().collect();
        let fused = host(op.forward(&refs, &ctx(&device, 3, 6)));
        let plain = host(op.forward(
            &refs,
            &Ctx {
                matmul_dtype: Some(burn::tensor::FloatDType::F32),
                ..ctx(&device, 3, 6)
            },
        ));
        for (f, p) in fused.iter().zip(&plain) {
            assert!((f - p).abs() < 1e-5, "{f} vs {p}");
        }
    }
}
