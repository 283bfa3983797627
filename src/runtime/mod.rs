//! The runtime: an IR graph instantiated on a Burn device (CPU `flex` by default).
//!
//! Parameters are a `Vec` of rank-tagged tensors ([`V`]) named as in the IR; the forward pass
//! walks the graph's ops in topological order ([`ops::eval`]). Weights save and load as
//! safetensors under their IR names, so a checkpoint states which model it belongs to.

mod cache;
pub mod consts;
mod device;
pub mod fused;
pub mod ops;
pub mod pad;
pub mod value;
pub mod weights_file;

pub use cache::{CacheFull, KvCache};
pub use device::{is_cpu, DeviceKind};
pub use value::V;
pub use weights_file::{from_safetensors, load_weights, to_safetensors, to_safetensors_with};

use crate::ir::{reference, Graph, Op, Param};
use crate::ops::memory::Memory;
use burn::prelude::*;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;
use std::path::Path;

/// Statistics of one forward pass that auxiliary loss terms read, each a differentiable
/// scalar `[1]` per layer in graph order. `Aux::default()` records every statistic;
/// [`Aux::wanting`] only some.
pub struct Aux {
    /// Which statistics the layers record. One not wanted costs nothing: attention keeps its
    /// fused kernel unless the entropies are wanted (they need the probabilities).
    pub wants: AuxWants,
    /// Per attention layer: the mean entropy (nats) of its attention rows.
    pub attention_entropy: Vec<Tensor<1>>,
    /// Per `harmonic_select` layer: the mean probability mass its scorer puts outside the
    /// harmonics it keeps.
    pub harmonic_sparsity: Vec<Tensor<1>>,
}

/// Which statistics an [`Aux`] collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuxWants {
    /// [`Aux::attention_entropy`].
    pub attention_entropy: bool,
    /// [`Aux::harmonic_sparsity`].
    pub harmonic_sparsity: bool,
}

impl AuxWants {
    /// Every statistic.
    pub const ALL: AuxWants = AuxWants {
        attention_entropy: true,
        harmonic_sparsity: true,
    };
}

impl Aux {
    /// An empty record of the statistics `wants` names.
    pub fn wanting(wants: AuxWants) -> Self {
        Aux {
            wants,
            attention_entropy: Vec::new(),
            harmonic_sparsity: Vec::new(),
        }
    }
}

impl Default for Aux {
    fn default() -> Self {
        Aux::wanting(AuxWants::ALL)
    }
}

/// Named f32 tensors: `name → (row-major data, shape)`.
pub type Weights = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// A model ready to run: the graph, its parameter values, and the device.
pub struct Runtime {
    graph: Graph,
    order: Vec<NodeIndex>,
    /// Parameter names, sorted.
    pub names: Vec<String>,
    /// Parameter shapes, by index.
    pub shapes: Vec<Vec<usize>>,
    /// Parameter values, by index.
    pub params: Vec<V>,
    slot: HashMap<NodeIndex, usize>,
    /// The device.
    pub device: Device,
    /// Mixed precision: matrix products run in this dtype (inputs cast down, result cast back
    /// to f32); parameters, norms, softmax and the loss stay f32. `None`: everything f32.
    pub matmul_dtype: Option<burn::tensor::FloatDType>,
    /// Run attention layers declared `hard` with ordinary softmax weights (to report how a
    /// hard-attention model does with soft attention).
    pub soft_attention: bool,
    /// The frequency-curriculum mask applied to spectral gates (`None`: unmasked). Training
    /// sets it for the steps of a frequency curriculum.
    pub freq_mask: Option<crate::ops::spectral::FreqCutoff>,
    /// Nodes with a batch axis that depend on an encoder-decoder's source but not on the
    /// decoder's input: computed once per generation when decoding with a cache.
    source_only: std::collections::HashSet<NodeIndex>,
    /// [`memory_prefix`], computed once.
    memory_prefix: HashMap<NodeIndex, usize>,
    /// [`Graph::source_len`], read once.
    source_len: Option<usize>,
    /// When set, forward passes add each op's wall time here (op name → seconds, calls):
    /// `kiln bench --profile`. The CPU backend runs ops eagerly, so the times are the ops'
    /// own; on a GPU they would only be launch times.
    pub op_times: Option<std::cell::RefCell<HashMap<&'static str, (f64, usize)>>>,
    /// Position tables built on the device once and reused by every forward pass.
    pub consts: consts::Consts,
    /// Draw dropout keys on the host ([`ops::KeyStream`], seeded by [`Runtime::seed_dropout`])
    /// rather than from the device's generator: what a GPU runtime does, so that a training
    /// step reads nothing back.
    pub host_dropout_keys: bool,
    keys: ops::KeyStream,
    /// Pad token inputs on the right to a multiple of this many positions where the model
    /// allows it ([`Runtime::padded_len`]); 1: never. The trainer sets 16 on a GPU.
    pub pad_to: usize,
    /// The longest padded input, or why the model cannot be padded ([`pad`]).
    pad_limit: Result<usize, String>,
}

/// Per node inside a `memory_tokens` body: how many memory tokens precede the input's positions
/// on its sequence axis (nested bodies add up). Incremental decoding feeds only new tokens, so
/// these nodes see positions `offset + prefix` onward.
fn memory_prefix(g: &Graph) -> HashMap<NodeIndex, usize> {
    let mut prefix: HashMap<NodeIndex, usize> = HashMap::new();
    for n in g.topo().expect("verified graphs are acyclic") {
        let ins = g.inputs(n);
        // Parameters have no prefix, so this is the sequence input's.
        let inner = (ins.iter().map(|i| prefix.get(i).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0);
        let p = match &g.g[n].op {
            Op::Memory(Memory::Prepend) => {
                let Op::Param(Param { shape, .. }) = &g.g[ins[1]].op else {
                    unreachable!("memory tokens are a parameter")
                };
                inner + shape[0] as usize
            }
            Op::Memory(Memory::Drop { count }) => inner - *count as usize,
            _ => inner,
        };
        if p > 0 {
            prefix.insert(n, p);
        }
    }
    prefix
}

fn source_only(g: &Graph) -> std::collections::HashSet<NodeIndex> {
    let order = g.topo().expect("verified graphs are acyclic");
    let (mut from_src, mut from_input) = (Vec::new(), std::collections::HashSet::new());
    for &n in &order {
        let ins = g.inputs(n);
        match g.g[n].op {
            Op::Input(_) => {
                from_input.insert(n);
            }
            Op::Source(_) => from_src.push(n),
            _ if ins.iter().any(|i| from_input.contains(i)) => {
                from_input.insert(n);
            }
            _ if ins.iter().any(|i| from_src.contains(i)) => from_src.push(n),
            _ => {}
        }
    }
    from_src
        .into_iter()
        .filter(|&n| g.g[n].ty.shape.first() == Some(&crate::ir::Dim::Batch))
        .collect()
}

/// Error of loading weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// The checkpoint belongs to another model.
    #[error("{0}")]
    Mismatch(String),
    /// The file's content is damaged: a tensor or the state does not match the checksum
    /// written with it, or a weight is not finite.
    #[error("{0}")]
    Corrupt(String),
}

impl Runtime {
    /// Instantiate `graph` with parameters initialised as the IR says, from `seed` (the same
    /// values the float64 reference interpreter uses for that seed).
    pub fn init(graph: Graph, device: Device, seed: u64) -> Self {
        let values = reference::init_params(&graph, seed);
        let values = values
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    (
                        t.data.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
                        t.shape,
                    ),
                )
            })
            .collect();
        Self::with_values(graph, device, &values).expect("fresh values match the graph")
    }

    /// Instantiate `graph` with the given parameter values (`name → (data, shape)`).
    pub fn with_values(
        graph: Graph,
        device: Device,
        values: &Weights,
    ) -> Result<Self, WeightsError> {
        let order = graph.topo().expect("verified graphs are acyclic");
        let mut params_nodes: Vec<(String, Vec<usize>, NodeIndex)> = graph
            .g
            .node_indices()
            .filter_map(|n| match &graph.g[n].op {
                Op::Param(Param { name, shape, .. }) => {
                    Some((name.clone(), shape.iter().map(|&d| d as usize).collect(), n))
                }
                _ => None,
            })
            .collect();
        params_nodes.sort();
        let (source_only, source_len) = (source_only(&graph), graph.source_len());
        let memory_prefix = memory_prefix(&graph);
        let mut rt = Runtime {
            graph,
            order,
            names: Vec::new(),
            shapes: Vec::new(),
            params: Vec::new(),
            slot: HashMap::new(),
            device: device.clone(),
            matmul_dtype: None,
            soft_attention: false,
            freq_mask: None,
            source_only,
            memory_prefix,
            source_len,
            op_times: None,
            consts: consts::Consts::default(),
            host_dropout_keys: false,
            keys: ops::KeyStream::default(),
            pad_to: 1,
            pad_limit: Ok(0),
        };
        rt.pad_limit = pad::limit(&rt.graph);
        let mut missing = Vec::new();
        for (name, shape, node) in params_nodes {
            match values.get(&name) {
                Some((data, s)) if *s == shape => {
                    let v = V::from_f32(data.clone(), &shape, &device);
                    let v = if device.is_autodiff() { v.require_grad() } else { v };
                    rt.slot.insert(node, rt.params.len());
                    rt.names.push(name);
                    rt.shapes.push(shape);
                    rt.params.push(v);
                }
                Some((_, s)) => {
                    return Err(WeightsError::Mismatch(format!(
                        "parameter `{name}` has shape {s:?} in the checkpoint but {shape:?} in the model: the checkpoint belongs to another model"
                    )))
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            let shown: Vec<_> = missing.iter().take(3).cloned().collect();
            return Err(WeightsError::Mismatch(format!(
                "the checkpoint lacks {} parameter(s) of the model (e.g. {}): it belongs to another model",
                missing.len(),
                shown.join(", ")
            )));
        }
        Ok(rt)
    }

    /// The graph being run.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Number of learned values.
    pub fn num_params(&self) -> usize {
        self.shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// Seed the host's dropout keys of the next forward pass (see
    /// [`Runtime::host_dropout_keys`]).
    pub fn seed_dropout(&self, seed: u64) {
        self.keys.seed(seed);
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    /// Padded as [`Runtime::padded_len`] says.
    pub fn forward(&self, tokens: Tensor<2, Int>, train: bool) -> Tensor<3> {
        self.run_padded(V::I2(tokens), train)
    }

    /// A forecasting model's forward pass: series `[batch, lookback, channels]` to forecasts
    /// `[batch, horizon, channels]`.
    pub fn forward_series(&self, x: Tensor<3>, train: bool) -> Tensor<3> {
        self.run(V::F3(x), train, None, None)
    }

    /// Forward pass that also returns, per attention layer in graph order, the mean entropy
    /// (nats) of its attention rows, as a differentiable scalar `[1]`.
    pub fn forward_with_entropies(
        &self,
        tokens: Tensor<2, Int>,
        train: bool,
    ) -> (Tensor<3>, Vec<Tensor<1>>) {
        let wants = AuxWants {
            attention_entropy: true,
            harmonic_sparsity: false,
        };
        let (out, aux) = self.forward_aux(V::I2(tokens), train, wants);
        (out, aux.attention_entropy)
    }

    /// Forward pass of token ids (`V::I2`, padded as [`Runtime::padded_len`] says) or a
    /// series (`V::F3`).
    pub fn forward_value(&self, input: V, train: bool) -> Tensor<3> {
        self.run_padded(input, train)
    }

    /// Forward pass of token ids (`V::I2`) or a series (`V::F3`) that also returns the
    /// statistics the auxiliary loss terms need, those `wants` names (see [`Aux`]). Never
    /// padded: the statistics would average over the padded positions too.
    pub fn forward_aux(&self, input: V, train: bool, wants: AuxWants) -> (Tensor<3>, Aux) {
        let cell = std::cell::RefCell::new(Aux::wanting(wants));
        let out = self.run(input, train, None, Some(&cell));
        (out, cell.into_inner())
    }

    /// Incremental forward pass: `tokens` `[batch, n]` continue the sequences whose earlier
    /// positions `cache` holds; returns the logits of the n new positions and extends the
    /// cache. Attention reads the cached K/V (H_kv heads after the GQA pass) instead of
    /// recomputing them, LSTMs continue from their cached state, and position tables start at
    /// the cached length, so each new token costs O(T) instead of O(T²). Check
    /// [`Runtime::cache_support`] first. A cache with a capacity ([`KvCache::with_capacity`])
    /// refuses a call that would go past it ([`CacheFull`]), before any work.
    pub fn forward_cached(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, CacheFull> {
        let src = if cache.len == 0 {
            self.source_len().unwrap_or(0)
        } else {
            0
        };
        let n = tokens.dims()[1] - src;
        if let Some(capacity) = cache.capacity {
            if cache.len + n > capacity {
                return Err(CacheFull {
                    capacity,
                    held: cache.len,
                    new: n,
                    needed: cache.len + n,
                });
            }
        }
        let out = self.run(V::I2(tokens), false, Some(cache), None);
        cache.len += n;
        Ok(out)
    }

    /// The longest input the model can read, where a layer limits it (`position_linear`,
    /// learned positions, padded spectral filters); `None` when no layer does.
    pub fn max_positions(&self) -> Option<usize> {
        pad::max_positions(&self.graph)
    }

    /// Whether some attention layer is declared `hard`.
    pub fn has_hard_attention(&self) -> bool {
        self.graph
            .g
            .node_weights()
            .any(|n| matches!(&n.op, Op::Attention(a) if a.attend().is_some_and(|a| a.hard)))
    }

    /// `Ok` when every op of the graph has an incremental form; otherwise the op that has
    /// none (a full-sequence FFT, a non-causal attention, ...).
    pub fn cache_support(&self) -> Result<(), String> {
        for &n in &self.order {
            // What depends only on the source is computed once, whole.
            if self.source_only.contains(&n) {
                continue;
            }
            // A key mask over the decoder's own tokens (`mask_padding`) covers every position,
            // so such an attention recomputes the prefix; whole-sequence transforms and a
            // forecaster's series do not decode.
            let ok = self.graph.g[n].op.def().incremental();
            if !ok {
                return Err(format!(
                    "`{}` ({}) has no incremental form",
                    self.graph.g[n].layer,
                    self.graph.g[n].op.name()
                ));
            }
        }
        Ok(())
    }

    /// An encoder-decoder model's source length (see [`Graph::source_len`]).
    pub fn source_len(&self) -> Option<usize> {
        self.source_len
    }

    fn run(
        &self,
        input: V,
        train: bool,
        mut cache: Option<&mut KvCache>,
        aux: Option<&std::cell::RefCell<Aux>>,
    ) -> Tensor<3> {
        // An encoder-decoder's rows start with the source, except in the calls after the
        // first of a cached generation (the cache holds what the source determines). A
        // forecasting model reads a series `[batch, lookback, channels]` instead of ids.
        let first = cache.as_ref().is_none_or(|c| c.len == 0);
        let (mut source, input) = match (self.source_len, input) {
            (Some(s), V::I2(tokens)) if first => {
                let w = tokens.dims()[1];
                (
                    Some(tokens.clone().narrow(1, 0, s)),
                    V::I2(tokens.narrow(1, s, w - s)),
                )
            }
            (_, input) => (None, input),
        };
        let dims = input.dims();
        let (batch, seq) = (dims[0], dims[1]);
        let ctx = ops::Ctx {
            device: &self.device,
            train,
            batch,
            seq,
            offset: cache.as_ref().map_or(0, |c| c.len),
            kv_capacity: cache.as_ref().and_then(|c| c.capacity),
            matmul_dtype: self.matmul_dtype,
            soft_attention: self.soft_attention,
            freq_mask: self.freq_mask,
            aux,
            consts: Some(&self.consts),
            keys: self.host_dropout_keys.then_some(&self.keys),
        };
        let mut values: HashMap<NodeIndex, V> = HashMap::with_capacity(self.order.len());
        let mut remaining: HashMap<NodeIndex, usize> = self
            .order
            .iter()
            .map(|&n| (n, self.graph.users(n).len()))
            .collect();
        let mut input = Some(input);
        for &n in &self.order {
            let op = &self.graph.g[n].op;
            let ins_idx = self.graph.inputs(n);
            let v = match op {
                Op::Input(_) | Op::Series(_) => input.take().expect("one input"),
                _ if self.source_only.contains(&n)
                    && cache.as_ref().is_some_and(|c| c.source.contains_key(&n)) =>
                {
                    cache.as_ref().expect("checked").source[&n].clone()
                }
                Op::Source(_) => V::I2(source.take().expect("the rows hold the source")),
                Op::Param(_) => self.params[self.slot[&n]].clone(),
                Op::Output(_) => return values.remove(&ins_idx[0]).expect("output value").f3(),
                op => {
                    let ins: Vec<&V> = ins_idx.iter().map(|i| &values[i]).collect();
                    // Inside memory bodies, cached positions include the memory tokens (the
                    // first call's input already starts with them), and so do preallocated
                    // buffers.
                    let shifted;
                    let ctx = match self.memory_prefix.get(&n) {
                        Some(&m) => {
                            shifted = ops::Ctx {
                                offset: if ctx.offset > 0 { ctx.offset + m } else { 0 },
                                kv_capacity: ctx.kv_capacity.map(|c| c + m),
                                ..ctx
                            };
                            &shifted
                        }
                        _ => &ctx,
                    };
                    match (cache.as_deref_mut(), op) {
                        // What only the source determines runs whole, once (and is kept in
                        // `source`); the rest decodes with its own state.
                        (Some(c), op)
                            if op.def().incremental() && !self.source_only.contains(&n) =>
                        {
                            let def = op.def();
                            let mut state = c.states.remove(&n);
                            let v = def.decode(&ins, ctx, &mut state);
                            if let Some(state) = state {
                                c.states.insert(n, state);
                            }
                            v
                        }
                        _ => match &self.op_times {
                            None => ops::eval(op, &ins, ctx),
                            Some(times) => {
                                let t0 = std::time::Instant::now();
                                let v = ops::eval(op, &ins, ctx);
                                let mut t = times.borrow_mut();
                                let e = t.entry(op.name()).or_insert((0.0, 0));
                                e.0 += t0.elapsed().as_secs_f64();
                                e.1 += 1;
                                v
                            }
                        },
                    }
                }
            };
            if let Some(c) = cache.as_deref_mut() {
                if self.source_only.contains(&n) && !c.source.contains_key(&n) {
                    c.source.insert(n, v.clone());
                }
            }
            values.insert(n, v);
            // Free values no later op reads.
            for i in ins_idx {
                if let Some(r) = remaining.get_mut(&i) {
                    *r -= 1;
                    if *r == 0 {
                        values.remove(&i);
                    }
                }
            }
        }
        unreachable!("verified graphs have an output")
    }

    /// Parameter values as `name → (data, shape)`.
    pub fn values(&self) -> Weights {
        self.names
            .iter()
            .zip(&self.params)
            .zip(&self.shapes)
            .map(|((n, v), s)| (n.clone(), (v.to_vec(), s.clone())))
            .collect()
    }

    /// Save the weights as safetensors (written atomically).
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let bytes = to_safetensors(&self.values())?;
        crate::util::write_atomic(path, &bytes).map_err(|e| {
            WeightsError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot write `{}`: {e}", path.display()),
            ))
        })?;
        Ok(())
    }
}

/// Token ids as a Burn tensor.
pub fn tokens_tensor(tokens: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let b = tokens.len();
    let s = tokens.first().map_or(0, Vec::len);
    let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}
