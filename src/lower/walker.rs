//! The walk over layer lists, the helpers every layer uses, and the blocks that compose
//! layers (`residual`, `parallel`, `repeat`, `cycle`, `every`). `Lowerer::layer` dispatches
//! each layer to its family's file under `layers/`.

use crate::diag::{Code, Diagnostic, Span};
use crate::ir::{DType, Dim, Init, Op};
use crate::lower::{layer_span, linear_init, seq_items, At, Lowerer, PLACEHOLDER_SOURCE};
use crate::ops::elementwise::Elementwise;
use crate::spec::yaml::Node;
use crate::spec::Layer;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    /// Lower a list of layers. A layer that fails is skipped (its input flows on) so the
    /// layers after it are still checked, unless its input was still token ids (everything
    /// after would fail for the same reason).
    pub(super) fn seq(
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

    pub(super) fn width(&self, x: NodeIndex) -> u64 {
        match self.g.g[x].ty.shape.last() {
            Some(Dim::Fixed(w)) => *w,
            _ => 0,
        }
    }

    pub(super) fn is_tokens(&self, x: NodeIndex) -> bool {
        self.g.g[x].ty.dtype == DType::I64
    }

    pub(super) fn error(
        &mut self,
        code: Code,
        span: Option<Span>,
        msg: String,
        label: &str,
        help: &str,
    ) {
        self.diags
            .push(Diagnostic::error(code, span, msg).label(label).help(help));
    }

    pub(super) fn op(&mut self, at: &At, op: Op, inputs: &[NodeIndex]) -> Option<NodeIndex> {
        let name = op.name();
        match self.g.add(op, inputs, &at.path, at.span) {
            Ok(n) => Some(n),
            Err(e) => {
                let help = e.help();
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

    pub(super) fn param(&mut self, at: &At, name: &str, shape: &[u64], init: Init) -> NodeIndex {
        let op = Op::Param(crate::ir::Param {
            name: format!("{}.{name}", at.path),
            shape: shape.to_vec(),
            init,
        });
        self.g
            .add(op, &[], &at.path, at.span)
            .expect("params have no inputs")
    }

    pub(super) fn linear(
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
        self.op(at, Op::Linear(crate::ops::linear::Linear { bias }), &ins)
    }

    pub(super) fn vectors(&mut self, at: &At, x: NodeIndex, what: &str) -> Option<()> {
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
    pub(super) fn heads_divide(&mut self, at: &At, x: NodeIndex, heads: u32) -> Option<(u64, u64)> {
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
    pub(super) fn harmonic_groups(
        &mut self,
        at: &At,
        x: NodeIndex,
        harmonics: u32,
    ) -> Option<(u64, u64)> {
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

    pub(super) fn check_len(&mut self, at: &At, max_len: u64, what: &str) -> Option<()> {
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
            Layer::Embedding { dim, scale } => self.embedding(at, x, dim, scale),
            Layer::SinusoidalPositions {} => self.sinusoidal_positions(at, x),
            Layer::LearnedPositions { max_len } => self.learned_positions(at, x, kind, max_len),
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
            } => self.attention(
                at,
                x,
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
            ),
            Layer::Layernorm { eps } => self.layernorm(at, x, eps),
            Layer::Rmsnorm { eps } => self.rmsnorm(at, x, eps),
            Layer::Mlp {
                hidden,
                activation,
                bias,
                dropout,
            } => self.mlp(at, x, hidden, activation, bias, dropout),
            Layer::Swiglu { hidden, bias } => self.swiglu(at, x, hidden, bias),
            Layer::Lstm {
                hidden,
                layers,
                dropout,
            } => self.lstm(at, x, hidden, layers, dropout),
            Layer::SpectralGate { max_len, causal } => {
                self.spectral_gate(at, x, kind, max_len, causal)
            }
            Layer::WindowedSpectralGate { window, hop } => {
                self.windowed_spectral_gate(at, x, window, hop)
            }
            Layer::WaveEncoding { harmonics } => self.wave_encoding(at, x, harmonics),
            Layer::HarmonicSelect {
                harmonics,
                k,
                temperature,
            } => self.harmonic_select(at, x, harmonics, k, temperature),
            Layer::PhaseAttention {
                heads,
                phases,
                mode,
                causal,
            } => self.phase_attention(at, x, heads, phases, mode, causal),
            Layer::BandPyramid {
                harmonics,
                boundaries,
                bands,
                cross_band,
            } => self.band_pyramid(at, x, harmonics, boundaries, bands, cross_band),
            Layer::Dropout { p } => self.dropout(at, x, p),
            Layer::Linear { out, bias } => self.linear_layer(at, x, out, bias),
            Layer::Head { bias } => self.head(at, x, bias),
            Layer::Mamba {
                d_state,
                d_conv,
                expand,
                dt_rank,
            } => self.mamba(at, x, d_state, d_conv, expand, dt_rank),
            Layer::Mlstm { heads } | Layer::Slstm { heads } | Layer::EtsAttention { heads } => {
                self.xlstm_or_ets(at, x, layer, heads)
            }
            Layer::PositionLinear { max_len, out, bias } => {
                self.position_linear(at, x, kind, max_len, out, bias)
            }
            Layer::Revin { body } => self.revin(at, x, body),
            Layer::Patch { len, stride } => self.patch(at, x, len, stride),
            Layer::FourierFeatures {} => self.fourier_features(at, x),
            Layer::ForecastHead {} => self.forecast_head(at, x),
            Layer::CrossAttention { heads } => self.cross_attention(at, x, heads),
            Layer::Retention { heads } => self.retention(at, x, heads),
            Layer::MemoryTokens { count, body } => self.memory_tokens(at, x, kind, count, body),
            Layer::Residual { body } => self.residual(at, x, body),
            Layer::Parallel { branches } => self.parallel(at, x, branches),
            Layer::Repeat { times, body } => self.repeat_layer(at, x, times, body),
            Layer::Cycle { choices } => self.cycle(at, x, choices),
            Layer::Every { n, offset, body } => self.every(at, x, n, offset, body),
        }
    }

    fn residual(&mut self, at: At, x: NodeIndex, body: &[Layer]) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
        let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
        let y = self.seq(body, nodes, x, path)?;
        if self.g.g[y].ty != self.g.g[x].ty {
            let (a, b) = (self.g.g[x].ty.to_string(), self.g.g[y].ty.to_string());
            self.error(Code::Shape, at.span, format!("the residual's body turns {a} into {b}; a residual needs the same shape"), "residual here", "make the body end with the width it starts with (e.g. a `linear` back to the input width)");
            return None;
        }
        self.op(&at, Op::Elementwise(Elementwise::Add), &[x, y])
    }

    fn parallel(&mut self, at: At, x: NodeIndex, branches: &[Vec<Layer>]) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
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
            acc = self.op(&at, Op::Elementwise(Elementwise::Add), &[acc, o])?;
        }
        Some(acc)
    }

    fn repeat_layer(
        &mut self,
        at: At,
        x: NodeIndex,
        times: &u32,
        body: &[Layer],
    ) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
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

    fn cycle(&mut self, at: At, x: NodeIndex, choices: &[Layer]) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
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

    fn every(
        &mut self,
        at: At,
        x: NodeIndex,
        n: &u32,
        offset: &u32,
        body: &[Layer],
    ) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
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
