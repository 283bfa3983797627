//! Lowering: a validated model spec becomes a [`Graph`], with shapes inferred and checked.
//!
//! Every layer lowers to a handful of ops; a shape conflict becomes a diagnostic at the YAML
//! layer that caused it. After lowering, the causality analysis finds layers that let a
//! position see later positions.

use crate::diag::{Code, Diagnostic, Span};
use crate::ir::op::Act;
use crate::ir::{AttnScale, DType, Dim, Graph, Init, Mixing, Op, Real};
use crate::spec::yaml::Node;
use crate::spec::{Activation, Layer, LoadedModel};
use petgraph::stable_graph::NodeIndex;

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
    };
    let root = match opts.forecast {
        Some(f) => Op::Series {
            lookback: f.lookback,
            channels: f.channels,
        },
        None => Op::Input,
    };
    l.input = l.g.add(root, &[], "", None).expect("input has no inputs");
    if let Some(enc) = &model.spec.encoder {
        let len = opts.source_len.unwrap_or(PLACEHOLDER_SOURCE);
        let src =
            l.g.add(Op::Source { len }, &[], "", None)
                .expect("source has no inputs");
        l.positions = src;
        l.key_bias = opts.source_pad.map(|pad| {
            l.g.add(Op::PadBias { pad }, &[src], "encoder", None)
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
            l.g.add(Op::Output, &[out], "", None)
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
            l.g.add(Op::Output, &[out], "", None)
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
        if g.g[n].op == Op::Input || g.inputs(n).iter().any(|i| from_input.contains(i)) {
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

impl Lowerer {
    /// Lower a list of layers. A layer that fails is skipped (its input flows on) so the
    /// layers after it are still checked, unless its input was still token ids (everything
    /// after would fail for the same reason).
    fn seq(
        &mut self,
        layers: &[Layer],
        nodes: Option<&[Node]>,
        mut x: NodeIndex,
        path: &str,
    ) -> Option<NodeIndex> {
        let mut ok = true;
        for (i, layer) in layers.iter().enumerate() {
            let node = nodes.and_then(|n| n.get(i));
            match self.layer(layer, node, x, &format!("{path}.{i}")) {
                Some(y) => x = y,
                None if self.is_tokens(x) => return None,
                None => ok = false,
            }
        }
        ok.then_some(x)
    }

    fn width(&self, x: NodeIndex) -> u64 {
        match self.g.g[x].ty.shape.last() {
            Some(Dim::Fixed(w)) => *w,
            _ => 0,
        }
    }

    fn is_tokens(&self, x: NodeIndex) -> bool {
        self.g.g[x].ty.dtype == DType::I64
    }

    fn error(&mut self, code: Code, span: Option<Span>, msg: String, label: &str, help: &str) {
        self.diags
            .push(Diagnostic::error(code, span, msg).label(label).help(help));
    }

    fn op(&mut self, at: &At, op: Op, inputs: &[NodeIndex]) -> Option<NodeIndex> {
        let name = op.name();
        match self.g.add(op, inputs, &at.path, at.span) {
            Ok(n) => Some(n),
            Err(e) => {
                let help = if e.contains("token ids") {
                    "start the model with `{type: embedding, dim: ...}`"
                } else {
                    "check the widths and head counts of this layer against the layer before it"
                };
                self.error(
                    Code::Shape,
                    at.span,
                    format!("layer `{}` does not fit its input: {e}", at.path),
                    &format!("{name} fails here"),
                    help,
                );
                None
            }
        }
    }

    fn param(&mut self, at: &At, name: &str, shape: &[u64], init: Init) -> NodeIndex {
        let op = Op::Param {
            name: format!("{}.{name}", at.path),
            shape: shape.to_vec(),
            init,
        };
        self.g
            .add(op, &[], &at.path, at.span)
            .expect("params have no inputs")
    }

    fn linear(
        &mut self,
        at: &At,
        name: &str,
        x: NodeIndex,
        out: u64,
        bias: bool,
    ) -> Option<NodeIndex> {
        let inp = self.width(x);
        let w = self.param(at, &format!("{name}.weight"), &[inp, out], linear_init(inp));
        let mut ins = vec![x, w];
        if bias {
            ins.push(self.param(at, &format!("{name}.bias"), &[out], linear_init(inp)));
        }
        self.op(at, Op::Linear { bias }, &ins)
    }

    fn vectors(&mut self, at: &At, x: NodeIndex, what: &str) -> Option<()> {
        if self.is_tokens(x) {
            self.error(
                Code::Shape,
                at.span,
                format!("`{what}` expects a sequence of vectors, but gets token ids"),
                "token ids arrive here",
                "start the model with `{type: embedding, dim: ...}`",
            );
            return None;
        }
        Some(())
    }

    /// The width of `x` and the number of heads, when the heads divide the width.
    fn heads_divide(&mut self, at: &At, x: NodeIndex, heads: u32) -> Option<(u64, u64)> {
        let (d, h) = (self.width(x), u64::from(heads));
        if d % h != 0 {
            self.error(
                Code::Shape,
                at.field_span("heads"),
                format!("width {d} is not divisible by {h} heads"),
                "does not divide the width",
                "choose a number of heads that divides the width",
            );
            return None;
        }
        Some((d, h))
    }

    /// `(H, g)`: the width read as H harmonic groups of g features each.
    fn harmonic_groups(&mut self, at: &At, x: NodeIndex, harmonics: u32) -> Option<(u64, u64)> {
        let (d, h) = (self.width(x), u64::from(harmonics));
        if d % h != 0 {
            self.error(
                Code::Shape,
                at.field_span("harmonics"),
                format!("width {d} is not divisible into {h} harmonics"),
                "does not divide the width",
                "choose `harmonics` dividing the width (e.g. the `harmonics` of a `wave_encoding` before it)",
            );
            return None;
        }
        Some((h, d / h))
    }

    fn check_len(&mut self, at: &At, max_len: u64, what: &str) -> Option<()> {
        let seq = if self.encoding {
            Some(self.opts.source_len.unwrap_or(PLACEHOLDER_SOURCE))
        } else {
            self.opts.max_seq
        };
        if let Some(s) = seq.map(|s| s + self.memory) {
            if s > max_len {
                self.error(
                    Code::Shape,
                    at.field_span("max_len"),
                    format!("`{what}` handles at most {max_len} positions, but the task feeds sequences of {s}{}", if self.memory > 0 { format!(" (with {} memory tokens)", self.memory) } else { String::new() }),
                    "too short",
                    &format!("set `max_len: {s}` or more"),
                );
                return None;
            }
        }
        Some(())
    }

    fn layer(
        &mut self,
        layer: &Layer,
        node: Option<&Node>,
        x: NodeIndex,
        path: &str,
    ) -> Option<NodeIndex> {
        let at = At {
            path: path.to_string(),
            node,
            span: node.map(layer_span),
        };
        let kind = layer.type_name();
        if !matches!(
            layer,
            Layer::Embedding { .. }
                | Layer::Repeat { .. }
                | Layer::Cycle { .. }
                | Layer::Every { .. }
                | Layer::Residual { .. }
                | Layer::Parallel { .. }
                | Layer::MemoryTokens { .. }
                | Layer::Revin { .. }
                | Layer::Patch { .. }
        ) {
            self.vectors(&at, x, kind)?;
        }
        match layer {
            Layer::Embedding { dim, scale } => {
                if !self.is_tokens(x) {
                    self.error(Code::Shape, at.span, "an `embedding` reads token ids, but its input is already a sequence of vectors".into(), "second embedding", "use `linear` to change the width of vectors");
                    return None;
                }
                let table = self.param(
                    &at,
                    "weight",
                    &[self.opts.vocab, u64::from(*dim)],
                    Init::Normal(Real(1.0)),
                );
                let e = self.op(&at, Op::Embedding, &[x, table])?;
                if *scale {
                    self.op(&at, Op::Scale(Real(f64::from(*dim).sqrt())), &[e])
                } else {
                    Some(e)
                }
            }
            Layer::SinusoidalPositions {} => {
                let dim = self.width(x);
                let table = self.op(&at, Op::SinusoidalTable { dim }, &[self.positions])?;
                self.op(&at, Op::AddPositions, &[x, table])
            }
            Layer::LearnedPositions { max_len } => {
                self.check_len(&at, u64::from(*max_len), kind)?;
                if let Some(Dim::Fixed(n)) = self.g.g[x].ty.shape.get(1) {
                    if *n > u64::from(*max_len) {
                        self.error(Code::Shape, at.field_span("max_len"), format!("`{kind}` handles at most {max_len} positions, but its input has {n}"), "too short", &format!("set `max_len: {n}` or more"));
                        return None;
                    }
                }
                let table = self.param(
                    &at,
                    "weight",
                    &[u64::from(*max_len), self.width(x)],
                    Init::Normal(Real(0.02)),
                );
                self.op(&at, Op::AddPositions, &[x, table])
            }
            Layer::Attention {
                heads,
                kv_heads,
                head_dim,
                causal,
                rope,
                qk_norm,
                bias,
                dropout,
                hard,
                adaptive_temperature,
            } => {
                let w = self.width(x);
                let h = u64::from(*heads);
                if *hard && *adaptive_temperature {
                    self.error(
                        Code::Conflict,
                        at.field_span("adaptive_temperature"),
                        "`adaptive_temperature` has no effect on hard attention: a temperature cannot change an argmax".into(),
                        "conflicts with `hard: true`",
                        "remove one of `hard` and `adaptive_temperature`",
                    );
                    return None;
                }
                let kv = kv_heads.map_or(h, u64::from);
                if h % kv != 0 {
                    self.error(
                        Code::Shape,
                        at.field_span("kv_heads"),
                        format!("{h} query heads cannot be shared evenly by {kv} key/value heads"),
                        "must divide `heads`",
                        &format!("use a divisor of {h} for `kv_heads`"),
                    );
                    return None;
                }
                let hd = match head_dim {
                    Some(d) => u64::from(*d),
                    None if w.is_multiple_of(h) => w / h,
                    None => {
                        self.error(
                            Code::Shape,
                            at.field_span("heads"),
                            format!("width {w} is not divisible by {h} heads"),
                            "does not divide the width",
                            "choose `heads` dividing the width, or set `head_dim`",
                        );
                        return None;
                    }
                };
                if rope.is_some() && hd % 2 != 0 {
                    self.error(
                        Code::Shape,
                        at.field_span("rope"),
                        format!("rotary embeddings need an even head width, got {hd}"),
                        "odd head width",
                        "change `heads` or `head_dim` so that the head width is even",
                    );
                    return None;
                }
                let q = self.linear(&at, "q", x, h * hd, *bias)?;
                let k = self.linear(&at, "k", x, kv * hd, *bias)?;
                let v = self.linear(&at, "v", x, kv * hd, *bias)?;
                let mut q = self.op(&at, Op::SplitHeads { heads: h }, &[q])?;
                let mut k = self.op(&at, Op::SplitHeads { heads: kv }, &[k])?;
                let mut v = self.op(&at, Op::SplitHeads { heads: kv }, &[v])?;
                if *qk_norm {
                    q = self.op(&at, Op::L2Norm, &[q])?;
                    k = self.op(&at, Op::L2Norm, &[k])?;
                }
                if let Some(r) = rope {
                    let table = self.op(
                        &at,
                        Op::RopeTable {
                            head_dim: hd,
                            base: Real(r.base),
                            yarn: r.yarn.map(|y| {
                                (
                                    Real(y.factor),
                                    u64::from(y.original_max_len),
                                    Real(y.beta_fast),
                                    Real(y.beta_slow),
                                )
                            }),
                        },
                        &[self.positions],
                    )?;
                    q = self.op(&at, Op::ApplyRope, &[q, table])?;
                    k = self.op(&at, Op::ApplyRope, &[k, table])?;
                }
                if kv < h {
                    k = self.op(&at, Op::RepeatKv { groups: h / kv }, &[k])?;
                    v = self.op(&at, Op::RepeatKv { groups: h / kv }, &[v])?;
                }
                let mut ins = vec![q, k, v];
                let scale = if *qk_norm {
                    ins.push(self.param(&at, "qk_scale", &[1], Init::Const(Real(10.0))));
                    AttnScale::Learned
                } else {
                    AttnScale::InvSqrtDim
                };
                // Encoder attention over the source's own positions skips its padding.
                let key_bias = self.key_bias.filter(|_| self.encoding && self.memory == 0);
                ins.extend(key_bias);
                let a = self.op(
                    &at,
                    Op::Attention {
                        causal: *causal,
                        kv_groups: 1,
                        scale,
                        dropout: Real(*dropout),
                        hard: *hard,
                        adaptive: *adaptive_temperature,
                        key_mask: key_bias.is_some(),
                    },
                    &ins,
                )?;
                let m = self.op(&at, Op::MergeHeads, &[a])?;
                self.linear(&at, "out", m, w, *bias)
            }
            Layer::Layernorm { eps } => {
                let w = self.width(x);
                let g = self.param(&at, "weight", &[w], Init::Ones);
                let b = self.param(&at, "bias", &[w], Init::Zeros);
                self.op(&at, Op::LayerNorm(Real(*eps)), &[x, g, b])
            }
            Layer::Rmsnorm { eps } => {
                let w = self.width(x);
                let g = self.param(&at, "weight", &[w], Init::Ones);
                self.op(&at, Op::RmsNorm(Real(*eps)), &[x, g])
            }
            Layer::Mlp {
                hidden,
                activation,
                bias,
                dropout,
            } => {
                let w = self.width(x);
                let h = self.linear(&at, "up", x, u64::from(*hidden), *bias)?;
                let mut h = self.op(&at, Op::Act(act_of(*activation)), &[h])?;
                if *dropout > 0.0 {
                    h = self.op(&at, Op::Dropout(Real(*dropout)), &[h])?;
                }
                self.linear(&at, "down", h, w, *bias)
            }
            Layer::Swiglu { hidden, bias } => {
                let w = self.width(x);
                let a = self.linear(&at, "gate", x, u64::from(*hidden), *bias)?;
                let b = self.linear(&at, "up", x, u64::from(*hidden), *bias)?;
                let a = self.op(&at, Op::Act(Act::Silu), &[a])?;
                let h = self.op(&at, Op::Mul, &[a, b])?;
                self.linear(&at, "down", h, w, *bias)
            }
            Layer::Lstm {
                hidden,
                layers,
                dropout,
            } => {
                let h = u64::from(*hidden);
                let mut ins = vec![x];
                let mut inp = self.width(x);
                let init = Init::Uniform(Real(1.0 / (h as f64).sqrt()));
                for l in 0..*layers {
                    ins.push(self.param(&at, &format!("l{l}.w_ih"), &[inp, 4 * h], init));
                    ins.push(self.param(&at, &format!("l{l}.w_hh"), &[h, 4 * h], init));
                    ins.push(self.param(&at, &format!("l{l}.b_ih"), &[4 * h], init));
                    ins.push(self.param(&at, &format!("l{l}.b_hh"), &[4 * h], init));
                    inp = h;
                }
                self.op(
                    &at,
                    Op::Lstm {
                        layers: u64::from(*layers),
                        hidden: h,
                        dropout: Real(*dropout),
                    },
                    &ins,
                )
            }
            Layer::SpectralGate { max_len, causal } => {
                let l = u64::from(*max_len);
                self.check_len(&at, l, kind)?;
                let w = self.width(x);
                let first = self.g.g.node_count();
                let y = if *causal {
                    let n = 2 * l;
                    let kernel = self.param(&at, "kernel", &[l, w], Init::Normal(Real(0.02)));
                    let kernel = self.op(&at, Op::FreqMask { dct: true }, &[kernel])?;
                    let kp = self.op(&at, Op::PadSeq { len: n }, &[kernel])?;
                    let kf = self.op(&at, Op::Rfft { n }, &[kp])?;
                    let p = self.op(&at, Op::PadSeq { len: n }, &[x])?;
                    let xf = self.op(&at, Op::Rfft { n }, &[p])?;
                    let yf = self.op(&at, Op::ComplexMul, &[xf, kf])?;
                    let y = self.op(&at, Op::Irfft { n }, &[yf])?;
                    self.op(&at, Op::CropSeq, &[y, x])?
                } else {
                    let gate =
                        self.param(&at, "gate", &[l / 2 + 1, w, 2], Init::Normal(Real(0.02)));
                    let gate = self.op(&at, Op::FreqMask { dct: false }, &[gate])?;
                    let p = self.op(&at, Op::PadSeq { len: l }, &[x])?;
                    let xf = self.op(&at, Op::Rfft { n: l }, &[p])?;
                    let yf = self.op(&at, Op::ComplexMul, &[xf, gate])?;
                    let y = self.op(&at, Op::Irfft { n: l }, &[yf])?;
                    self.op(&at, Op::CropSeq, &[y, x])?
                };
                if *causal {
                    // A linear convolution with a kernel of l taps, padded to 2l: causal as a
                    // whole although its FFTs mix all positions.
                    let ids: Vec<NodeIndex> = self
                        .g
                        .g
                        .node_indices()
                        .filter(|n| n.index() >= first)
                        .collect();
                    for n in ids {
                        self.g.g[n].mixing = Some(Mixing::Causal);
                    }
                }
                Some(y)
            }
            Layer::WindowedSpectralGate { window, hop } => {
                let (n, h) = (u64::from(*window), u64::from(*hop));
                if h > n {
                    self.error(
                        Code::Shape,
                        at.field_span("hop"),
                        format!("a hop of {h} skips steps between frames of {n}"),
                        "longer than `window`",
                        "make `hop` at most `window` (e.g. window/2 for 50% overlap)",
                    );
                    return None;
                }
                let w = self.width(x);
                let mix = self.param(&at, "window_mix", &[3], Init::Zeros);
                let gate = self.param(&at, "gate", &[n / 2 + 1, w, 2], Init::Normal(Real(0.02)));
                self.op(&at, Op::WindowedGate { window: n, hop: h }, &[x, mix, gate])
            }
            Layer::WaveEncoding { harmonics } => {
                let h = u64::from(*harmonics);
                let y = self.linear(&at, "proj", x, 3 * h, true)?;
                self.op(&at, Op::Wave { harmonics: h }, &[y])
            }
            Layer::HarmonicSelect {
                harmonics,
                k,
                temperature,
            } => {
                let (h, k) = (self.harmonic_groups(&at, x, *harmonics)?.0, u64::from(*k));
                if k > h {
                    self.error(
                        Code::Shape,
                        at.field_span("k"),
                        format!("cannot keep {k} of {h} harmonics"),
                        "more than `harmonics`",
                        "make `k` at most `harmonics`",
                    );
                    return None;
                }
                let scores = self.linear(&at, "score", x, h, true)?;
                let op = Op::HarmonicSelect {
                    k,
                    temperature: Real(*temperature),
                };
                self.op(&at, op, &[x, scores])
            }
            Layer::PhaseAttention {
                heads,
                phases,
                mode,
                causal,
            } => {
                let (w, h) = self.heads_divide(&at, x, *heads)?;
                let p = u64::from(*phases);
                let complex = *mode == crate::spec::model::PhaseMode::Complex;
                let mut ins = Vec::new();
                for name in ["q", "k", "v"] {
                    let y = self.linear(&at, name, x, w, true)?;
                    ins.push(self.op(&at, Op::SplitHeads { heads: h }, &[y])?);
                }
                let ph = self.linear(&at, "phase", x, h * p, true)?;
                let ph = self.op(&at, Op::Act(Act::Tanh), &[ph])?;
                let ph = self.op(&at, Op::Scale(Real(std::f64::consts::PI)), &[ph])?;
                ins.push(self.op(&at, Op::SplitHeads { heads: h }, &[ph])?);
                if complex {
                    let a = self.linear(&at, "amp", x, h * p, true)?;
                    let a = self.op(&at, Op::Act(Act::Softplus), &[a])?;
                    ins.push(self.op(&at, Op::SplitHeads { heads: h }, &[a])?);
                }
                ins.push(self.param(&at, "blend", &[2], Init::Ones));
                let op = Op::PhaseAttention {
                    causal: *causal,
                    complex,
                };
                let o = self.op(&at, op, &ins)?;
                let o = self.op(&at, Op::MergeHeads, &[o])?;
                self.linear(&at, "out", o, w, true)
            }
            Layer::BandPyramid {
                harmonics,
                boundaries,
                bands,
                cross_band,
            } => {
                let (h, g) = self.harmonic_groups(&at, x, *harmonics)?;
                let mut edges = vec![0u64];
                edges.extend(boundaries.iter().map(|b| (b * h as f64).round() as u64));
                edges.push(h);
                let bad = boundaries.iter().any(|b| !(*b > 0.0 && *b < 1.0))
                    || edges.windows(2).any(|e| e[0] >= e[1]);
                if bad {
                    self.error(
                        Code::Shape,
                        at.field_span("boundaries"),
                        format!("the boundaries {boundaries:?} do not cut {h} harmonics into non-empty bands (edges {edges:?})"),
                        "empty or unordered band",
                        "give increasing fractions in (0, 1) at least 1/harmonics apart",
                    );
                    return None;
                }
                if bands.len() != edges.len() - 1 {
                    self.error(
                        Code::Shape,
                        at.field_span("bands"),
                        format!(
                            "{} boundaries make {} bands, but `bands` lists {}",
                            boundaries.len(),
                            edges.len() - 1,
                            bands.len()
                        ),
                        "one layer list per band",
                        "give one list of layers per band, low band first",
                    );
                    return None;
                }
                let nodes = node.and_then(|n| n.get("bands")).and_then(seq_items);
                let mut outs = Vec::new();
                for (i, body) in bands.iter().enumerate() {
                    let (lo, hi) = (edges[i] * g, edges[i + 1] * g);
                    let xi = self.op(
                        &at,
                        Op::SliceFeatures {
                            start: lo,
                            len: hi - lo,
                        },
                        &[x],
                    )?;
                    let bn = nodes.and_then(|n| n.get(i)).and_then(seq_items);
                    let yi = self.seq(body, bn, xi, &format!("{path}.{i}"))?;
                    if self.g.g[yi].ty != self.g.g[xi].ty {
                        let (a, b) = (self.g.g[xi].ty.to_string(), self.g.g[yi].ty.to_string());
                        self.error(
                            Code::Shape,
                            at.span,
                            format!("band {i}'s layers turn {a} into {b}; each band must keep its shape"),
                            "band_pyramid here",
                            "make each band's layers end with the width they start with",
                        );
                        return None;
                    }
                    outs.push(yi);
                }
                let n = outs.len();
                if let Some(c) = cross_band {
                    let c = u64::from(*c);
                    let mut qkv = Vec::new();
                    for part in ["q", "k", "v"] {
                        for (i, &y) in outs.iter().enumerate() {
                            qkv.push(self.linear(&at, &format!("cross.{i}.{part}"), y, c, true)?);
                        }
                    }
                    let a = self.op(&at, Op::BandAttention { bands: n as u64 }, &qkv)?;
                    for (i, y) in outs.iter_mut().enumerate() {
                        let slice = Op::SliceFeatures {
                            start: i as u64 * c,
                            len: c,
                        };
                        let ai = self.op(&at, slice, &[a])?;
                        let width = self.width(*y);
                        let back = self.linear(&at, &format!("cross.{i}.out"), ai, width, true)?;
                        *y = self.op(&at, Op::Add, &[*y, back])?;
                    }
                }
                let cat = self.op(&at, Op::ConcatFeatures { parts: n as u64 }, &outs)?;
                self.linear(&at, "fuse", cat, self.width(x), true)
            }
            Layer::Dropout { p } => {
                if *p > 0.0 {
                    self.op(&at, Op::Dropout(Real(*p)), &[x])
                } else {
                    Some(x)
                }
            }
            Layer::Linear { out, bias } => self.linear(&at, "proj", x, u64::from(*out), *bias),
            Layer::Head { bias } => self.linear(&at, "proj", x, self.opts.vocab, *bias),
            Layer::Mamba {
                d_state,
                d_conv,
                expand,
                dt_rank,
            } => {
                let d = self.width(x);
                let e = d * u64::from(*expand);
                let (n, k) = (u64::from(*d_state), u64::from(*d_conv));
                let r = dt_rank.map_or(d.div_ceil(16), u64::from);
                // Δ starts near 0.01: the bias is softplus⁻¹(0.01).
                let dt_bias = (0.01f64.exp() - 1.0).ln();
                let ins = vec![
                    x,
                    self.param(&at, "in_proj.weight", &[d, 2 * e], linear_init(d)),
                    self.param(&at, "conv.weight", &[e, k], linear_init(k)),
                    self.param(&at, "conv.bias", &[e], linear_init(k)),
                    self.param(&at, "x_proj.weight", &[e, r + 2 * n], linear_init(e)),
                    self.param(&at, "dt_proj.weight", &[r, e], linear_init(r)),
                    self.param(&at, "dt_proj.bias", &[e], Init::Const(Real(dt_bias))),
                    self.param(&at, "A_log", &[e, n], Init::LogRange),
                    self.param(&at, "D", &[e], Init::Ones),
                    self.param(&at, "out_proj.weight", &[e, d], linear_init(e)),
                ];
                self.op(
                    &at,
                    Op::Mamba {
                        d_state: n,
                        d_conv: k,
                        dt_rank: r,
                    },
                    &ins,
                )
            }
            Layer::Mlstm { heads } | Layer::Slstm { heads } | Layer::EtsAttention { heads } => {
                let (d, h) = self.heads_divide(&at, x, *heads)?;
                if let Layer::EtsAttention { .. } = layer {
                    let ins = vec![
                        x,
                        self.param(&at, "v.weight", &[d, d], linear_init(d)),
                        self.param(&at, "v.bias", &[d], linear_init(d)),
                        // α = σ(0) = 0.5 at first.
                        self.param(&at, "alpha", &[h], Init::Zeros),
                        self.param(&at, "v0", &[d], Init::Normal(Real(0.02))),
                        self.param(&at, "out.weight", &[d, d], linear_init(d)),
                    ];
                    self.op(&at, Op::Ets { heads: h }, &ins)
                } else if let Layer::Mlstm { .. } = layer {
                    let ins = vec![
                        x,
                        self.param(&at, "qkvo.weight", &[d, 4 * d], linear_init(d)),
                        self.param(&at, "qkvo.bias", &[4 * d], linear_init(d)),
                        self.param(&at, "igate.weight", &[d, h], linear_init(d)),
                        self.param(&at, "igate.bias", &[h], Init::Zeros),
                        self.param(&at, "fgate.weight", &[d, h], linear_init(d)),
                        // Forget gates start near σ(3) ≈ 0.95: a long memory.
                        self.param(&at, "fgate.bias", &[h], Init::Const(Real(3.0))),
                        self.param(&at, "out.weight", &[d, d], linear_init(d)),
                    ];
                    self.op(&at, Op::Mlstm { heads: h }, &ins)
                } else {
                    let dh = d / h;
                    let ins = vec![
                        x,
                        self.param(&at, "weight", &[d, 4 * d], linear_init(d)),
                        self.param(&at, "recurrent", &[h, dh, 4 * dh], linear_init(dh)),
                        self.param(&at, "bias", &[4 * d], Init::Zeros),
                    ];
                    self.op(&at, Op::Slstm { heads: h }, &ins)
                }
            }
            Layer::PositionLinear { max_len, out, bias } => {
                let l = u64::from(*max_len);
                self.check_len(&at, l, kind)?;
                let i = self.width(x);
                let o = out.map_or(self.opts.vocab, u64::from);
                let init = linear_init(i * l);
                let w = self.param(&at, "weight", &[l, i, l, o], init);
                let mut ins = vec![x, w];
                if *bias {
                    ins.push(self.param(&at, "bias", &[l, o], init));
                }
                self.op(
                    &at,
                    Op::PositionLinear {
                        max_len: l,
                        bias: *bias,
                    },
                    &ins,
                )
            }
            Layer::Revin { body } => {
                let Some(f) = self
                    .opts
                    .forecast
                    .filter(|_| matches!(self.g.g[x].op, Op::Series { .. }))
                else {
                    self.error(Code::Structure, at.span, "`revin` wraps a whole forecasting model: it must come first and read the series".into(), "not at the input", "make `revin` the model's first layer, on a `forecast` task");
                    return None;
                };
                let c = f.channels;
                let gamma = self.param(&at, "gamma", &[c], Init::Ones);
                let beta = self.param(&at, "beta", &[c], Init::Zeros);
                let xn = self.op(&at, Op::RevinNorm, &[x, gamma, beta])?;
                let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
                let y = self.seq(body, nodes, xn, path)?;
                self.op(&at, Op::RevinDenorm, &[y, x, gamma, beta])
            }
            Layer::Patch { len, stride } => {
                if self.opts.forecast.is_none() {
                    self.error(
                        Code::Structure,
                        at.span,
                        "`patch` cuts series into patches, and this task feeds token ids".into(),
                        "needs a series",
                        "use `patch` in a model for a `forecast` task",
                    );
                    return None;
                }
                let p = self.op(
                    &at,
                    Op::Patch {
                        len: u64::from(*len),
                        stride: u64::from(*stride),
                    },
                    &[x],
                )?;
                // Positions after patching count patches.
                self.positions = p;
                Some(p)
            }
            Layer::FourierFeatures {} => {
                let Some(Dim::Fixed(n)) = self.g.g[x].ty.shape.get(1).copied() else {
                    let t = self.g.g[x].ty.to_string();
                    self.error(Code::Shape, at.span, format!("`fourier_features` needs a sequence of fixed length, got {t}"), "length not fixed", "use it where the length is known, e.g. after `patch` in a forecasting model");
                    return None;
                };
                let f = self.op(&at, Op::Rfft { n }, &[x])?;
                self.op(&at, Op::ComplexFeatures, &[f])
            }
            Layer::ForecastHead {} => {
                let Some(f) = self.opts.forecast else {
                    self.error(
                        Code::Structure,
                        at.span,
                        "`forecast_head` needs a `forecast` task".into(),
                        "no horizon to forecast",
                        "use `head` for token tasks",
                    );
                    return None;
                };
                let n = match self.g.g[x].ty.shape.as_slice() {
                    [Dim::BatchTimes(_), Dim::Fixed(n), Dim::Fixed(d)] => n * d,
                    _ => {
                        let t = self.g.g[x].ty.to_string();
                        self.error(Code::Shape, at.span, format!("`forecast_head` reads patches [batch*channels, patches, width], got {t}"), "not patches", "put `patch` (and a `linear` to the width) before it");
                        return None;
                    }
                };
                let w = self.param(&at, "weight", &[n, f.horizon], linear_init(n));
                let b = self.param(&at, "bias", &[f.horizon], linear_init(n));
                self.op(
                    &at,
                    Op::ForecastHead {
                        channels: f.channels,
                    },
                    &[x, w, b],
                )
            }
            Layer::CrossAttention { heads } => {
                let Some(mem) = self.encoder else {
                    self.error(Code::Structure, at.span, "`cross_attention` reads an encoder's output, and the model has no `encoder`".into(), "no encoder to attend to", "add `encoder: [...]` to the model, or use `attention`");
                    return None;
                };
                let (d, h) = self.heads_divide(&at, x, *heads)?;
                let q = self.linear(&at, "q", x, d, true)?;
                let k = self.linear(&at, "k", mem, d, true)?;
                let v = self.linear(&at, "v", mem, d, true)?;
                let split = |l: &mut Self, t| l.op(&at, Op::SplitHeads { heads: h }, &[t]);
                let (q, k, v) = (split(self, q)?, split(self, k)?, split(self, v)?);
                let mut ins = vec![q, k, v];
                ins.extend(self.key_bias);
                let op = Op::CrossAttention {
                    key_mask: self.key_bias.is_some(),
                };
                let o = self.op(&at, op, &ins)?;
                let o = self.op(&at, Op::MergeHeads, &[o])?;
                self.linear(&at, "out", o, d, true)
            }
            Layer::MemoryTokens { count, body } => {
                self.vectors(&at, x, kind)?;
                let m = u64::from(*count);
                let memory =
                    self.param(&at, "memory", &[m, self.width(x)], Init::Normal(Real(0.02)));
                let xm = self.op(&at, Op::PrependMemory, &[x, memory])?;
                let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
                let saved = (self.positions, self.memory);
                (self.positions, self.memory) = (xm, self.memory + m);
                let y = self.seq(body, nodes, xm, path);
                (self.positions, self.memory) = saved;
                let y = y?;
                if self.g.g[y].ty != self.g.g[xm].ty {
                    let (a, b) = (self.g.g[xm].ty.to_string(), self.g.g[y].ty.to_string());
                    self.error(
                        Code::Shape,
                        at.span,
                        format!("the memory body turns {a} into {b}; it must keep the shape"),
                        "memory_tokens here",
                        "make the body end with the width it starts with",
                    );
                    return None;
                }
                self.op(&at, Op::DropMemory { count: m }, &[y])
            }
            Layer::Residual { body } => {
                let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
                let y = self.seq(body, nodes, x, path)?;
                if self.g.g[y].ty != self.g.g[x].ty {
                    let (a, b) = (self.g.g[x].ty.to_string(), self.g.g[y].ty.to_string());
                    self.error(Code::Shape, at.span, format!("the residual's body turns {a} into {b}; a residual needs the same shape"), "residual here", "make the body end with the width it starts with (e.g. a `linear` back to the input width)");
                    return None;
                }
                self.op(&at, Op::Add, &[x, y])
            }
            Layer::Parallel { branches } => {
                let nodes = node.and_then(|n| n.get("branches")).and_then(seq_items);
                let mut outs = Vec::new();
                for (b, branch) in branches.iter().enumerate() {
                    let bn = nodes.and_then(|n| n.get(b)).and_then(seq_items);
                    outs.push(self.seq(branch, bn, x, &format!("{path}.{b}"))?);
                }
                let ty0 = self.g.g[outs[0]].ty.clone();
                if let Some(bad) = outs.iter().position(|&o| self.g.g[o].ty != ty0) {
                    let tb = self.g.g[outs[bad]].ty.to_string();
                    self.error(Code::Shape, at.span, format!("branch 0 returns {ty0} but branch {bad} returns {tb}; parallel branches are summed"), "parallel here", "make every branch end with the same width");
                    return None;
                }
                let mut acc = outs[0];
                for &o in &outs[1..] {
                    acc = self.op(&at, Op::Add, &[acc, o])?;
                }
                Some(acc)
            }
            Layer::Repeat { times, body } => {
                let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
                let mut x = x;
                for i in 0..*times {
                    self.repeat.push(i);
                    let r = self.seq(body, nodes, x, &format!("{path}.{i}"));
                    self.repeat.pop();
                    x = r?;
                }
                Some(x)
            }
            Layer::Cycle { choices } => {
                let Some(&i) = self.repeat.last() else {
                    self.error(
                        Code::Structure,
                        at.span,
                        "`cycle` is only meaningful inside `repeat`".into(),
                        "outside any repeat",
                        "put the `cycle` in the `body` of a `repeat`, or use the layer directly",
                    );
                    return None;
                };
                let k = i as usize % choices.len();
                let cn = node
                    .and_then(|n| n.get("choices"))
                    .and_then(seq_items)
                    .and_then(|c| c.get(k));
                self.layer(&choices[k], cn, x, path)
            }
            Layer::Every { n, offset, body } => {
                if offset >= n {
                    self.error(
                        Code::Structure,
                        at.field_span("offset"),
                        format!("`offset` {offset} is never reached with period {n}"),
                        "must be less than `n`",
                        &format!("use an offset from 0 to {}", n - 1),
                    );
                    return None;
                }
                let Some(&i) = self.repeat.last() else {
                    self.error(
                        Code::Structure,
                        at.span,
                        "`every` is only meaningful inside `repeat`".into(),
                        "outside any repeat",
                        "put the `every` in the `body` of a `repeat`, or use its layers directly",
                    );
                    return None;
                };
                if i % n == *offset {
                    let nodes = node.and_then(|nd| nd.get("body")).and_then(seq_items);
                    self.seq(body, nodes, x, path)
                } else {
                    Some(x)
                }
            }
        }
    }
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
        },
    )?;
    // Training options that act on one kind of layer need the model to have one.
    let needs = [
        LayerNeed {
            asked: r.spec.train.frequency_curriculum.is_some(),
            is_layer: |op| matches!(op, Op::FreqMask { .. }),
            path: &["train", "frequency_curriculum"],
            msg: "a frequency curriculum needs a `spectral_gate` layer, and the model has none",
            label: "nothing to low-pass",
            help:
                "add a `spectral_gate` layer to the model, or remove `train.frequency_curriculum`",
        },
        LayerNeed {
            asked: r.spec.train.regularizers.harmonic_sparsity != 0.0,
            is_layer: |op| matches!(op, Op::HarmonicSelect { .. }),
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
