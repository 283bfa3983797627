//! A naive float64 interpreter of the IR: the numerical reference.
//!
//! It walks the graph and asks each op for its float64 reference
//! ([`crate::ops::OpDef::reference`]), which every family writes in the plainest form (loops,
//! direct sums, the DFT by definition) with no code shared with the optimized paths, so
//! optimized and unoptimized graphs, fused ops and the Burn runtime can be checked against it
//! on tiny inputs. That includes the definitions the runtime takes from helpers in
//! [`crate::ops::positions`] and [`crate::ops::spectral`] (windows, framing, RoPE and YaRN
//! frequencies, frequency-curriculum weights, the DCT): the reference has its own, in
//! [`definitions`]. Dropout is the identity (evaluation mode).

pub mod definitions;
pub mod math;

use super::{Graph, Init, Op, Param};
use crate::ops::spectral::{FreqCutoff, Spectral};
use std::collections::HashMap;

/// A dense row-major float64 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Largest absolute difference to another tensor of the same shape.
    pub fn max_abs_diff(&self, other: &Tensor) -> f64 {
        assert_eq!(self.shape, other.shape, "shapes differ");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }
}

pub use crate::util::Rng;

fn name_seed(name: &str, seed: u64) -> u64 {
    // FNV-1a of the name, mixed with the seed: a parameter's values do not depend on the
    // order in which parameters are created.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Initialise every parameter of the graph as its `Init` says, deterministically from `seed`.
pub fn init_params(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut params = HashMap::new();
    for node in graph.g.node_weights() {
        if let Op::Param(Param { name, shape, init }) = &node.op {
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let mut t = Tensor::zeros(&shape);
            let mut rng = Rng::new(name_seed(name, seed));
            let last = shape.last().copied().unwrap_or(1).max(1);
            for (k, v) in t.data.iter_mut().enumerate() {
                *v = match init {
                    Init::LogRange => (1.0 + (k % last) as f64).ln(),
                    Init::Zeros => 0.0,
                    Init::Ones => 1.0,
                    Init::Const(c) => c.0,
                    Init::Normal(s) => s.0 * rng.normal(),
                    Init::Uniform(b) => b.0 * (2.0 * rng.uniform() - 1.0),
                };
            }
            params.insert(name.clone(), t);
        }
    }
    params
}

/// Run the graph on token ids `[batch][seq]` with the given parameters; returns the output.
pub fn run(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    tokens: &[Vec<i64>],
) -> Result<Tensor, String> {
    run_masked(graph, params, tokens, None)
}

/// Run a forecasting graph on series `x` `[batch, lookback, channels]`; returns the
/// forecasts `[batch, horizon, channels]`.
pub fn run_series(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    x: &Tensor,
) -> Result<Tensor, String> {
    let order = graph.topo().ok_or("the graph has a cycle")?;
    let mut values: HashMap<_, Tensor> = HashMap::new();
    for n in order {
        let ins: Vec<&Tensor> = graph.inputs(n).iter().map(|i| &values[i]).collect();
        let v = match &graph.g[n].op {
            Op::Series(_) => x.clone(),
            Op::Param(Param { name, .. }) => params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no value for parameter `{name}`"))?,
            Op::Output(_) => return Ok(ins[0].clone()),
            op => eval_op(op, &ins)?,
        };
        values.insert(n, v);
    }
    Err("the graph has no output".into())
}

/// [`run`] with the spectral gates under a frequency-curriculum mask.
pub fn run_masked(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    tokens: &[Vec<i64>],
    mask: Option<FreqCutoff>,
) -> Result<Tensor, String> {
    let order = graph.topo().ok_or("the graph has a cycle")?;
    let b = tokens.len();
    let src = graph.source_len().unwrap_or(0);
    let s = tokens
        .first()
        .map_or(0, Vec::len)
        .checked_sub(src)
        .ok_or("rows are shorter than the source")?;
    let mut values: HashMap<_, Tensor> = HashMap::new();
    let mut out = None;
    for n in order {
        let node = &graph.g[n];
        let ins: Vec<&Tensor> = graph.inputs(n).iter().map(|i| &values[i]).collect();
        let v = match &node.op {
            Op::Input(_) => Tensor {
                shape: vec![b, s],
                data: tokens
                    .iter()
                    .flat_map(|r| &r[src..])
                    .map(|&t| t as f64)
                    .collect(),
            },
            Op::Source(_) => Tensor {
                shape: vec![b, src],
                data: tokens
                    .iter()
                    .flat_map(|r| &r[..src])
                    .map(|&t| t as f64)
                    .collect(),
            },
            Op::Param(Param { name, .. }) => params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no value for parameter `{name}`"))?,
            Op::Output(_) => {
                out = Some(ins[0].clone());
                continue;
            }
            Op::Spectral(Spectral::FreqMask(o)) => match mask {
                None => ins[0].clone(),
                Some(m) => o.reference_masked(ins[0], &m),
            },
            op => eval_op(op, &ins)?,
        };
        values.insert(n, v);
    }
    out.ok_or_else(|| "the graph has no output".into())
}

/// Evaluate one op on its inputs, as [`run`] does inside a graph (the graph's inputs and
/// parameters have no value here; a `freq_mask` is the identity, see
/// [`crate::ops::spectral::FreqMask::reference_masked`]).
pub fn eval_op(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    op.def().reference(ins)
}
