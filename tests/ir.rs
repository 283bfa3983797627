//! The graph IR: golden files before and after each pass, the verifier after every pass,
//! numerical equivalence of optimized and unoptimized graphs (float64 reference interpreter),
//! causality by perturbation, what lowering checks, and property tests over head counts and
//! shapes (the reference's own definitions against hand-computed values, and the runtime's
//! helpers against them: `tests/ir_reference.rs`; helpers shared in `tests/ir_common/`).

use kiln::diag::SourceMap;
use kiln::ir::reference::{self, Rng};
use kiln::ir::{verify::verify, FreqCutoff, Graph, Op};
use kiln::lower::{lower_document, noncausal_layers};
use kiln::ops::attention::{Attention, RepeatKv, SelfAttention};
use kiln::ops::positions::Positions;
use kiln::ops::spectral::{Spectral, SpectralFilter};
use kiln::passes::ALL;
use proptest::prelude::*;
use std::path::Path;

mod ir_common;
use ir_common::{
    load_model, lower_file, lowering_error, optimized, prefix_diff, run, tokens, vocab_of,
};

/// `(golden name, file, vocab, seq)`: the models whose IR is kept as golden files.
const GOLDEN: &[(&str, &str)] = &[
    ("default", "recipes/default.yaml"),
    ("inline-parallel", "recipes/anbn-inline.yaml"),
    ("gfnet-causal", "models/gfnet-causal.yaml"),
    ("lstm", "models/lstm.yaml"),
    ("postln", "models/transformer-postln.yaml"),
];

#[test]
fn ir_matches_golden_files_before_and_after_each_pass() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, file) in GOLDEN {
        let g = lower_file(file, &[]);
        let mut stages = vec![("lowered".to_string(), kiln::ir::print::to_text(&g))];
        for p in ALL {
            let (o, changes) = optimized(&g, &[p.name]);
            let mut text = kiln::ir::print::to_text(&o);
            for c in changes {
                text.push_str(&format!("# {}: {}\n", c.pass, c.what));
            }
            stages.push((p.name.to_string(), text));
        }
        let all: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        let (o, _) = optimized(&g, &all);
        stages.push(("all".into(), kiln::ir::print::to_text(&o)));
        for (stage, text) in stages {
            let path = format!("tests/golden/ir/{name}.{stage}.txt");
            if bless {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).unwrap_or_default() != text {
                failures.push(path);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "IR golden files differ (KILN_BLESS=1 to accept, then review the diff): {failures:?}"
    );
}

#[test]
fn passes_change_what_they_claim() {
    let g = lower_file("recipes/default.yaml", &[]);
    let count = |g: &Graph, f: fn(&Op) -> bool| g.g.node_weights().filter(|n| f(&n.op)).count();
    assert_eq!(
        count(&g, |o| matches!(o, Op::Attention(Attention::RepeatKv(_)))),
        4
    );
    let (o, _) = optimized(&g, &["gqa", "dce"]);
    assert_eq!(
        count(&o, |o| matches!(o, Op::Attention(Attention::RepeatKv(_)))),
        0,
        "the K/V repeat is gone"
    );
    assert!(o.g.node_weights().all(|n| !matches!(
        n.op,
        Op::Attention(Attention::Attend(SelfAttention { kv_groups: 1, .. }))
    )));
    // K/V memory drops by G: the repeated tensors (G x the K/V size) are no longer materialized.
    assert!(o.activation_bytes(65) < g.activation_bytes(65));

    let g = lower_file("models/gfnet-causal.yaml", &[]);
    let (o, _) = optimized(&g, &["spectral", "dce"]);
    assert_eq!(
        count(&o, |o| matches!(
            o,
            Op::Spectral(Spectral::Rfft(_) | Spectral::Irfft(_) | Spectral::ComplexMul(_))
        )),
        0
    );
    assert_eq!(
        count(&o, |o| matches!(
            o,
            Op::Spectral(Spectral::Filter(SpectralFilter { causal: true, .. }))
        )),
        4
    );

    let g = lower_file("recipes/anbn-inline.yaml", &[]);
    assert_eq!(
        count(&g, |o| matches!(
            o,
            Op::Positions(Positions::RopeTable { .. })
        )),
        2
    );
    let (o, _) = optimized(&g, &["cse"]);
    assert_eq!(
        count(&o, |o| matches!(
            o,
            Op::Positions(Positions::RopeTable { .. })
        )),
        1,
        "one RoPE table serves every layer"
    );
}

#[test]
fn optimized_and_unoptimized_graphs_compute_the_same_function() {
    let all: Vec<&str> = ALL.iter().map(|p| p.name).collect();
    let files = [
        "recipes/default.yaml",
        "recipes/anbn-inline.yaml",
        "recipes/dyck-lstm.yaml",
        "models/gfnet-causal.yaml",
        "models/transformer-postln.yaml",
    ];
    let short = ["--set", "model.vars.depth=2"];
    for file in files {
        let overrides: Vec<String> = if file.contains("postln") || file.contains("lstm") {
            vec![short[1].replace("model.", "")]
        } else {
            vec![]
        };
        let overrides = if file.starts_with("recipes") {
            overrides.iter().map(|o| format!("model.{o}")).collect()
        } else {
            overrides
        };
        let g = lower_file(file, &overrides);
        let params = reference::init_params(&g, 3);
        let mut rng = Rng::new(11);
        let toks = tokens(&mut rng, 2, 9, vocab_of(&g));
        let base = run(&g, &params, &toks);
        for p in ALL {
            let (o, _) = optimized(&g, &[p.name]);
            let d = run(&o, &params, &toks).max_abs_diff(&base);
            assert!(
                d < 1e-9,
                "{file}: pass {} changes the output by {d}",
                p.name
            );
        }
        let (o, _) = optimized(&g, &all);
        let d = run(&o, &params, &toks).max_abs_diff(&base);
        assert!(d < 1e-9, "{file}: all passes change the output by {d}");
    }
}

/// Changing token t+1 must not change outputs 0..=t of a causal model, before and after
/// optimization; a model the analysis calls non-causal does change them.
#[test]
fn causality_holds_under_perturbation() {
    let all: Vec<&str> = ALL.iter().map(|p| p.name).collect();
    for file in [
        "recipes/default.yaml",
        "recipes/anbn-inline.yaml",
        "models/gfnet-causal.yaml",
        "models/lstm.yaml",
        "models/transformer-hard.yaml",
        "models/transformer-adaptive.yaml",
        "models/linear.yaml",
        "models/mamba.yaml",
        "models/xlstm.yaml",
        "models/ets.yaml",
        "models/retnet.yaml",
        "models/transformer-memory.yaml",
        "models/wave.yaml",
    ] {
        let g = lower_file(file, &[]);
        assert!(noncausal_layers(&g).is_empty(), "{file} should be causal");
        let (o, _) = optimized(&g, &all);
        for graph in [&g, &o] {
            let params = reference::init_params(graph, 5);
            let mut rng = Rng::new(1);
            let seq = 8;
            let toks = tokens(&mut rng, 1, seq, 5);
            let base = run(graph, &params, &toks);
            for t in 0..seq - 1 {
                let mut changed = toks.clone();
                changed[0][t + 1] = (changed[0][t + 1] + 1) % 5;
                let out = run(graph, &params, &changed);
                let v = *base.shape.last().unwrap();
                let prefix = (t + 1) * v;
                let d = prefix_diff(&base, &out, prefix);
                assert!(
                    d < 1e-12,
                    "{file}: changing token {} changed an earlier output by {d}",
                    t + 1
                );
            }
        }
    }
    // The non-causal spectral gate does leak, as the analysis says.
    let g = lower_file(
        "models/gfnet-causal.yaml",
        &["layers.2.body.0.body.1.causal=false".into()],
    );
    assert!(!noncausal_layers(&g).is_empty());
    let params = reference::init_params(&g, 5);
    let toks = vec![vec![1, 2, 3, 4, 0, 1, 2, 3]];
    let base = run(&g, &params, &toks);
    let mut changed = toks.clone();
    changed[0][7] = 4;
    let out = run(&g, &params, &changed);
    assert!(base.data[..5]
        .iter()
        .zip(&out.data[..5])
        .any(|(a, b)| (a - b).abs() > 1e-9));
}

fn inline_gqa(width: u32, heads: u32, kv: u32, rope: bool, qk_norm: bool) -> String {
    format!(
        "kind: model\nvocab: 6\nlayers:\n  - {{type: embedding, dim: {width}}}\n  - {{type: attention, heads: {heads}, kv_heads: {kv}, head_dim: 2, qk_norm: {qk_norm}{}}}\n  - {{type: head}}\n",
        if rope { ", rope: {}" } else { "" }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn gqa_elimination_over_head_counts(kv in 1u32..5, groups in 1u32..5, width in 2u32..12, rope: bool, qk_norm: bool, seq in 1usize..7) {
        let heads = kv * groups;
        let text = inline_gqa(width, heads, kv, rope, qk_norm);
        let mut sources = SourceMap::new();
        let doc = kiln::spec::load::load_bytes(Path::new("p.yaml"), text.into_bytes(), &[], &mut sources).unwrap();
        let g = lower_document(&doc, None, None).unwrap();
        verify(&g).unwrap();
        let (o, changes) = optimized(&g, &["gqa", "dce"]);
        prop_assert_eq!(o.g.node_weights().filter(|n| matches!(n.op, Op::Attention(Attention::RepeatKv(RepeatKv { .. })))).count(), 0);
        prop_assert_eq!(changes.is_empty(), groups == 1);
        // The K and V the attention reads have kv heads, not `heads`.
        let attn = o.g.node_indices().find(|&n| matches!(o.g[n].op, Op::Attention(Attention::Attend(_)))).unwrap();
        let k = o.inputs(attn)[1];
        prop_assert_eq!(o.g[k].ty.shape[1], kiln::ir::Dim::Fixed(u64::from(kv)));
        // Memory: exactly the two repeated tensors (B·heads·S·2 floats each) are gone.
        let saved = g.activation_bytes(seq as u64) - o.activation_bytes(seq as u64);
        let repeated = if groups > 1 { 2 * u64::from(heads) * seq as u64 * 2 * 4 } else { 0 };
        prop_assert_eq!(saved, repeated);
        let params = reference::init_params(&g, 9);
        let toks: Vec<Vec<i64>> = vec![(0..seq as i64).map(|i| i % 6).collect(); 2];
        let d = run(&o, &params, &toks).max_abs_diff(&run(&g, &params, &toks));
        prop_assert!(d < 1e-9);
    }

    #[test]
    fn spectral_fusion_over_shapes(max_len in 2u32..20, width in 1u32..5, causal: bool, seq_frac in 0.0f64..1.0, cutoff in 0.05f64..1.0, slope in proptest::option::of(1.0f64..40.0)) {
        let text = format!("kind: model\nvocab: 5\nlayers:\n  - {{type: embedding, dim: {width}}}\n  - {{type: spectral_gate, max_len: {max_len}, causal: {causal}}}\n  - {{type: head}}\n");
        let mut sources = SourceMap::new();
        let doc = kiln::spec::load::load_bytes(Path::new("p.yaml"), text.into_bytes(), &[], &mut sources).unwrap();
        let g = lower_document(&doc, None, None).unwrap();
        let (o, changes) = optimized(&g, &["spectral", "dce"]);
        prop_assert_eq!(changes.len(), 2);
        prop_assert_eq!(o.g.node_weights().filter(|n| matches!(n.op, Op::Spectral(Spectral::Filter(_)))).count(), 1);
        let seq = 1 + ((max_len - 1) as f64 * seq_frac) as usize;
        let params = reference::init_params(&g, 4);
        let toks: Vec<Vec<i64>> = vec![(0..seq as i64).map(|i| (i * 3) % 5).collect()];
        let d = run(&o, &params, &toks).max_abs_diff(&run(&g, &params, &toks));
        prop_assert!(d < 1e-9, "difference {}", d);
        // The same under a frequency-curriculum mask.
        let mask = Some(FreqCutoff { cutoff, slope });
        let masked = |g: &Graph| reference::run_masked(g, &params, &toks, mask).unwrap();
        let d = masked(&o).max_abs_diff(&masked(&g));
        prop_assert!(d < 1e-9, "difference under the mask {}", d);
    }
}

/// Memory tokens are a prefix every position sees: changing them changes every output; the
/// position layers inside count them, so a learned table must cover them too.
#[test]
fn memory_tokens_are_seen_by_every_position() {
    let g = lower_file("models/transformer-memory.yaml", &[]);
    let mut params = reference::init_params(&g, 3);
    let toks = vec![vec![1, 2, 3, 4, 0, 1]];
    let base = run(&g, &params, &toks);
    assert_eq!(base.shape, vec![1, 6, 7], "memory outputs are dropped");
    for v in &mut params.get_mut("layers.1.memory").unwrap().data {
        *v += 0.5;
    }
    let out = run(&g, &params, &toks);
    let v = 7;
    for t in 0..6 {
        let d = (0..v)
            .map(|j| (base.data[t * v + j] - out.data[t * v + j]).abs())
            .fold(0.0, f64::max);
        assert!(d > 1e-6, "position {t} does not see the memory");
    }
    let text = "kind: model\nvocab: 5\nlayers:\n  - {type: embedding, dim: 8}\n  - type: memory_tokens\n    count: 3\n    body:\n      - {type: learned_positions, max_len: 24}\n  - {type: head}\n";
    let msg = lowering_error(text, Some(24));
    assert!(
        msg.contains("sequences of 27 (with 3 memory tokens)"),
        "{msg}"
    );
}

/// A causal gate stays causal under every frequency mask, and the mask does change it.
#[test]
fn masked_causal_gates_stay_causal() {
    let all: Vec<&str> = ALL.iter().map(|p| p.name).collect();
    let g = lower_file("models/gfnet-causal.yaml", &["vars.max_len=24".into()]);
    let (o, _) = optimized(&g, &all);
    let params = reference::init_params(&g, 5);
    let toks = vec![vec![1, 2, 3, 4, 0, 1, 2, 3]];
    for mask in [
        FreqCutoff {
            cutoff: 0.2,
            slope: None,
        },
        FreqCutoff {
            cutoff: 0.4,
            slope: Some(10.0),
        },
    ] {
        for graph in [&g, &o] {
            let base = reference::run_masked(graph, &params, &toks, Some(mask)).unwrap();
            assert!(
                base.max_abs_diff(&run(graph, &params, &toks)) > 1e-6,
                "the mask acts"
            );
            let v = *base.shape.last().unwrap();
            for t in 1..8 {
                let mut changed = toks.clone();
                changed[0][t] = (changed[0][t] + 1) % 5;
                let out = reference::run_masked(graph, &params, &changed, Some(mask)).unwrap();
                let d = prefix_diff(&base, &out, t * v);
                assert!(
                    d < 1e-12,
                    "{mask:?}: token {t} changed an earlier output by {d}"
                );
            }
        }
    }
}

/// The FLOP count of `kiln bench` against a hand count for the default model: per layer the
/// projections q, k, v, out (32·32 + 2·32·16 + 32·32) and SwiGLU (3·32·86), the head 32·V,
/// and attention 2·2·S·S·d per query head (scores and values).
#[test]
fn matmul_flops_match_a_hand_count() {
    let g = lower_file("recipes/default.yaml", &[]);
    let v = g
        .g
        .node_weights()
        .find_map(|n| match &n.op {
            Op::Param(kiln::ir::Param { name, shape, .. }) if name == "layers.3.proj.weight" => {
                Some(shape[1])
            }
            _ => None,
        })
        .unwrap();
    let (b, s) = (3u64, 10u64);
    let per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 86;
    let linear = 2 * b * s * (2 * per_layer + 32 * v);
    let attention = 2 * (4 * b * 4 * s * s * 8);
    assert_eq!(g.matmul_flops(b, s), linear + attention);
    let (o, _) = optimized(&g, &ALL.iter().map(|p| p.name).collect::<Vec<_>>());
    assert_eq!(
        o.matmul_flops(b, s),
        linear + attention,
        "passes keep the work"
    );
}

/// Spectral fusion picks the dense convolution up to n = 64 and the FFT above it (the
/// runtime's tests take both, and the FFT's fallback to dense for lengths that are not powers
/// of two).
#[test]
fn spectral_fusion_picks_dense_up_to_64_and_fft_above() {
    use kiln::ir::SpectralAlgo;
    for (max_len, causal, n, algo) in [
        (32, true, 64, SpectralAlgo::Dense),
        (64, true, 128, SpectralAlgo::Fft),
        (100, true, 200, SpectralAlgo::Fft),
        (64, false, 64, SpectralAlgo::Dense),
        (128, false, 128, SpectralAlgo::Fft),
        (100, false, 100, SpectralAlgo::Fft),
    ] {
        let text = format!("kind: model\nvocab: 5\nlayers:\n  - {{type: embedding, dim: 2}}\n  - {{type: spectral_gate, max_len: {max_len}, causal: {causal}}}\n  - {{type: head}}\n");
        let mut sources = SourceMap::new();
        let doc =
            kiln::spec::load::load_bytes(Path::new("p.yaml"), text.into_bytes(), &[], &mut sources)
                .unwrap();
        let g = lower_document(&doc, None, None).unwrap();
        let (o, _) = optimized(&g, &["spectral", "dce"]);
        let ops: Vec<Op> =
            o.g.node_weights()
                .filter(|n| matches!(n.op, Op::Spectral(Spectral::Filter(_))))
                .map(|n| n.op.clone())
                .collect();
        assert_eq!(
            ops,
            [Op::from(SpectralFilter { n, causal, algo })],
            "max_len {max_len}"
        );
    }
}

/// An encoder-decoder: its bidirectional encoder is allowed, the decoder stays causal in its
/// own positions, and every decoder position sees the whole source.
#[test]
fn encoder_decoder_decoders_are_causal_and_see_the_whole_source() {
    let g = lower_file("models/encoder-decoder.yaml", &["vars.depth=1".into()]);
    assert!(
        noncausal_layers(&g).is_empty(),
        "the encoder may see its whole source"
    );
    let params = reference::init_params(&g, 4);
    let src = 16;
    let mut row: Vec<i64> = (0..src as i64).map(|i| i % 7).collect();
    row.extend([1, 3, 4, 5, 6]);
    let base = run(&g, &params, std::slice::from_ref(&row));
    let v = 7;
    for t in 1..5 {
        let mut changed = row.clone();
        changed[src + t] = (changed[src + t] + 1) % 7;
        let out = run(&g, &params, &[changed]);
        let d = prefix_diff(&base, &out, t * v);
        assert!(
            d < 1e-12,
            "decoder token {t} changed an earlier output by {d}"
        );
    }
    let mut changed = row.clone();
    changed[src - 1] = (changed[src - 1] + 1) % 7;
    let out = run(&g, &params, &[changed]);
    assert!(
        (0..v).any(|j| (base.data[j] - out.data[j]).abs() > 1e-9),
        "position 0 sees the last source id"
    );
    // With the task's key-padding mask, the source's PAD positions are invisible: changing
    // the PAD embedding changes no output; without the mask it does.
    let m = load_model("models/encoder-decoder.yaml", &["vars.depth=1".into()]);
    for (pad, invisible) in [(Some(0), true), (None, false)] {
        let opts = kiln::lower::LowerOptions {
            vocab: 7,
            max_seq: None,
            require_causal: true,
            source_len: Some(16),
            forecast: None,
            source_pad: pad,
            input_pad: None,
        };
        let g = kiln::lower::lower(&m, &opts).unwrap();
        let mut params = reference::init_params(&g, 4);
        let base = run(&g, &params, std::slice::from_ref(&row));
        let table = params.get_mut("encoder.0.weight").unwrap();
        for v in &mut table.data[..table.shape[1]] {
            *v += 0.5;
        }
        let out = run(&g, &params, std::slice::from_ref(&row));
        let d = prefix_diff(&base, &out, base.data.len());
        assert_eq!(
            d < 1e-9,
            invisible,
            "pad {pad:?}: PAD embedding changed outputs by {d}"
        );
    }
    // cross_attention without an encoder is an error.
    let text = "kind: model\nvocab: 5\nlayers:\n  - {type: embedding, dim: 8}\n  - {type: cross_attention, heads: 2}\n  - {type: head}\n";
    let msg = lowering_error(text, None);
    assert!(msg.contains("has no `encoder`"), "{msg}");
}

/// The wave layers' shape rules: harmonic groups dividing the width, k ≤ H, one layer list
/// per band, bands that keep their width, hops within the window; and the analysis: a
/// windowed gate mixes a whole frame, a non-causal band makes the pyramid non-causal.
#[test]
fn wave_layers_check_their_shapes_and_causality() {
    let model = |layer: &str| {
        format!("kind: model\nvocab: 5\nlayers:\n  - {{type: embedding, dim: 12}}\n  - {layer}\n  - {{type: head}}\n")
    };
    for (layer, want) in [
        ("{type: harmonic_select, harmonics: 5, k: 2}", "not divisible into 5 harmonics"),
        ("{type: harmonic_select, harmonics: 4, k: 5}", "cannot keep 5 of 4 harmonics"),
        ("{type: windowed_spectral_gate, window: 4, hop: 6}", "skips steps"),
        ("{type: phase_attention, heads: 5, phases: 2}", "not divisible by 5 heads"),
        (
            "{type: band_pyramid, harmonics: 4, boundaries: [0.5], bands: [[], [], []]}",
            "1 boundaries make 2 bands, but `bands` lists 3",
        ),
        (
            "{type: band_pyramid, harmonics: 4, boundaries: [0.6, 0.5], bands: [[], [], []]}",
            "non-empty bands",
        ),
        (
            "{type: band_pyramid, harmonics: 4, boundaries: [0.5], bands: [[{type: linear, out: 3}], [{type: rmsnorm}]]}",
            "band 0's layers turn",
        ),
    ] {
        let msg = lowering_error(&model(layer), None);
        assert!(msg.contains(want), "{layer}: {msg}");
    }
    let layers = |layer: &str| {
        let mut sources = SourceMap::new();
        let doc = kiln::spec::load::load_bytes(
            Path::new("m.yaml"),
            model(layer).into_bytes(),
            &[],
            &mut sources,
        )
        .unwrap();
        noncausal_layers(&lower_document(&doc, None, None).unwrap())
    };
    assert!(!layers("{type: windowed_spectral_gate, window: 4, hop: 2}").is_empty());
    assert!(!layers("{type: phase_attention, heads: 2, phases: 2, causal: false}").is_empty());
    assert!(layers("{type: phase_attention, heads: 2, phases: 2}").is_empty());
    let pyramid = |band: &str| {
        format!("{{type: band_pyramid, harmonics: 4, boundaries: [0.5], cross_band: 4, bands: [[{band}], [{{type: rmsnorm}}]]}}")
    };
    assert!(layers(&pyramid("{type: attention, heads: 2}")).is_empty());
    assert!(!layers(&pyramid("{type: attention, heads: 2, causal: false}")).is_empty());
}
