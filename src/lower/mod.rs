//! Lowering: a validated model spec becomes a [`Graph`], with shapes inferred and checked.
//!
//! Every layer lowers to a handful of ops; a shape conflict becomes a diagnostic at the YAML
//! layer that caused it. After lowering, the causality analysis finds layers that let a
//! position see later positions.
//!
//! The walk over layer lists, the helpers every layer uses and the blocks that compose layers
//! are in `walker`; `Lowerer::layer` there dispatches each other layer to the file of its
//! family under `layers/`.

use crate::diag::{Code, Diagnostic, Span};
use crate::ir::op::Act;
use crate::ir::{DType, Dim, Graph, Init, Mixing, Op, Real};
use crate::ops::attention::{Attention, PadBias};
use crate::spec::yaml::Node;
use crate::spec::{Activation, Layer, LoadedModel};
use petgraph::stable_graph::NodeIndex;

mod layers;
mod walker;

/// What lowering needs to know besides the model.
#[derive(Debug, Clone, Copy)]
pub struct LowerOptions {
    /// Vocabulary size (from the task, or the model's `vocab`).
    pub vocab: u64,
    /// Longest sequence the model will read, when known (checked against `max_len`s).
    pub max_seq: Option<u64>,
    /// Reject a model in which a position sees later positions (next-token prediction).
    pub require_causal: bool,
    /// Source length of an encoder-decoder model (from the task); `None` for a model file on
    /// its own, which then gets [`PLACEHOLDER_SOURCE`].
    pub source_len: Option<u64>,
    /// A forecasting model's shapes (from the task): it reads series instead of token ids.
    pub forecast: Option<ForecastShape>,
    /// The padding id of an encoder-decoder's source (from the task): the encoder's
    /// attention and the decoder's cross-attention then ignore padded source positions.
    pub source_pad: Option<i64>,
    /// The padding id of a decoder-only model's input (from the task): its self-attention
    /// then ignores PAD keys (see [`crate::spec::recipe::Task::input_pad`]).
    pub input_pad: Option<i64>,
}

/// What a forecasting model reads and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForecastShape {
    /// Steps read.
    pub lookback: u64,
    /// Steps forecast.
    pub horizon: u64,
    /// Channels.
    pub channels: u64,
}

/// Shapes used to check a forecasting model file on its own.
pub const PLACEHOLDER_FORECAST: ForecastShape = ForecastShape {
    lookback: 96,
    horizon: 24,
    channels: 1,
};

/// Whether a model reads series (its first layer is `revin` or `patch`).
pub fn is_forecaster(model: &crate::spec::ModelSpec) -> bool {
    matches!(
        model.layers.first(),
        Some(Layer::Revin { .. } | Layer::Patch { .. })
    )
}

/// Source length used to check an encoder-decoder model file on its own.
pub const PLACEHOLDER_SOURCE: u64 = 16;

/// Lower a model. Returns the graph or every diagnostic found.
pub fn lower(model: &LoadedModel, opts: &LowerOptions) -> Result<Graph, Vec<Diagnostic>> {
    let name = model.spec.name.clone().unwrap_or_else(|| "model".into());
    let mut l = Lowerer {
        g: Graph::new(name),
        input: NodeIndex::new(0),
        opts: *opts,
        diags: Vec::new(),
        repeat: Vec::new(),
        positions: NodeIndex::new(0),
        memory: 0,
        encoder: None,
        encoding: false,
        key_bias: None,
        input_bias: None,
    };
    let root = match opts.forecast {
        Some(f) => Op::Series(crate::ir::Series {
            lookback: f.lookback,
            channels: f.channels,
        }),
        None => Op::Input(crate::ir::Input),
    };
    l.input = l.g.add(root, &[], "", None).expect("input has no inputs");
    if model.spec.encoder.is_none() {
        l.input_bias = opts.input_pad.map(|pad| {
            l.g.add(
                Op::Attention(Attention::PadBias(PadBias { pad })),
                &[l.input],
                "",
                None,
            )
            .expect("input ids fit")
        });
    }
    if let Some(enc) = &model.spec.encoder {
        let len = opts.source_len.unwrap_or(PLACEHOLDER_SOURCE);
        let src =
            l.g.add(Op::Source(crate::ir::Source { len }), &[], "", None)
                .expect("source has no inputs");
        l.positions = src;
        l.key_bias = opts.source_pad.map(|pad| {
            l.g.add(
                Op::Attention(Attention::PadBias(PadBias { pad })),
                &[src],
                "encoder",
                None,
            )
            .expect("source ids fit")
        });
        let nodes = model.tree.get("encoder").and_then(seq_items);
        l.encoding = true;
        l.encoder = l.seq(enc, nodes, src, "encoder");
        l.encoding = false;
        if let Some(e) = l.encoder {
            if l.is_tokens(e) {
                let span = nodes.and_then(|n| n.last()).map(layer_span);
                l.error(
                    Code::Shape,
                    span,
                    "the encoder returns token ids".into(),
                    "last encoder layer",
                    "start the encoder with `{type: embedding, dim: ...}`",
                );
                l.encoder = None;
            }
        }
    }
    l.positions = l.input;
    let nodes = model.tree.get("layers").and_then(seq_items);
    let out = l.seq(&model.spec.layers, nodes, l.input, "layers");
    if let (Some(out), Some(f)) = (out, opts.forecast) {
        let last_span = nodes.and_then(|n| n.last()).map(layer_span);
        let ty = &l.g.g[out].ty;
        let want = [Dim::Batch, Dim::Fixed(f.horizon), Dim::Fixed(f.channels)];
        if ty.shape != want {
            l.diags.push(
                Diagnostic::error(Code::Shape, last_span, format!("the model returns {ty}, but the task needs forecasts [batch, {}, {}]", f.horizon, f.channels))
                    .label("last layer")
                    .help("end a forecasting model with `{type: forecast_head}` (inside `revin`, if you use it)"),
            );
        } else {
            l.g.add(Op::Output(crate::ir::Output), &[out], "", None)
                .expect("output takes any input");
        }
    } else if let Some(out) = out {
        let last_span = nodes.and_then(|n| n.last()).map(layer_span);
        let ty = &l.g.g[out].ty;
        let want = Dim::Fixed(opts.vocab);
        if ty.dtype != DType::F32 || ty.shape.last() != Some(&want) {
            let width = ty.shape.last().map_or_else(|| "?".into(), Dim::to_string);
            l.diags.push(
                Diagnostic::error(Code::Shape, last_span, format!("the model ends with width {width}, but the task needs {} logits per position", opts.vocab))
                    .label("last layer")
                    .help("end the model with `{type: head}`, which projects to the vocabulary"),
            );
        } else {
            l.g.add(Op::Output(crate::ir::Output), &[out], "", None)
                .expect("output takes any input");
        }
    }
    if l.diags.is_empty() && opts.require_causal {
        let mut spans = std::collections::HashSet::new();
        for n in noncausal_layers(&l.g) {
            let node = &l.g.g[n];
            if !spans.insert(node.span) {
                continue; // another copy of a repeated layer, already reported
            }
            l.diags.push(
                Diagnostic::error(Code::NonCausal, node.span, format!("layer `{}` lets each position see later positions", node.layer))
                    .label(format!("{} mixes the whole sequence", node.op.name()))
                    .help("next-token prediction needs a causal model: make this layer causal (`causal: true`), or set `allow_noncausal: true` in the recipe to train it anyway"),
            );
        }
    }
    if l.diags.is_empty() {
        Ok(l.g)
    } else {
        crate::diag::sort(&mut l.diags);
        Err(l.diags)
    }
}

/// Nodes whose own mixing is non-causal and whose result reaches the output: the layers that
/// let a position see the future. Sorted by node index, one per layer.
pub fn noncausal_layers(g: &Graph) -> Vec<NodeIndex> {
    let Some(order) = g.topo() else {
        return Vec::new();
    };
    let Some(out) = g.output() else {
        return Vec::new();
    };
    // Which nodes reach the output.
    let mut reaches = std::collections::HashSet::new();
    reaches.insert(out);
    for &n in order.iter().rev() {
        if g.users(n).iter().any(|(u, _)| reaches.contains(u)) {
            reaches.insert(n);
        }
    }
    // Only positions of the input sequence matter: an encoder-decoder's encoder reads the
    // source, which the decoder sees whole by design.
    let mut from_input = std::collections::HashSet::new();
    for &n in &order {
        if g.g[n].op == Op::Input(crate::ir::Input)
            || g.inputs(n).iter().any(|i| from_input.contains(i))
        {
            from_input.insert(n);
        }
    }
    reaches.retain(|n| from_input.contains(n));
    let mut seen_layers = std::collections::HashSet::new();
    let mut v = Vec::new();
    for n in order {
        let node = &g.g[n];
        let mixing = node.mixing.unwrap_or_else(|| node.op.mixing());
        if mixing == Mixing::Full && reaches.contains(&n) && seen_layers.insert(node.layer.clone())
        {
            v.push(n);
        }
    }
    v
}

/// `true` when no position of the output depends on a later input position.
pub fn is_causal(g: &Graph) -> bool {
    noncausal_layers(g).is_empty()
}

fn seq_items(n: &Node) -> Option<&[Node]> {
    match &n.value {
        crate::spec::yaml::Value::Seq(items) => Some(items),
        _ => None,
    }
}

/// Where a layer is written: the span of its `type` value.
fn layer_span(n: &Node) -> Span {
    n.get("type").map_or(n.span, |t| t.span)
}

struct Lowerer {
    g: Graph,
    input: NodeIndex,
    opts: LowerOptions,
    diags: Vec<Diagnostic>,
    /// Copy indices of the enclosing `repeat`s, innermost last.
    repeat: Vec<u32>,
    /// What position tables read their positions from: the token ids, or the sequence with
    /// its memory tokens inside `memory_tokens`.
    positions: NodeIndex,
    /// Memory tokens in scope (they lengthen the sequences that position layers see).
    memory: u64,
    /// The encoder's output, which `cross_attention` reads.
    encoder: Option<NodeIndex>,
    /// Lowering the encoder (its sequences are the source's).
    encoding: bool,
    /// The source's key-padding bias `[b, S]`, when the task pads sources.
    key_bias: Option<NodeIndex>,
    /// The input's key-padding bias `[b, s]`, when the task masks its padding.
    input_bias: Option<NodeIndex>,
}

/// The layer being lowered: its parameter prefix and YAML location.
struct At<'a> {
    path: String,
    node: Option<&'a Node>,
    span: Option<Span>,
}

impl At<'_> {
    fn field_span(&self, key: &str) -> Option<Span> {
        self.node
            .and_then(|n| n.get(key))
            .map(|n| n.span)
            .or(self.span)
    }
}

fn linear_init(fan_in: u64) -> Init {
    Init::Uniform(Real(1.0 / (fan_in as f64).sqrt()))
}

/// Lower a recipe's model with the task's vocabulary and sequence length; causality is
/// required unless the recipe sets `allow_noncausal`. A model `vocab` that disagrees with the
/// task is an error.
pub fn lower_recipe(r: &crate::spec::LoadedRecipe) -> Result<Graph, Vec<Diagnostic>> {
    let vocab = r.spec.task.vocab();
    if let Some(v) = r.model.spec.vocab {
        if u64::from(v) != vocab {
            let span = r.model.tree.get("vocab").map(|n| n.span);
            return Err(vec![Diagnostic::error(
                Code::Conflict,
                span,
                format!("the model says `vocab: {v}` but the task has {vocab} tokens"),
            )
            .label("disagrees with the task")
            .help("remove `vocab` from the model: the recipe's task supplies it")]);
        }
    }
    let g = lower(
        &r.model,
        &LowerOptions {
            vocab,
            // A forecaster's positions count patches; the layers check their own lengths.
            max_seq: (!matches!(r.spec.task, crate::spec::recipe::Task::Forecast(_)))
                .then(|| r.spec.task.max_seq()),
            require_causal: !r.spec.allow_noncausal
                && !matches!(r.spec.task, crate::spec::recipe::Task::Forecast(_)),
            source_len: r.spec.task.source_len(),
            forecast: match &r.spec.task {
                crate::spec::recipe::Task::Forecast(f) => Some(ForecastShape {
                    lookback: u64::from(f.lookback),
                    horizon: u64::from(f.horizon),
                    channels: f.columns.len() as u64,
                }),
                _ => None,
            },
            source_pad: r.spec.task.source_pad(),
            input_pad: r.spec.task.input_pad(),
        },
    )?;
    // Training options that act on one kind of layer need the model to have one.
    let needs = [
        LayerNeed {
            asked: r.spec.train.frequency_curriculum.is_some(),
            is_layer: |op| {
                matches!(
                    op,
                    Op::Spectral(crate::ops::spectral::Spectral::FreqMask(_))
                )
            },
            path: &["train", "frequency_curriculum"],
            msg: "a frequency curriculum needs a `spectral_gate` layer, and the model has none",
            label: "nothing to low-pass",
            help:
                "add a `spectral_gate` layer to the model, or remove `train.frequency_curriculum`",
        },
        LayerNeed {
            asked: r.spec.train.regularizers.harmonic_sparsity != 0.0,
            is_layer: |op| matches!(op, Op::Wave(crate::ops::wave::Wave::Select { .. })),
            path: &["train", "regularizers", "harmonic_sparsity"],
            msg:
                "the harmonic-sparsity term needs a `harmonic_select` layer, and the model has none",
            label: "nothing to make sparse",
            help: "add a `harmonic_select` layer to the model, or remove `harmonic_sparsity`",
        },
    ];
    for n in needs {
        if n.asked && !g.g.node_weights().any(|node| (n.is_layer)(&node.op)) {
            let span = crate::spec::load::key_span_at(&r.tree, n.path);
            return Err(vec![Diagnostic::error(Code::Conflict, Some(span), n.msg)
                .label(n.label)
                .help(n.help)]);
        }
    }
    Ok(g)
}

/// A recipe option that acts on one kind of layer (see [`lower_recipe`]).
struct LayerNeed {
    /// The recipe uses the option.
    asked: bool,
    /// The op that the layer lowers to.
    is_layer: fn(&Op) -> bool,
    /// Where the option is written.
    path: &'static [&'static str],
    msg: &'static str,
    label: &'static str,
    help: &'static str,
}

/// Vocabulary used to check a model file on its own when it declares none: any size works
/// for shape checking, since only the embedding and head depend on it.
pub const PLACEHOLDER_VOCAB: u64 = 16;

/// Lower a loaded document: a recipe with its task's vocabulary, sequence length and
/// causality requirement; a model file with `vocab` (or the given one, or a placeholder) and
/// no causality requirement.
pub fn lower_document(
    doc: &crate::spec::Document,
    vocab: Option<u64>,
    seq: Option<u64>,
) -> Result<Graph, Vec<Diagnostic>> {
    match doc {
        crate::spec::Document::Recipe(r) => lower_recipe(r),
        crate::spec::Document::Model(m) => lower(
            m,
            &LowerOptions {
                vocab: vocab
                    .or(m.spec.vocab.map(u64::from))
                    .unwrap_or(PLACEHOLDER_VOCAB),
                max_seq: seq,
                require_causal: false,
                source_len: None,
                forecast: is_forecaster(&m.spec).then_some(PLACEHOLDER_FORECAST),
                source_pad: None,
                input_pad: None,
            },
        ),
    }
}

/// The IR's activation for the spec's (the IR knows nothing of the spec).
fn act_of(a: Activation) -> Act {
    match a {
        Activation::Relu => Act::Relu,
        Activation::Gelu => Act::Gelu,
        Activation::Silu => Act::Silu,
        Activation::Tanh => Act::Tanh,
        Activation::Softplus => Act::Softplus,
    }
}
