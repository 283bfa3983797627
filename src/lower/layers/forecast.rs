//! Forecasting: `revin` around the model, `patch` at the input, `forecast_head` at the end.

use crate::diag::Code;
use crate::ir::{Dim, Init, Op};
use crate::lower::{linear_init, seq_items, At, Lowerer};
use crate::ops::forecast::Forecast;
use crate::spec::Layer;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn revin(
        &mut self,
        at: At,
        x: NodeIndex,
        body: &[Layer],
    ) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
        let Some(f) = self
            .opts
            .forecast
            .filter(|_| matches!(self.g.g[x].op, Op::Series(_)))
        else {
            self.error(
                Code::Structure,
                at.span,
                "`revin` wraps a whole forecasting model: it must come first and read the series"
                    .into(),
                "not at the input",
                "make `revin` the model's first layer, on a `forecast` task",
            );
            return None;
        };
        let c = f.channels;
        let gamma = self.param(&at, "gamma", &[c], Init::Ones);
        let beta = self.param(&at, "beta", &[c], Init::Zeros);
        let xn = self.op(&at, Op::Forecast(Forecast::RevinNorm), &[x, gamma, beta])?;
        let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
        let y = self.seq(body, nodes, xn, path)?;
        self.op(
            &at,
            Op::Forecast(Forecast::RevinDenorm),
            &[y, x, gamma, beta],
        )
    }

    pub(in crate::lower) fn patch(
        &mut self,
        at: At,
        x: NodeIndex,
        len: &u32,
        stride: &u32,
    ) -> Option<NodeIndex> {
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
            Op::Forecast(Forecast::Patch {
                len: u64::from(*len),
                stride: u64::from(*stride),
            }),
            &[x],
        )?;
        // Positions after patching count patches.
        self.positions = p;
        Some(p)
    }

    pub(in crate::lower) fn forecast_head(&mut self, at: At, x: NodeIndex) -> Option<NodeIndex> {
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
                self.error(
                    Code::Shape,
                    at.span,
                    format!(
                        "`forecast_head` reads patches [batch*channels, patches, width], got {t}"
                    ),
                    "not patches",
                    "put `patch` (and a `linear` to the width) before it",
                );
                return None;
            }
        };
        let w = self.param(&at, "weight", &[n, f.horizon], linear_init(n));
        let b = self.param(&at, "bias", &[f.horizon], linear_init(n));
        self.op(
            &at,
            Op::Forecast(Forecast::Head {
                channels: f.channels,
            }),
            &[x, w, b],
        )
    }
}
