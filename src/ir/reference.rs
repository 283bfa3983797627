//! A naive float64 interpreter of the IR: the numerical reference.
//!
//! Every op is written in the plainest form (loops, direct sums, the DFT by definition), with
//! no shared code with the optimized paths, so optimized and unoptimized graphs, fused ops and
//! the Burn runtime can be checked against it on tiny inputs. That includes the definitions
//! the runtime takes from helpers in [`crate::ir::op`] (windows, framing, frequency-curriculum
//! weights, the DCT) and [`crate::ops::positions`] (RoPE and YaRN frequencies): the reference
//! has its own, in [`definitions`]. Dropout is the identity (evaluation mode).

pub mod definitions;

use super::{AttnScale, FreqCutoff, Graph, Init, Op};
use crate::ops::OpDef;
use std::collections::HashMap;
use std::f64::consts::PI;

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
            Op::FreqMask { .. } => ins[0].clone(),
            op => eval(op, &ins)?,
        };
        values.insert(n, v);
    }
    Err("the graph has no output".into())
}

/// Mean and √(var + 1e-5) of channel `c` of example `b` over the steps of `x` `[B, L, C]`.
fn revin_stats(x: &Tensor, b: usize, c: usize) -> (f64, f64) {
    let (l, cs) = (x.shape[1], x.shape[2]);
    let vals: Vec<f64> = (0..l).map(|t| x.data[(b * l + t) * cs + c]).collect();
    let m = vals.iter().sum::<f64>() / l as f64;
    let v = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / l as f64;
    (m, (v + 1e-5).sqrt())
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
            Op::FreqMask { dct } => match mask {
                None => ins[0].clone(),
                Some(m) => freq_mask(ins[0], &m, *dct),
            },
            op => eval(op, &ins)?,
        };
        values.insert(n, v);
    }
    out.ok_or_else(|| "the graph has no output".into())
}

/// The frequency-curriculum mask of a spectral gate's parameter `p` by its definition: a gate's
/// bins (`[f, d, 2]`, `dct: false`) scaled one by one; a kernel's taps (`[l, d]`, `dct: true`)
/// taken to the orthonormal DCT-II basis, its coefficients scaled, and transformed back.
pub fn freq_mask(p: &Tensor, m: &FreqCutoff, dct: bool) -> Tensor {
    let mut out = p.clone();
    let bins = p.shape[0];
    let w = definitions::curriculum_weights(m, bins);
    let inner = p.data.len() / bins.max(1);
    if !dct {
        for (k, wk) in w.iter().enumerate() {
            for v in &mut out.data[k * inner..(k + 1) * inner] {
                *v *= wk;
            }
        }
        return out;
    }
    let basis = |k: usize, t: usize| definitions::dct(bins, k, t);
    for c in 0..inner {
        let coef: Vec<f64> = (0..bins)
            .map(|k| {
                (0..bins)
                    .map(|t| basis(k, t) * p.data[t * inner + c])
                    .sum::<f64>()
                    * w[k]
            })
            .collect();
        for t in 0..bins {
            out.data[t * inner + c] = (0..bins).map(|k| basis(k, t) * coef[k]).sum();
        }
    }
    out
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Split a shape `[.., n, d]` at its second-to-last axis: (outer count, n, d).
fn outer_n_d(shape: &[usize]) -> (usize, usize, usize) {
    let r = shape.len();
    (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
}

/// Evaluate one op on its inputs, as [`run`] does inside a graph: every op except the graph's
/// inputs, parameters and output; a `freq_mask` is the identity here (see [`freq_mask`]).
pub fn eval_op(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::FreqMask { .. } => Ok(ins[0].clone()),
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
        Op::Heads(o) => o.reference(ins)?,
        Op::Positions(o) => o.reference(ins)?,
        Op::Sequence(o) => o.reference(ins)?,
        Op::Memory(o) => o.reference(ins)?,
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
        Op::Mamba {
            d_state,
            d_conv,
            dt_rank,
        } => mamba(ins, *d_state as usize, *d_conv as usize, *dt_rank as usize),
        Op::MeanForecasts { members } => {
            let mut out = Tensor::zeros(&ins[0].shape);
            for t in ins {
                for (o, v) in out.data.iter_mut().zip(&t.data) {
                    *o += v / *members as f64;
                }
            }
            out
        }
        Op::MeanProbs { members } => {
            let v = *ins[0].shape.last().expect("logits have a vocabulary axis");
            let mut out = Tensor::zeros(&ins[0].shape);
            for row in 0..out.data.len() / v {
                for k in 0..v {
                    let p: f64 = ins
                        .iter()
                        .map(|t| {
                            let r = &t.data[row * v..(row + 1) * v];
                            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let z: f64 = r.iter().map(|x| (x - m).exp()).sum();
                            (r[k] - m).exp() / z
                        })
                        .sum::<f64>()
                        / *members as f64;
                    out.data[row * v + k] = p.ln();
                }
            }
            out
        }
        Op::PositionLinear { max_len, bias } => {
            let (x, w) = (ins[0], ins[1]);
            let (b, s, i) = (x.shape[0], x.shape[1], x.shape[2]);
            let (l, o) = (*max_len as usize, w.shape[3]);
            let mut out = Tensor::zeros(&[b, s, o]);
            for bi in 0..b {
                for t in 0..s {
                    for oi in 0..o {
                        let mut acc = if *bias { ins[2].data[t * o + oi] } else { 0.0 };
                        for sp in 0..=t {
                            for ii in 0..i {
                                acc += x.data[(bi * s + sp) * i + ii]
                                    * w.data[((sp * i + ii) * l + t) * o + oi];
                            }
                        }
                        out.data[(bi * s + t) * o + oi] = acc;
                    }
                }
            }
            out
        }
        Op::Mlstm { heads } => mlstm(ins, *heads as usize),
        Op::RevinNorm | Op::RevinDenorm => {
            let denorm = ins.len() == 4;
            let (y, x) = (ins[0], ins[if denorm { 1 } else { 0 }]);
            let (g, be) = (ins[ins.len() - 2], ins[ins.len() - 1]);
            let (b, s, c) = (y.shape[0], y.shape[1], y.shape[2]);
            let mut out = y.clone();
            for bi in 0..b {
                for ci in 0..c {
                    let (m, sd) = revin_stats(x, bi, ci);
                    for t in 0..s {
                        let v = &mut out.data[(bi * s + t) * c + ci];
                        *v = if denorm {
                            (*v - be.data[ci]) / g.data[ci] * sd + m
                        } else {
                            (*v - m) / sd * g.data[ci] + be.data[ci]
                        };
                    }
                }
            }
            out
        }
        Op::Patch { len, stride } => {
            let x = ins[0];
            let (b, l, c) = (x.shape[0], x.shape[1], x.shape[2]);
            let (p, s) = (*len as usize, *stride as usize);
            let n = (l - p) / s + 2;
            let mut out = Tensor::zeros(&[b * c, n, p]);
            for bi in 0..b {
                for ci in 0..c {
                    for ni in 0..n {
                        for pi in 0..p {
                            // Past the end: the last value, repeated.
                            let t = (ni * s + pi).min(l - 1);
                            out.data[((bi * c + ci) * n + ni) * p + pi] =
                                x.data[(bi * l + t) * c + ci];
                        }
                    }
                }
            }
            out
        }
        Op::WindowedGate { window, hop } => windowed_gate(ins, *window as usize, *hop as usize)?,
        Op::Wave { .. } => {
            let mut out = ins[0].clone();
            for (i, v) in out.data.iter_mut().enumerate() {
                *v = match i % 3 {
                    0 | 1 => softplus(*v),
                    _ => PI * v.tanh(),
                };
            }
            out
        }
        Op::HarmonicSelect { k, .. } => {
            // Inference: the k best scores of each position, ties to the lower harmonic.
            let (x, sc) = (ins[0], ins[1]);
            let (d, h) = (x.shape[2], sc.shape[2]);
            let g = d / h;
            let mut out = x.clone();
            for (r, row) in sc.data.chunks(h).enumerate() {
                let mut idx: Vec<usize> = (0..h).collect();
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                for &hh in &idx[*k as usize..] {
                    for j in 0..g {
                        out.data[r * d + hh * g + j] = 0.0;
                    }
                }
            }
            out
        }
        Op::PhaseAttention { causal, complex } => phase_attention(ins, *causal, *complex),
        Op::BandAttention { bands } => {
            let n = *bands as usize;
            let (b, s, c) = (ins[0].shape[0], ins[0].shape[1], ins[0].shape[2]);
            let mut out = Tensor::zeros(&[b, s, n * c]);
            for r in 0..b * s {
                let at = |t: &Tensor| t.data[r * c..(r + 1) * c].to_vec();
                for i in 0..n {
                    let q = at(ins[i]);
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let k = at(ins[n + j]);
                            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (c as f64).sqrt()
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..n {
                        let v = at(ins[2 * n + j]);
                        for (f, vf) in v.iter().enumerate() {
                            out.data[(r * n + i) * c + f] += e[j] / z * vf;
                        }
                    }
                }
            }
            out
        }
        Op::ComplexFeatures => {
            let x = ins[0];
            let (b, f, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let mut out = Tensor::zeros(&[b, f, 2 * d]);
            for r in 0..b * f {
                for c in 0..d {
                    out.data[r * 2 * d + c] = x.data[(r * d + c) * 2];
                    out.data[r * 2 * d + d + c] = x.data[(r * d + c) * 2 + 1];
                }
            }
            out
        }
        Op::ForecastHead { channels } => {
            let (x, w, bias) = (ins[0], ins[1], ins[2]);
            let (bc, n, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let h = w.shape[1];
            let c = *channels as usize;
            let mut out = Tensor::zeros(&[bc / c, h, c]);
            for r in 0..bc {
                let flat = &x.data[r * n * d..(r + 1) * n * d];
                for hi in 0..h {
                    let v = bias.data[hi]
                        + flat
                            .iter()
                            .enumerate()
                            .map(|(i, a)| a * w.data[i * h + hi])
                            .sum::<f64>();
                    out.data[((r / c) * h + hi) * c + r % c] = v;
                }
            }
            out
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
        Op::Ets { heads } => ets(ins, *heads as usize),
        Op::Slstm { heads } => slstm(ins, *heads as usize),
        Op::Lstm { layers, hidden, .. } => {
            let h = *hidden as usize;
            let mut x = ins[0].clone();
            for l in 0..*layers as usize {
                let (w_ih, w_hh, b_ih, b_hh) = (
                    ins[1 + 4 * l],
                    ins[2 + 4 * l],
                    ins[3 + 4 * l],
                    ins[4 + 4 * l],
                );
                let (b, s, i_dim) = (x.shape[0], x.shape[1], x.shape[2]);
                let mut y = Tensor::zeros(&[b, s, h]);
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
            x
        }
        Op::Rfft { n } => {
            let x = ins[0];
            let (outer, len, d) = outer_n_d(&x.shape);
            let n = *n as usize;
            let f = n / 2 + 1;
            let mut shape = x.shape.clone();
            let r = shape.len();
            shape[r - 2] = f;
            shape.push(2);
            let mut out = Tensor::zeros(&shape);
            for o in 0..outer {
                for k in 0..f {
                    for c in 0..d {
                        let (mut re, mut im) = (0.0, 0.0);
                        for t in 0..len {
                            let a = -2.0 * PI * (k * t) as f64 / n as f64;
                            let v = x.data[(o * len + t) * d + c];
                            re += v * a.cos();
                            im += v * a.sin();
                        }
                        let idx = ((o * f + k) * d + c) * 2;
                        out.data[idx] = re;
                        out.data[idx + 1] = im;
                    }
                }
            }
            out
        }
        Op::Irfft { n } => irfft(ins[0], *n as usize),
        Op::ComplexMul => {
            let (x, g) = (ins[0], ins[1]);
            let gl = g.data.len();
            let mut out = x.clone();
            for (i, pair) in out.data.chunks_mut(2).enumerate() {
                let gi = (i * 2) % gl;
                let (a, b) = (pair[0], pair[1]);
                let (c, d) = (g.data[gi], g.data[gi + 1]);
                pair[0] = a * c - b * d;
                pair[1] = a * d + b * c;
            }
            out
        }
        Op::SpectralFilter { n, causal, .. } => {
            let (x, p) = (ins[0], ins[1]);
            let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
            let n = *n as usize;
            // The kernel in the time domain: the causal form stores it; the circular form's
            // kernel is the inverse transform of its gate.
            let kernel = if *causal { p.clone() } else { irfft(p, n) };
            let taps = kernel.shape[0];
            let mut out = Tensor::zeros(&[b, s, d]);
            for bi in 0..b {
                for t in 0..s {
                    for c in 0..d {
                        let mut acc = 0.0;
                        for j in 0..taps {
                            let src = if *causal {
                                if j > t {
                                    break;
                                }
                                t - j
                            } else {
                                (t + n - j % n) % n
                            };
                            if src < s {
                                acc += kernel.data[j * d + c] * x.data[(bi * s + src) * d + c];
                            }
                        }
                        out.data[(bi * s + t) * d + c] = acc;
                    }
                }
            }
            out
        }
        Op::Input
        | Op::Source { .. }
        | Op::Series { .. }
        | Op::Param { .. }
        | Op::FreqMask { .. }
        | Op::Output => {
            unreachable!("handled by run")
        }
    })
}

/// Inverse real DFT along the second-to-last axis of a `[.., f, d, 2]` spectrum, with 1/n.
fn irfft(x: &Tensor, n: usize) -> Tensor {
    let r = x.shape.len();
    let (outer, f, d) = (
        x.shape[..r - 3].iter().product::<usize>(),
        x.shape[r - 3],
        x.shape[r - 2],
    );
    let mut shape = x.shape[..r - 1].to_vec();
    shape[r - 3] = n;
    let mut out = Tensor::zeros(&shape);
    for o in 0..outer {
        for t in 0..n {
            for c in 0..d {
                let mut acc = 0.0;
                for k in 0..f {
                    let idx = ((o * f + k) * d + c) * 2;
                    let (re, im) = (x.data[idx], x.data[idx + 1]);
                    let a = 2.0 * PI * (k * t) as f64 / n as f64;
                    let term = re * a.cos() - im * a.sin();
                    // Bins other than DC and (for even n) Nyquist stand for their conjugates too.
                    let weight = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                        1.0
                    } else {
                        2.0
                    };
                    acc += weight * term;
                }
                out.data[(o * n + t) * d + c] = acc / n as f64;
            }
        }
    }
    out
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

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The Mamba block, step by step (Gu & Dao 2023; mamba.py): in_proj → (x, z); x ← SiLU(causal
/// depthwise conv(x)); (δ, B, C) = x_proj(x); Δ = softplus(dt_proj(δ)); A = −exp(A_log);
/// h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t; y_t = C_t · h_t + D ⊙ x_t; out_proj(y ⊙ SiLU(z)).
fn mamba(ins: &[&Tensor], n: usize, k: usize, r: usize) -> Tensor {
    let x = ins[0];
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let (w_in, conv_w, conv_b, w_x, dt_w, dt_b, a_log, d_skip, w_out) = (
        ins[1], ins[2], ins[3], ins[4], ins[5], ins[6], ins[7], ins[8], ins[9],
    );
    let e = w_in.shape[1] / 2;
    let p = r + 2 * n;
    let mut out = Tensor::zeros(&[b, s, d]);
    for bi in 0..b {
        // in_proj
        let mut xs = vec![vec![0.0; e]; s];
        let mut zs = vec![vec![0.0; e]; s];
        for t in 0..s {
            for o in 0..2 * e {
                let v: f64 = (0..d)
                    .map(|i| x.data[(bi * s + t) * d + i] * w_in.data[i * 2 * e + o])
                    .sum();
                if o < e {
                    xs[t][o] = v;
                } else {
                    zs[t][o - e] = v;
                }
            }
        }
        let mut h = vec![vec![0.0; n]; e];
        for (t, z) in zs.iter().enumerate() {
            // causal depthwise convolution: tap j reads position t + j − (k − 1)
            let u: Vec<f64> = (0..e)
                .map(|c| {
                    let mut acc = conv_b.data[c];
                    for j in 0..k {
                        if let Some(tt) = (t + j).checked_sub(k - 1) {
                            acc += conv_w.data[c * k + j] * xs[tt][c];
                        }
                    }
                    silu(acc)
                })
                .collect();
            let proj: Vec<f64> = (0..p)
                .map(|o| (0..e).map(|c| u[c] * w_x.data[c * p + o]).sum())
                .collect();
            let (delta_in, bb, cc) = (&proj[..r], &proj[r..r + n], &proj[r + n..]);
            for c in 0..e {
                let dt = softplus(
                    dt_b.data[c]
                        + (0..r)
                            .map(|j| delta_in[j] * dt_w.data[j * e + c])
                            .sum::<f64>(),
                );
                let mut y = d_skip.data[c] * u[c];
                for st in 0..n {
                    let a = -a_log.data[c * n + st].exp();
                    h[c][st] = (dt * a).exp() * h[c][st] + dt * bb[st] * u[c];
                    y += cc[st] * h[c][st];
                }
                let g = y * silu(z[c]);
                for o in 0..d {
                    out.data[(bi * s + t) * d + o] += g * w_out.data[c * d + o];
                }
            }
        }
    }
    out
}

/// `x · W (+ b)` for one position: `x` of length i, `w` row-major `[i, o]`.
fn affine(x: &[f64], w: &Tensor, b: Option<&Tensor>) -> Vec<f64> {
    let o = w.shape[1];
    (0..o)
        .map(|j| {
            b.map_or(0.0, |b| b.data[j])
                + x.iter()
                    .enumerate()
                    .map(|(i, v)| v * w.data[i * o + j])
                    .sum::<f64>()
        })
        .collect()
}

/// The mLSTM layer by its recurrence, unstabilized (Beck et al. 2024, eqs. 19–27):
/// C_t = f_t C_{t−1} + e^{ĩ_t} v_t k_tᵀ, n_t = f_t n_{t−1} + e^{ĩ_t} k_t,
/// h_t = σ(o_t) ⊙ C_t q_t / max(|n_tᵀ q_t|, 1), k scaled by 1/√d; then the output map.
fn mlstm(ins: &[&Tensor], heads: usize) -> Tensor {
    let x = ins[0];
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = d / heads;
    let mut out = Tensor::zeros(&[b, s, d]);
    for bi in 0..b {
        let mut c = vec![vec![0.0; dh * dh]; heads];
        let mut n = vec![vec![0.0; dh]; heads];
        for t in 0..s {
            let xt = &x.data[(bi * s + t) * d..(bi * s + t + 1) * d];
            let qkvo = affine(xt, ins[1], Some(ins[2]));
            let ig = affine(xt, ins[3], Some(ins[4]));
            let fg = affine(xt, ins[5], Some(ins[6]));
            let mut hcat = vec![0.0; d];
            for h in 0..heads {
                let q = &qkvo[h * dh..(h + 1) * dh];
                let k: Vec<f64> = qkvo[d + h * dh..d + (h + 1) * dh]
                    .iter()
                    .map(|v| v / (dh as f64).sqrt())
                    .collect();
                let v = &qkvo[2 * d + h * dh..2 * d + (h + 1) * dh];
                let (f, i) = (sigmoid(fg[h]), ig[h].exp());
                for a in 0..dh {
                    for bb in 0..dh {
                        c[h][a * dh + bb] = f * c[h][a * dh + bb] + i * v[a] * k[bb];
                    }
                    n[h][a] = f * n[h][a] + i * k[a];
                }
                let den = (0..dh).map(|a| n[h][a] * q[a]).sum::<f64>().abs().max(1.0);
                for a in 0..dh {
                    let num: f64 = (0..dh).map(|bb| c[h][a * dh + bb] * q[bb]).sum();
                    hcat[h * dh + a] = sigmoid(qkvo[3 * d + h * dh + a]) * num / den;
                }
            }
            let y = affine(&hcat, ins[7], None);
            out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&y);
        }
    }
    out
}

/// The sLSTM layer by its recurrence, unstabilized (Beck et al. 2024, eqs. 8–14) with a sigmoid
/// forget gate: c_t = f_t c_{t−1} + e^{ĩ_t} tanh(z̃_t), n_t = f_t n_{t−1} + e^{ĩ_t},
/// h_t = σ(õ_t) ⊙ c_t / n_t; pre-activations W x_t + R h_{t−1} + b, R block-diagonal per head.
fn slstm(ins: &[&Tensor], heads: usize) -> Tensor {
    let (x, w, r, bias) = (ins[0], ins[1], ins[2], ins[3]);
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = d / heads;
    let mut out = Tensor::zeros(&[b, s, d]);
    for bi in 0..b {
        let (mut c, mut n, mut h) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        for t in 0..s {
            let xt = &x.data[(bi * s + t) * d..(bi * s + t + 1) * d];
            let mut pre = affine(xt, w, Some(bias));
            // Head hd's recurrent matrix [dh, 4·dh] maps its slice of h to its slices of the
            // four gates (gate g of head hd at columns g·d + hd·dh ..).
            for hd in 0..heads {
                for g in 0..4 {
                    for j in 0..dh {
                        let acc: f64 = (0..dh)
                            .map(|a| h[hd * dh + a] * r.data[(hd * dh + a) * 4 * dh + g * dh + j])
                            .sum();
                        pre[g * d + hd * dh + j] += acc;
                    }
                }
            }
            for u in 0..d {
                let (z, i, f, o) = (
                    pre[u].tanh(),
                    pre[d + u].exp(),
                    sigmoid(pre[2 * d + u]),
                    sigmoid(pre[3 * d + u]),
                );
                c[u] = f * c[u] + i * z;
                n[u] = f * n[u] + i;
                h[u] = o * c[u] / n[u];
            }
            out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&h);
        }
    }
    out
}

/// Exponential smoothing attention by its recurrence: ES_t = (1 − α) ES_{t−1} + α v_t from
/// ES_0 = v₀, α = σ(a) per head, v = x W_v + b; then the output map.
fn ets(ins: &[&Tensor], heads: usize) -> Tensor {
    let x = ins[0];
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = d / heads;
    let mut out = Tensor::zeros(&[b, s, d]);
    for bi in 0..b {
        let mut es = ins[4].data.clone();
        for t in 0..s {
            let v = affine(
                &x.data[(bi * s + t) * d..(bi * s + t + 1) * d],
                ins[1],
                Some(ins[2]),
            );
            for c in 0..d {
                let alpha = sigmoid(ins[3].data[c / dh]);
                es[c] = (1.0 - alpha) * es[c] + alpha * v[c];
            }
            let y = affine(&es, ins[5], None);
            out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&y);
        }
    }
    out
}

/// The windowed spectral gate by its definition: frame, window, rfft, gate, irfft, window,
/// overlap-add, divide by the summed squared window.
fn windowed_gate(ins: &[&Tensor], window: usize, hop: usize) -> Result<Tensor, String> {
    let (x, mix, gate) = (ins[0], ins[1], ins[2]);
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let g = definitions::learned_window(window, &mix.data);
    let (pad, count) = definitions::frame_layout(window, hop, s);
    // Position t of the sequence is step n of frame c when c·hop + n = pad + t.
    let at = |c: usize, n: usize| (c * hop + n).checked_sub(pad).filter(|&t| t < s);
    let mut fr = Tensor::zeros(&[b * count, window, d]);
    for bi in 0..b {
        for c in 0..count {
            for (n, gn) in g.iter().enumerate() {
                if let Some(t) = at(c, n) {
                    for ch in 0..d {
                        fr.data[((bi * count + c) * window + n) * d + ch] =
                            x.data[(bi * s + t) * d + ch] * gn;
                    }
                }
            }
        }
    }
    let spec = eval(&Op::Rfft { n: window as u64 }, &[&fr])?;
    let spec = eval(&Op::ComplexMul, &[&spec, gate])?;
    let y = irfft(&spec, window);
    let mut den = vec![0.0; s];
    for c in 0..count {
        for (n, gn) in g.iter().enumerate() {
            if let Some(t) = at(c, n) {
                den[t] += gn * gn;
            }
        }
    }
    let mut out = Tensor::zeros(&[b, s, d]);
    for bi in 0..b {
        for c in 0..count {
            for (n, gn) in g.iter().enumerate() {
                if let Some(t) = at(c, n) {
                    for ch in 0..d {
                        out.data[(bi * s + t) * d + ch] +=
                            y.data[((bi * count + c) * window + n) * d + ch] * gn
                                / den[t].max(1e-12);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Phase-coherent attention by its definition (see the `phase_attention` layer).
fn phase_attention(ins: &[&Tensor], causal: bool, complex: bool) -> Tensor {
    let (q, k, v, ph) = (ins[0], ins[1], ins[2], ins[3]);
    let amp = complex.then(|| ins[4]);
    let blend = &ins[ins.len() - 1].data;
    let (bh, s, e) = (q.shape[0] * q.shape[1], q.shape[2], q.shape[3]);
    let p = ph.shape[3];
    let mut out = Tensor::zeros(&q.shape);
    for r in 0..bh {
        for i in 0..s {
            let row = |t: &Tensor, j: usize, w: usize| {
                t.data[(r * s + j) * w..(r * s + j + 1) * w].to_vec()
            };
            let (qi, phi) = (row(q, i, e), row(ph, i, p));
            let keys = if causal { i + 1 } else { s };
            let logits: Vec<f64> = (0..keys)
                .map(|j| {
                    let dot: f64 = qi.iter().zip(row(k, j, e)).map(|(a, b)| a * b).sum();
                    let phj = row(ph, j, p);
                    let coherence = match amp {
                        None => (0..p).map(|m| (phi[m] - phj[m]).cos()).sum::<f64>() / p as f64,
                        Some(a) => {
                            let (ai, aj) = (row(a, i, p), row(a, j, p));
                            let (mut re, mut im, mut norm) = (0.0, 0.0, 0.0);
                            for m in 0..p {
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
            let mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
            let z: f64 = w.iter().sum();
            for (j, wj) in w.iter().enumerate() {
                let vj = row(v, j, e);
                for (f, vf) in vj.iter().enumerate() {
                    out.data[(r * s + i) * e + f] += wj / z * vf;
                }
            }
        }
    }
    out
}
