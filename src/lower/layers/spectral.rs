//! Spectral layers: `spectral_gate`, `windowed_spectral_gate`, `fourier_features`, and
//! `band_pyramid`.

use crate::diag::Code;
use crate::ir::{Dim, Init, Mixing, Op, Real};
use crate::lower::{seq_items, At, Lowerer};
use crate::ops::elementwise::Elementwise;
use crate::ops::sequence::Sequence;
use crate::spec::Layer;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn spectral_gate(
        &mut self,
        at: At,
        x: NodeIndex,
        kind: &str,
        max_len: &u32,
        causal: &bool,
    ) -> Option<NodeIndex> {
        let l = u64::from(*max_len);
        self.check_len(&at, l, kind)?;
        let w = self.width(x);
        let first = self.g.g.node_count();
        let y = if *causal {
            let n = 2 * l;
            let kernel = self.param(&at, "kernel", &[l, w], Init::Normal(Real(0.02)));
            let kernel = self.op(&at, Op::FreqMask { dct: true }, &[kernel])?;
            let kp = self.op(&at, Op::Sequence(Sequence::Pad { len: n }), &[kernel])?;
            let kf = self.op(&at, Op::Rfft { n }, &[kp])?;
            let p = self.op(&at, Op::Sequence(Sequence::Pad { len: n }), &[x])?;
            let xf = self.op(&at, Op::Rfft { n }, &[p])?;
            let yf = self.op(&at, Op::ComplexMul, &[xf, kf])?;
            let y = self.op(&at, Op::Irfft { n }, &[yf])?;
            self.op(&at, Op::Sequence(Sequence::Crop), &[y, x])?
        } else {
            let gate = self.param(&at, "gate", &[l / 2 + 1, w, 2], Init::Normal(Real(0.02)));
            let gate = self.op(&at, Op::FreqMask { dct: false }, &[gate])?;
            let p = self.op(&at, Op::Sequence(Sequence::Pad { len: l }), &[x])?;
            let xf = self.op(&at, Op::Rfft { n: l }, &[p])?;
            let yf = self.op(&at, Op::ComplexMul, &[xf, gate])?;
            let y = self.op(&at, Op::Irfft { n: l }, &[yf])?;
            self.op(&at, Op::Sequence(Sequence::Crop), &[y, x])?
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

    pub(in crate::lower) fn windowed_spectral_gate(
        &mut self,
        at: At,
        x: NodeIndex,
        window: &u32,
        hop: &u32,
    ) -> Option<NodeIndex> {
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

    pub(in crate::lower) fn band_pyramid(
        &mut self,
        at: At,
        x: NodeIndex,
        harmonics: &u32,
        boundaries: &[f64],
        bands: &[Vec<Layer>],
        cross_band: &Option<u32>,
    ) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
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
                Op::Sequence(Sequence::SliceFeatures {
                    start: lo,
                    len: hi - lo,
                }),
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
                let slice = Op::Sequence(Sequence::SliceFeatures {
                    start: i as u64 * c,
                    len: c,
                });
                let ai = self.op(&at, slice, &[a])?;
                let width = self.width(*y);
                let back = self.linear(&at, &format!("cross.{i}.out"), ai, width, true)?;
                *y = self.op(&at, Op::Elementwise(Elementwise::Add), &[*y, back])?;
            }
        }
        let cat = self.op(
            &at,
            Op::Sequence(Sequence::ConcatFeatures { parts: n as u64 }),
            &outs,
        )?;
        self.linear(&at, "fuse", cat, self.width(x), true)
    }

    pub(in crate::lower) fn fourier_features(&mut self, at: At, x: NodeIndex) -> Option<NodeIndex> {
        let Some(Dim::Fixed(n)) = self.g.g[x].ty.shape.get(1).copied() else {
            let t = self.g.g[x].ty.to_string();
            self.error(
                Code::Shape,
                at.span,
                format!("`fourier_features` needs a sequence of fixed length, got {t}"),
                "length not fixed",
                "use it where the length is known, e.g. after `patch` in a forecasting model",
            );
            return None;
        };
        let f = self.op(&at, Op::Rfft { n }, &[x])?;
        self.op(&at, Op::ComplexFeatures, &[f])
    }
}
