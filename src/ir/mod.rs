//! The graph IR: a `petgraph` `StableDiGraph` of [`Op`]s whose edges carry input ports, with
//! symbolic shapes (`batch`, `seq`) and a verifier.

pub mod op;
pub mod print;
pub mod reference;
pub mod verify;

pub use crate::ops::spectral::{FreqCutoff, SpectralAlgo};
pub use op::{AttnScale, Init, Input, Mixing, Op, Output, Param, Real, Series, Source};

use crate::diag::Span;
use crate::ops::ensemble::Ensemble;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BinaryHeap;
use std::fmt;

/// A dimension: symbolic or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The batch size.
    Batch,
    /// The sequence length.
    Seq,
    /// The sequence length plus this many memory tokens (inside `memory_tokens`).
    SeqPlus(u64),
    /// The batch size times this many channels (a forecasting model's channels folded into
    /// the batch: channel independence).
    BatchTimes(u64),
    /// A number known at compile time.
    Fixed(u64),
}

impl Dim {
    /// Its size for `batch` sequences of `seq` tokens.
    pub fn value(&self, batch: u64, seq: u64) -> u64 {
        match self {
            Dim::Batch => batch,
            Dim::Seq => seq,
            Dim::SeqPlus(m) => seq + m,
            Dim::BatchTimes(c) => batch * c,
            Dim::Fixed(n) => *n,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => write!(f, "batch"),
            Dim::Seq => write!(f, "seq"),
            Dim::SeqPlus(m) => write!(f, "seq+{m}"),
            Dim::BatchTimes(c) => write!(f, "batch*{c}"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// Token ids.
    I64,
}

/// The type of a value: element type and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// Number of elements for given batch and sequence sizes.
    pub fn numel(&self, batch: u64, seq: u64) -> u64 {
        self.shape.iter().map(|d| d.value(batch, seq)).product()
    }

    /// The size of axis `i` for one example of length `seq` (1 past the last axis).
    pub fn len(&self, i: usize, seq: u64) -> u64 {
        self.shape.get(i).map_or(1, |d| d.value(1, seq))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        let t = match self.dtype {
            DType::F32 => "f32",
            DType::I64 => "i64",
        };
        write!(f, "{t}[{}]", dims.join(", "))
    }
}

/// A node: an op, its inferred output type, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// The output type.
    pub ty: TensorType,
    /// Path of the layer that produced it, e.g. `layers[1].body[0]`.
    pub layer: String,
    /// The YAML span of that layer.
    pub span: Option<Span>,
    /// Set by lowering when the op is one piece of a construction that is causal as a whole
    /// (the FFT pair of a causal spectral filter); the causality analysis uses it instead of
    /// the op's own mixing.
    pub mixing: Option<Mixing>,
}

/// Input port an edge feeds.
pub type Port = u32;

/// A model graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The nodes and edges.
    pub g: StableDiGraph<Node, Port>,
    /// The model's name.
    pub name: String,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            g: StableDiGraph::new(),
            name: name.into(),
        }
    }

    /// Add a node whose inputs are `inputs` (in port order), inferring its type.
    pub fn add(
        &mut self,
        op: Op,
        inputs: &[NodeIndex],
        layer: &str,
        span: Option<Span>,
    ) -> Result<NodeIndex, crate::ops::InferError> {
        let tys: Vec<TensorType> = inputs.iter().map(|&i| self.g[i].ty.clone()).collect();
        let ty = op.infer(&tys)?;
        let n = self.g.add_node(Node {
            op,
            ty,
            layer: layer.to_string(),
            span,
            mixing: None,
        });
        for (port, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i, n, port as Port);
        }
        Ok(n)
    }

    /// The inputs of a node in port order.
    pub fn inputs(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut ins: Vec<(Port, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        ins.sort();
        ins.into_iter().map(|(_, s)| s).collect()
    }

    /// The nodes that read `n`, with the port they read it on, sorted.
    pub fn users(&self, n: NodeIndex) -> Vec<(NodeIndex, Port)> {
        let mut v: Vec<(NodeIndex, Port)> = self
            .g
            .edges_directed(n, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        v.sort();
        v
    }

    /// Replace every use of `old` by `new`.
    pub fn replace_uses(&mut self, old: NodeIndex, new: NodeIndex) {
        for (user, port) in self.users(old) {
            let e = self.g.find_edge(old, user).expect("edge exists");
            self.g.remove_edge(e);
            self.g.add_edge(new, user, port);
        }
    }

    /// Set input `port` of `n` to `src`.
    pub fn set_input(&mut self, n: NodeIndex, port: Port, src: NodeIndex) {
        let old: Vec<_> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .filter(|e| *e.weight() == port)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        self.g.add_edge(src, n, port);
    }

    /// The output node.
    pub fn output(&self) -> Option<NodeIndex> {
        self.g
            .node_indices()
            .find(|&n| matches!(self.g[n].op, Op::Output(_)))
    }

    /// An encoder-decoder model's source length: each row of token ids starts with this many
    /// source ids, and the decoder reads the rest.
    pub fn source_len(&self) -> Option<usize> {
        self.g.node_weights().find_map(|n| match n.op {
            Op::Source(Source { len }) => Some(len as usize),
            _ => None,
        })
    }

    /// The input node.
    pub fn input(&self) -> Option<NodeIndex> {
        self.g
            .node_indices()
            .find(|&n| matches!(self.g[n].op, Op::Input(_)))
    }

    /// Nodes in a deterministic topological order (Kahn's algorithm, smallest index first), or
    /// `None` when the graph has a cycle.
    pub fn topo(&self) -> Option<Vec<NodeIndex>> {
        let mut indeg: std::collections::HashMap<NodeIndex, usize> = self
            .g
            .node_indices()
            .map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeIndex>> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| std::cmp::Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("node exists");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        (order.len() == self.g.node_count()).then_some(order)
    }

    /// An ensemble of `members` (models of the same task): one graph in which they share the
    /// input, their parameters are renamed `member<i>.<name>`, and the output is the log of
    /// the average of their probabilities, ln(mean_i softmax(logits_i)), so argmax, sampling
    /// and cross-entropy all see the ensemble's distribution; for forecasters (which read a
    /// series) it is the mean of the members' point forecasts. Every pass and the KV cache
    /// work on it as on any graph.
    pub fn ensemble(members: &[Graph]) -> Result<Graph, String> {
        let mut g = Graph::new(format!("ensemble of {} models", members.len()));
        // Token models share an `Input`, forecasters their `Series`.
        let series = members
            .first()
            .and_then(|m| m.g.node_weights().find(|n| matches!(n.op, Op::Series(_))))
            .map(|n| n.op.clone());
        let input = g.add(
            series.clone().unwrap_or(Op::Input(Input)),
            &[],
            "input",
            None,
        )?;
        let mut outs = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let mut map = std::collections::HashMap::new();
            for n in m.topo().ok_or("a member graph has a cycle")? {
                let node = &m.g[n];
                let ins: Vec<NodeIndex> = m.inputs(n).iter().map(|x| map[x]).collect();
                match &node.op {
                    Op::Input(_) | Op::Series(_) => {
                        map.insert(n, input);
                    }
                    Op::Output(_) => outs.push(ins[0]),
                    op => {
                        let op = match op {
                            Op::Param(p) => Op::Param(Param {
                                name: format!("member{i}.{}", p.name),
                                ..p.clone()
                            }),
                            o => o.clone(),
                        };
                        let new = g.add(op, &ins, &format!("member{i}.{}", node.layer), None)?;
                        g.g[new].mixing = node.mixing;
                        map.insert(n, new);
                    }
                }
            }
        }
        let members_n = outs.len() as u64;
        let op = Op::Ensemble(if series.is_some() {
            Ensemble::MeanForecasts { members: members_n }
        } else {
            Ensemble::MeanProbs { members: members_n }
        });
        let mean = g.add(op, &outs, "ensemble", None)?;
        g.add(Op::Output(Output), &[mean], "output", None)?;
        Ok(g)
    }

    /// Total number of learned values.
    pub fn param_count(&self) -> u64 {
        self.g
            .node_weights()
            .filter_map(|n| match &n.op {
                Op::Param(p) => Some(p.shape.iter().product::<u64>()),
                _ => None,
            })
            .sum()
    }

    /// Multiply-add work of one forward pass over `batch` sequences of `seq` tokens, in FLOPs
    /// (2 per multiply-add): the matrix products of linear maps, attention (the full score
    /// matrix, as computed; phase-coherent, cross- and band attention alike), LSTM gates,
    /// Mamba, xLSTM and ETS projections (and mLSTM's s × s products), retention's products,
    /// position-linear maps, forecasting heads and dense spectral filters. Norms, activations, FFTs and the scan's
    /// elementwise work are not counted (each op's family says: see
    /// [`crate::ops::OpDef::matmul_flops`]). A training step costs about three times this (forward, and two products per product backward).
    pub fn matmul_flops(&self, batch: u64, seq: u64) -> u64 {
        self.g
            .node_indices()
            .map(|n| {
                let ins = self.input_types(n);
                self.g[n].op.def().matmul_flops(&ins, batch, seq)
            })
            .sum()
    }

    /// The types of a node's inputs, in port order.
    pub fn input_types(&self, n: NodeIndex) -> Vec<&TensorType> {
        self.inputs(n).into_iter().map(|i| &self.g[i].ty).collect()
    }

    /// Estimated activation memory of one example of length `seq`, in bytes: the sum of the
    /// sizes of all intermediate values (what a training step keeps for the backward pass).
    pub fn activation_bytes(&self, seq: u64) -> u64 {
        self.g
            .node_weights()
            .filter(|n| !matches!(n.op, Op::Param(_) | Op::Input(_) | Op::Output(_)))
            .map(|n| n.ty.numel(1, seq) * 4)
            .sum()
    }

    /// The largest temporary buffer of one op for one example of length `seq`, in bytes (see
    /// [`crate::ops::OpDef::workspace_bytes`]): attention's score and weight matrices, which are not values
    /// of the graph but dominate memory on long sequences.
    pub fn workspace_bytes(&self, seq: u64) -> u64 {
        self.g
            .node_indices()
            .map(|n| {
                self.g[n]
                    .op
                    .def()
                    .workspace_bytes(&self.input_types(n), seq)
            })
            .max()
            .unwrap_or(0)
    }
}
