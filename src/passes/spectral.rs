//! Spectral fusion.
//!
//! `crop(irfft(rfft(pad(x)) · G))` — a global (circular) filter with a learned complex gate G —
//! and its causal form, where G = rfft(pad(kernel)) of a kernel of n/2 taps and everything is
//! padded to n, become one `spectral_filter` op. It computes the same function without the
//! intermediate tensors, and picks its algorithm by size: FFT for long sequences, a dense
//! convolution matrix for short ones (`DENSE_MAX`).

use crate::ir::{Graph, Op, SpectralAlgo};
use crate::ops::sequence::Sequence;
use petgraph::stable_graph::NodeIndex;

/// Largest transform length computed as a dense matrix product.
pub const DENSE_MAX: u64 = 64;

pub fn run(g: &mut Graph) -> Vec<String> {
    let mut changes = Vec::new();
    let crops: Vec<_> =
        g.g.node_indices()
            .filter(|&n| g.g[n].op == Op::Sequence(Sequence::Crop))
            .collect();
    for c in crops {
        if g.users(c).is_empty() {
            continue;
        }
        let Some((x, param, n, causal)) = matches(g, c) else {
            continue;
        };
        let algo = if n <= DENSE_MAX {
            SpectralAlgo::Dense
        } else {
            SpectralAlgo::Fft
        };
        let node = &g.g[c];
        let (layer, span) = (node.layer.clone(), node.span);
        let fused = g
            .add(
                Op::SpectralFilter { n, causal, algo },
                &[x, param],
                &layer,
                span,
            )
            .expect("a matched pattern has the filter's shapes");
        g.replace_uses(c, fused);
        // The crop is now dead; remove it so the pattern cannot match again (dce removes the
        // rest of the old chain).
        g.g.remove_node(c);
        changes.push(format!(
            "{layer}: rfft → gate → irfft fused into spectral_filter (n={n}, {}, {})",
            if causal { "causal" } else { "circular" },
            match algo {
                SpectralAlgo::Dense => "dense",
                SpectralAlgo::Fft => "fft",
            }
        ));
    }
    changes
}

fn single_use(g: &Graph, n: NodeIndex) -> bool {
    g.users(n).len() == 1
}

/// `crop(irfft_n(complex_mul(rfft_n(pad_n(x)), gate)), x)` → `(x, param, n, causal)`.
fn matches(g: &Graph, crop: NodeIndex) -> Option<(NodeIndex, NodeIndex, u64, bool)> {
    let ins = g.inputs(crop);
    let (y, x) = (ins[0], ins[1]);
    let Op::Irfft { n } = g.g[y].op else {
        return None;
    };
    let cm = g.inputs(y)[0];
    if g.g[cm].op != Op::ComplexMul || !single_use(g, y) || !single_use(g, cm) {
        return None;
    }
    let cm_ins = g.inputs(cm);
    let (xf, gate) = (cm_ins[0], cm_ins[1]);
    if g.g[xf].op != (Op::Rfft { n }) || !single_use(g, xf) {
        return None;
    }
    let pad = g.inputs(xf)[0];
    if g.g[pad].op != (Op::Sequence(Sequence::Pad { len: n })) || g.inputs(pad)[0] != x {
        return None;
    }
    // The gate or kernel: a parameter, possibly behind its frequency-curriculum mask.
    let param = |p: NodeIndex| match &g.g[p].op {
        Op::FreqMask { .. } => g.inputs(p)[0],
        _ => p,
    };
    if matches!(g.g[param(gate)].op, Op::Param { .. }) {
        return Some((x, gate, n, false));
    }
    match &g.g[gate].op {
        Op::Rfft { n: m } if *m == n => {
            let kpad = g.inputs(gate)[0];
            if g.g[kpad].op != (Op::Sequence(Sequence::Pad { len: n })) {
                return None;
            }
            let kernel = g.inputs(kpad)[0];
            let is_kernel = matches!(&g.g[param(kernel)].op, Op::Param { shape, .. } if shape.first() == Some(&(n / 2)));
            is_kernel.then_some((x, kernel, n, true))
        }
        _ => None,
    }
}
