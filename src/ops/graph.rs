//! The graph's own nodes: its inputs (token ids, a forecaster's series, an encoder-decoder's
//! source), its learned parameters and its output. Their values come from outside the graph:
//! the runtime and the reference evaluator supply them (the batch, the parameter values), so
//! their `forward` and `reference` are never asked for a value; the output passes its input
//! on.

use super::{port, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Init, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// Token ids `i64[batch, seq]`: a token model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Input;

/// A forecasting model's input: `lookback` steps of `channels` values, `[b, L, C]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Series {
    /// Steps L.
    pub lookback: u64,
    /// Channels C.
    pub channels: u64,
}

/// An encoder-decoder model's source: the first `len` token ids of each row, `[b, len]` (the
/// decoder's [`Input`] is the rest of the row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// Source length.
    pub len: u64,
}

/// A learned tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// Stable name, e.g. `layers.1.3.attention.q.weight`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its initialisation.
    pub init: Init,
}

/// The model's result: its input, passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Output;

/// The methods every graph node shares: no positions mixed, no products, no position limit,
/// never merged by CSE (each is one of a kind), and a value supplied from outside.
macro_rules! supplied {
    ($what:literal) => {
        fn is_pure(&self) -> bool {
            false
        }

        fn mixing(&self) -> Mixing {
            Mixing::Pointwise
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

        fn reference(&self, _: &[&RefTensor]) -> Result<RefTensor, String> {
            Err(concat!("the evaluator supplies ", $what).into())
        }

        fn forward(&self, _: &[&V], _: &Ctx) -> V {
            panic!(concat!("kiln bug: the runtime supplies ", $what))
        }

        fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
            self.forward(ins, ctx)
        }
    };
}

fn typed(dtype: DType, shape: Vec<Dim>) -> Result<TensorType, InferError> {
    Ok(TensorType { dtype, shape })
}

impl OpDef for Input {
    fn name(&self) -> &'static str {
        "input"
    }

    fn attrs(&self) -> String {
        String::new()
    }

    fn ports(&self) -> &'static [&'static str] {
        &[]
    }

    fn infer(&self, _: &[TensorType]) -> Result<TensorType, InferError> {
        typed(DType::I64, vec![Dim::Batch, Dim::Seq])
    }

    fn incremental(&self) -> bool {
        true
    }

    supplied!("the input tokens");
}

impl OpDef for Series {
    fn name(&self) -> &'static str {
        "series"
    }

    fn attrs(&self) -> String {
        format!("lookback={} channels={}", self.lookback, self.channels)
    }

    fn ports(&self) -> &'static [&'static str] {
        &[]
    }

    fn infer(&self, _: &[TensorType]) -> Result<TensorType, InferError> {
        let (l, c) = (Dim::Fixed(self.lookback), Dim::Fixed(self.channels));
        typed(DType::F32, vec![Dim::Batch, l, c])
    }

    /// A forecaster reads its whole window at once: it does not decode.
    fn incremental(&self) -> bool {
        false
    }

    supplied!("the input series");
}

impl OpDef for Source {
    fn name(&self) -> &'static str {
        "source"
    }

    fn attrs(&self) -> String {
        format!("len={}", self.len)
    }

    fn ports(&self) -> &'static [&'static str] {
        &[]
    }

    fn infer(&self, _: &[TensorType]) -> Result<TensorType, InferError> {
        typed(DType::I64, vec![Dim::Batch, Dim::Fixed(self.len)])
    }

    fn incremental(&self) -> bool {
        true
    }

    supplied!("the source tokens");
}

impl OpDef for Param {
    fn name(&self) -> &'static str {
        "param"
    }

    fn attrs(&self) -> String {
        format!("{} ({})", self.name, self.init)
    }

    fn ports(&self) -> &'static [&'static str] {
        &[]
    }

    fn infer(&self, _: &[TensorType]) -> Result<TensorType, InferError> {
        typed(
            DType::F32,
            self.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        )
    }

    fn incremental(&self) -> bool {
        true
    }

    supplied!("parameter values");
}

impl OpDef for Output {
    fn name(&self) -> &'static str {
        "output"
    }

    fn attrs(&self) -> String {
        String::new()
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        false
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        Ok(port(self.ports(), ins, "x").clone())
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
        Ok((*port(self.ports(), ins, "x")).clone())
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        (*port(self.ports(), ins, "x")).clone()
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::ir::Real;
    use crate::util::Rng;

    #[test]
    fn inputs_and_parameters_have_their_types_and_values_come_from_outside() {
        let p = Param {
            name: "w".into(),
            shape: vec![3, 4],
            init: Init::Normal(Real(0.02)),
        };
        assert_eq!(
            p.infer(&[]).unwrap().shape,
            vec![Dim::Fixed(3), Dim::Fixed(4)]
        );
        assert_eq!(p.attrs(), "w (normal 0.0200)");
        let ids = Input.infer(&[]).unwrap();
        assert_eq!(
            (ids.dtype, ids.shape),
            (DType::I64, vec![Dim::Batch, Dim::Seq])
        );
        let s = Series {
            lookback: 36,
            channels: 2,
        };
        assert_eq!(
            s.infer(&[]).unwrap().shape[1..],
            [Dim::Fixed(36), Dim::Fixed(2)]
        );
        assert!(!s.incremental(), "a forecaster does not decode");
        assert_eq!(
            Source { len: 7 }.infer(&[]).unwrap().shape[1],
            Dim::Fixed(7)
        );
        assert!(Input.reference(&[]).is_err());
        for op in [&Input as &dyn OpDef, &s, &Source { len: 7 }, &p, &Output] {
            assert!(
                !op.is_pure(),
                "{}: CSE must not merge graph nodes",
                op.name()
            );
            assert_eq!(op.mixing(), Mixing::Pointwise);
        }
    }

    #[test]
    fn the_output_passes_its_input_on() {
        let mut rng = Rng::new(1);
        let case = Case {
            op: &Output,
            args: vec![Arg::seq(&[2, 5, 3], 1, &mut rng)],
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
