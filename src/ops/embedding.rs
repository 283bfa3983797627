//! Token embedding: each id's row of a table.

use super::{port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Mixing, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::V;

/// `(ids [b, s], table [v, d]) → [b, s, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Embedding;

impl OpDef for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn attrs(&self) -> String {
        String::new()
    }

    fn ports(&self) -> &'static [&'static str] {
        &["ids", "table"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let ids = port(p, ins, "ids");
        if ids.dtype != DType::I64 {
            return Err(shapes(
                "an `embedding` reads token ids, but its input is already a sequence of vectors",
            ));
        }
        let d = port(p, ins, "table")
            .shape
            .get(1)
            .copied()
            .ok_or(shapes("embedding table must be 2-D"))?;
        Ok(TensorType {
            dtype: DType::F32,
            shape: vec![ids.shape[0], ids.shape[1], d],
        })
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
        let p = self.ports();
        let (ids, table) = (*port(p, ins, "ids"), *port(p, ins, "table"));
        let (v, d) = (table.shape[0], table.shape[1]);
        let mut out = RefTensor::zeros(&[ids.shape[0], ids.shape[1], d]);
        for (i, &id) in ids.data.iter().enumerate() {
            let id = id as usize;
            if id >= v {
                return Err(format!("token id {id} is outside the vocabulary of {v}"));
            }
            out.data[i * d..(i + 1) * d].copy_from_slice(&table.data[id * d..(id + 1) * d]);
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let p = self.ports();
        let ids = port(p, ins, "ids").ids();
        let table = port(p, ins, "table").f2();
        let [b, s] = ids.dims();
        let d = table.dims()[1];
        V::F3(table.select(0, ids.reshape([b * s])).reshape([b, s, d]))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, random, value};
    use super::*;
    use crate::ir::Dim;
    use crate::runtime::{tokens_tensor, DeviceKind};
    use crate::util::Rng;

    #[test]
    fn every_check_passes() {
        use super::super::testing::{Arg, Case};
        let mut rng = Rng::new(8);
        let case = Case {
            op: &Embedding,
            args: vec![Arg::ids(3, 5, 7, &mut rng), Arg::fixed(&[7, 4], &mut rng)],
            out_seq: Some(1),
            tol: 1e-6,
        };
        case.infers_the_forward_shape();
        case.matches_the_reference();
        case.gradients_reach_every_input(&[]);
        case.later_positions_change_no_earlier_output();
        case.decodes_like_the_whole_sequence(2);
    }

    #[test]
    fn rows_of_the_table_by_id_and_ids_outside_the_vocabulary_refused() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(6);
        let table = random(&[5, 3], &mut rng);
        let rows = vec![vec![0, 4, 2], vec![1, 1, 3]];
        let ids = RefTensor {
            shape: vec![2, 3],
            data: rows.iter().flatten().map(|&i| i as f64).collect(),
        };
        let want = Embedding.reference(&[&ids, &table]).unwrap();
        assert_eq!(&want.data[3..6], &table.data[12..15], "id 4's row");
        let got = host(Embedding.forward(
            &[
                &V::I2(tokens_tensor(&rows, &device)),
                &value(&table, &device),
            ],
            &ctx(&device, 2, 3),
        ));
        let want32: Vec<f32> = want.data.iter().map(|&v| v as f32).collect();
        assert_eq!(got, want32);
        let bad = RefTensor {
            shape: vec![1, 1],
            data: vec![5.0],
        };
        let e = Embedding.reference(&[&bad, &table]).unwrap_err();
        assert!(e.contains("outside the vocabulary of 5"), "{e}");
        // Inference: ids in, vectors out; vectors in is an error.
        let ids_ty = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        let table_ty = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Fixed(5), Dim::Fixed(3)],
        };
        let y = Embedding.infer(&[ids_ty, table_ty.clone()]).unwrap();
        assert_eq!(y.shape, vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        assert!(Embedding.infer(&[y, table_ty]).is_err());
    }
}
