//! A naive float64 interpreter of the IR: the numerical reference.
//!
//! Every op is written in the plainest form (loops, direct sums, the DFT by definition), with
//! no shared code with the optimized paths, so optimized and unoptimized graphs, fused ops and
//! the Burn runtime can be checked against it on tiny inputs. That includes the definitions
//! the runtime takes from helpers in [`crate::ir::op`] and [`crate::ops::spectral`] (windows,
//! framing, RoPE and YaRN frequencies, frequency-curriculum weights, the DCT): the reference
//! has its own, in [`definitions`]. Dropout is the identity (evaluation mode).

pub mod definitions;

use super::{AttnScale, Graph, Init, Op};
use crate::ops::spectral::{FreqCutoff, Spectral};
use crate::ops::OpDef;
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
        if let Op::Param { name, shape, init } = &node.op {
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
            Op::Series { .. } => x.clone(),
            Op::Param { name, .. } => params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no value for parameter `{name}`"))?,
            Op::Output => return Ok(ins[0].clone()),
            op => eval(op, &ins)?,
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
            Op::Input => Tensor {
                shape: vec![b, s],
                data: tokens
                    .iter()
                    .flat_map(|r| &r[src..])
                    .map(|&t| t as f64)
                    .collect(),
            },
            Op::Source { .. } => Tensor {
                shape: vec![b, src],
                data: tokens
                    .iter()
                    .flat_map(|r| &r[..src])
                    .map(|&t| t as f64)
                    .collect(),
            },
            Op::Param { name, .. } => params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no value for parameter `{name}`"))?,
            Op::Output => {
                out = Some(ins[0].clone());
                continue;
            }
            Op::Spectral(Spectral::FreqMask(o)) => match mask {
                None => ins[0].clone(),
                Some(m) => o.reference_masked(ins[0], &m),
            },
            op => eval(op, &ins)?,
        };
        values.insert(n, v);
    }
    out.ok_or_else(|| "the graph has no output".into())
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

/// Split a shape `[.., n, d]` at its second-to-last axis: (outer count, n, d).
fn outer_n_d(shape: &[usize]) -> (usize, usize, usize) {
    let r = shape.len();
    (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
}

/// Evaluate one op on its inputs, as [`run`] does inside a graph: every op except the graph's
/// inputs, parameters and output; a `freq_mask` is the identity here (see
/// [`crate::ops::spectral::FreqMask::reference_masked`]).
pub fn eval_op(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::Input | Op::Source { .. } | Op::Series { .. } | Op::Param { .. } | Op::Output => {
            Err(format!("`{}` is not computed from inputs", op.name()))
        }
        op => eval(op, ins),
    }
}

fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    Ok(match op {
        Op::Embedding(o) => o.reference(ins)?,
        Op::Linear(o) => o.reference(ins)?,
        Op::Elementwise(o) => o.reference(ins)?,
        Op::Norm(o) => o.reference(ins)?,
        Op::Spectral(o) => o.reference(ins)?,
        Op::SinusoidalTable { dim } => {
            let s = ins[0].shape[1];
            let d = *dim as usize;
            let mut t = Tensor::zeros(&[s, d]);
            for pos in 0..s {
                for j in 0..d {
                    let i2 = (j - j % 2) as f64;
                    let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
                    t.data[pos * d + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() };
                }
            }
            t
        }
        Op::AddPositions => {
            let (x, t) = (ins[0], ins[1]);
            let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
            if t.shape[0] < s {
                return Err(format!(
                    "position table has {} rows, the input {s} positions",
                    t.shape[0]
                ));
            }
            let mut out = x.clone();
            for bi in 0..b {
                for si in 0..s {
                    for j in 0..d {
                        out.data[(bi * s + si) * d + j] += t.data[si * d + j];
                    }
                }
            }
            out
        }
        Op::Heads(o) => o.reference(ins)?,
        Op::Forecast(o) => o.reference(ins)?,
        Op::Ensemble(o) => o.reference(ins)?,
        Op::Wave(o) => o.reference(ins)?,
        Op::PhaseAttention(o) => o.reference(ins)?,
        Op::BandAttention(o) => o.reference(ins)?,
        Op::RopeTable {
            head_dim,
            base,
            yarn,
        } => {
            let s = ins[0].shape[1];
            let half = *head_dim as usize / 2;
            let (freqs, scale) = definitions::rope_frequencies(*head_dim, base.0, *yarn);
            let mut t = Tensor::zeros(&[s, half, 2]);
            for pos in 0..s {
                for (i, f) in freqs.iter().enumerate() {
                    let theta = pos as f64 * f;
                    t.data[(pos * half + i) * 2] = theta.cos() * scale;
                    t.data[(pos * half + i) * 2 + 1] = theta.sin() * scale;
                }
            }
            t
        }
        Op::ApplyRope => {
            let (x, t) = (ins[0], ins[1]);
            let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            let half = d / 2;
            let mut out = x.clone();
            for bh in 0..b * h {
                for si in 0..s {
                    let base = (bh * s + si) * d;
                    for i in 0..half {
                        let (c, sn) =
                            (t.data[(si * half + i) * 2], t.data[(si * half + i) * 2 + 1]);
                        let (x1, x2) = (x.data[base + i], x.data[base + i + half]);
                        out.data[base + i] = x1 * c - x2 * sn;
                        out.data[base + i + half] = x1 * sn + x2 * c;
                    }
                }
            }
            out
        }
        Op::RepeatKv { groups } => {
            let x = ins[0];
            let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            let g = *groups as usize;
            let mut out = Tensor::zeros(&[b, h * g, s, d]);
            let per = s * d;
            for bi in 0..b {
                for ho in 0..h * g {
                    let src = (bi * h + ho / g) * per;
                    let dst = (bi * h * g + ho) * per;
                    out.data[dst..dst + per].copy_from_slice(&x.data[src..src + per]);
                }
            }
            out
        }
        Op::Attention {
            causal,
            kv_groups,
            scale,
            hard,
            adaptive,
            key_mask,
            ..
        } => {
            let (q, k, v) = (ins[0], ins[1], ins[2]);
            let bias = key_mask.then(|| ins[ins.len() - 1]);
            let (b, hq, s, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            let hk = k.shape[1];
            let g = *kv_groups as usize;
            let factor = match scale {
                AttnScale::InvSqrtDim => 1.0 / (d as f64).sqrt(),
                AttnScale::Learned => ins[3].data[0],
            };
            let mut out = Tensor::zeros(&q.shape);
            for bi in 0..b {
                for h in 0..hq {
                    let kh = h / g;
                    let qb = (bi * hq + h) * s * d;
                    let kb = (bi * hk + kh) * s * d;
                    for i in 0..s {
                        let keys = if *causal { i + 1 } else { s };
                        let logits: Vec<f64> = (0..keys)
                            .map(|j| {
                                (0..d)
                                    .map(|c| q.data[qb + i * d + c] * k.data[kb + j * d + c])
                                    .sum::<f64>()
                                    * factor
                                    + bias.map_or(0.0, |t| t.data[bi * s + j])
                            })
                            .collect();
                        let w = attention_weights(&logits, *hard, *adaptive);
                        for c in 0..d {
                            out.data[qb + i * d + c] =
                                (0..keys).map(|j| w[j] * v.data[kb + j * d + c]).sum();
                        }
                    }
                }
            }
            out
        }
        Op::Mamba(o) => o.reference(ins)?,
        Op::PositionLinear(o) => o.reference(ins)?,
        Op::Xlstm(o) => o.reference(ins)?,
        Op::SliceFeatures { start, len } => {
            let x = ins[0];
            let d = *x.shape.last().unwrap_or(&1);
            let (start, len) = (*start as usize, *len as usize);
            let mut shape = x.shape.clone();
            *shape.last_mut().unwrap_or(&mut 0) = len;
            Tensor {
                shape,
                data: x
                    .data
                    .chunks(d)
                    .flat_map(|r| r[start..start + len].iter().copied())
                    .collect(),
            }
        }
        Op::ConcatFeatures { .. } => {
            let rows = ins[0].data.len() / ins[0].shape.last().copied().unwrap_or(1).max(1);
            let widths: Vec<usize> = ins.iter().map(|t| *t.shape.last().unwrap_or(&0)).collect();
            let mut shape = ins[0].shape.clone();
            *shape.last_mut().unwrap_or(&mut 0) = widths.iter().sum();
            let mut data = Vec::with_capacity(rows * widths.iter().sum::<usize>());
            for r in 0..rows {
                for (t, w) in ins.iter().zip(&widths) {
                    data.extend_from_slice(&t.data[r * w..(r + 1) * w]);
                }
            }
            Tensor { shape, data }
        }
        Op::PadBias { pad } => map(ins[0], |id| if id == *pad as f64 { -1e9 } else { 0.0 }),
        Op::CrossAttention { key_mask } => {
            let (q, k, v) = (ins[0], ins[1], ins[2]);
            let bias = key_mask.then(|| ins[3]);
            let (b, h, s, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            let t = k.shape[2];
            let mut out = Tensor::zeros(&q.shape);
            for bh in 0..b * h {
                for i in 0..s {
                    let qi = &q.data[(bh * s + i) * d..(bh * s + i + 1) * d];
                    let scores: Vec<f64> = (0..t)
                        .map(|j| {
                            let kj = &k.data[(bh * t + j) * d..(bh * t + j + 1) * d];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                                + bias.map_or(0.0, |m| m.data[bh / h * t + j])
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        out.data[(bh * s + i) * d + c] = (0..t)
                            .map(|j| e[j] / z * v.data[(bh * t + j) * d + c])
                            .sum();
                    }
                }
            }
            out
        }
        Op::PrependMemory => {
            let (x, mem) = (ins[0], ins[1]);
            let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let m = mem.shape[0];
            let mut out = Tensor::zeros(&[b, m + s, d]);
            for bi in 0..b {
                let o = bi * (m + s) * d;
                out.data[o..o + m * d].copy_from_slice(&mem.data);
                out.data[o + m * d..o + (m + s) * d]
                    .copy_from_slice(&x.data[bi * s * d..(bi + 1) * s * d]);
            }
            out
        }
        Op::DropMemory { count } => {
            let x = ins[0];
            let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let m = *count as usize;
            let mut out = Tensor::zeros(&[b, s - m, d]);
            for bi in 0..b {
                out.data[bi * (s - m) * d..(bi + 1) * (s - m) * d]
                    .copy_from_slice(&x.data[(bi * s + m) * d..(bi + 1) * s * d]);
            }
            out
        }
        Op::Ets(o) => o.reference(ins)?,
        Op::Lstm(o) => o.reference(ins)?,
        Op::PadSeq { len } => {
            let x = ins[0];
            let (outer, n, d) = outer_n_d(&x.shape);
            let len = *len as usize;
            let mut shape = x.shape.clone();
            let r = shape.len();
            shape[r - 2] = len;
            let mut out = Tensor::zeros(&shape);
            for o in 0..outer {
                out.data[o * len * d..o * len * d + n * d]
                    .copy_from_slice(&x.data[o * n * d..(o + 1) * n * d]);
            }
            out
        }
        Op::CropSeq => {
            let (x, like) = (ins[0], ins[1]);
            let (b, n, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let s = like.shape[1];
            let mut out = Tensor::zeros(&[b, s, d]);
            for bi in 0..b {
                out.data[bi * s * d..(bi + 1) * s * d]
                    .copy_from_slice(&x.data[bi * n * d..bi * n * d + s * d]);
            }
            out
        }
        Op::Input | Op::Source { .. } | Op::Series { .. } | Op::Param { .. } | Op::Output => {
            unreachable!("handled by run")
        }
    })
}

/// Attention weights of one row of logits (inference): softmax; one-hot on the maximum for hard
/// attention (ties share); softmax(β·logits) with the entropy-adaptive β of Veličković et al.
/// (2024) when `adaptive`.
fn attention_weights(logits: &[f64], hard: bool, adaptive: bool) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hard {
        let hits = logits.iter().filter(|&&l| l == m).count() as f64;
        return logits
            .iter()
            .map(|&l| if l == m { 1.0 / hits } else { 0.0 })
            .collect();
    }
    let softmax = |beta: f64| -> Vec<f64> {
        let e: Vec<f64> = logits.iter().map(|l| (beta * (l - m)).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let p = softmax(1.0);
    if !adaptive {
        return p;
    }
    let h: f64 = -p
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|x| x * x.ln())
        .sum::<f64>();
    if h <= 0.5 {
        return p;
    }
    let poly = [-0.037, 0.481, -2.3, 4.917, -1.791]
        .iter()
        .fold(0.0, |acc, c| acc * h + c);
    softmax(poly.max(1.0))
}

