//! The Burn runtime against the float64 reference interpreter on the bundled models,
//! optimized against unoptimized graphs on the runtime, gradient flow, and weights round trips
//! (single spectral, wave and ensemble ops against the reference, values and gradients, and
//! spectral gates under a frequency mask: `tests/runtime_ops.rs`; helpers shared in
//! `tests/runtime_common/`).

use kiln::diag::{render_text, SourceMap};
use kiln::ir::reference::{self, Rng};
use kiln::ir::Graph;
use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};
use std::path::Path;

mod runtime_common;
use runtime_common::{assert_close, assert_every_gradient, host, lower, optimize, run_rt, tokens};

/// Bundled models at a small size (depth 2) so the naive reference stays quick.
const MODELS: &[(&str, &[&str])] = &[
    ("recipes/default.yaml", &[]),
    ("recipes/anbn-inline.yaml", &[]),
    (
        "models/transformer-postln.yaml",
        &["vars.depth=2", "vars.d_ff=32"],
    ),
    ("models/lstm.yaml", &["vars.depth=2"]),
    ("models/transformer-hard.yaml", &["vars.depth=2"]),
    ("models/transformer-adaptive.yaml", &[]),
    ("models/linear.yaml", &["vars.max_len=12"]),
    ("models/mamba.yaml", &["vars.depth=2"]),
    ("models/xlstm.yaml", &["vars.depth=2"]),
    ("models/ets.yaml", &["vars.depth=2"]),
    ("models/retnet.yaml", &["vars.depth=2"]),
    ("models/transformer-memory.yaml", &[]),
    ("models/xlstm.yaml", &["vars.depth=2", "vars.heads=1"]),
    // Small state and convolution; 12 positions make one full scan chunk of 8 and a partial one.
    (
        "models/mamba.yaml",
        &["vars.depth=1", "vars.d_conv=3", "vars.d_state=5"],
    ),
    ("models/wave.yaml", &[]),
    (
        "models/wave.yaml",
        &["vars.depth=1", "layers.4.body.0.body.1.mode=complex"],
    ),
    (
        "models/gfnet-causal.yaml",
        &["vars.depth=2", "vars.max_len=16"],
    ),
    (
        "models/gfnet-causal.yaml",
        &["vars.depth=2", "vars.max_len=100"],
    ),
    // n = 128: the fused filter takes the FFT branch, causal and circular.
    (
        "models/gfnet-causal.yaml",
        &["vars.depth=2", "vars.max_len=64"],
    ),
    (
        "models/gfnet-causal.yaml",
        &[
            "vars.depth=1",
            "vars.max_len=128",
            "layers.2.body.0.body.1.causal=false",
        ],
    ),
    // Phase attention over all positions, cosine and complex.
    (
        "models/wave.yaml",
        &["vars.depth=1", "layers.4.body.0.body.1.causal=false"],
    ),
    (
        "models/wave.yaml",
        &[
            "vars.depth=1",
            "layers.4.body.0.body.1.causal=false",
            "layers.4.body.0.body.1.mode=complex",
        ],
    ),
    // The position-wise linear map without its bias.
    (
        "models/linear.yaml",
        &["vars.max_len=12", "layers.1.bias=false"],
    ),
];

#[test]
fn runtime_matches_the_float64_reference() {
    for (file, sets) in MODELS {
        let g = lower(file, sets);
        for graph in [g.clone(), optimize(&g)] {
            let toks = tokens(1, 2, 12, 5);
            let got = run_rt(&graph, 7, &toks);
            let params = reference::init_params(&graph, 7);
            let want = reference::run(&graph, &params, &toks).unwrap();
            assert_close(&got, &want, &format!("{file} {sets:?}"));
        }
    }
}

#[test]
fn optimized_and_unoptimized_graphs_agree_in_f32() {
    for (file, sets) in MODELS {
        let g = lower(file, sets);
        let toks = tokens(2, 3, 12, 5);
        let a = run_rt(&g, 9, &toks);
        let b = run_rt(&optimize(&g), 9, &toks);
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d < 1e-5,
            "{file} {sets:?}: optimized and unoptimized differ by {d}"
        );
    }
}

#[test]
fn gradients_reach_every_parameter() {
    for (file, sets) in MODELS {
        let g = optimize(&lower(file, sets));
        let rt = Runtime::init(g, DeviceKind::Cpu.device(true), 3);
        let toks = tokens(4, 2, 12, 5);
        let logits = rt.forward(tokens_tensor(&toks, &rt.device), true);
        let weights = burn::tensor::Tensor::<3>::random(
            logits.dims(),
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &rt.device,
        );
        let grads = (logits * weights).sum().backward();
        assert_every_gradient(&rt, &grads, file);
    }
}

#[test]
fn weights_round_trip_and_reject_another_model() {
    let g = optimize(&lower("recipes/default.yaml", &[]));
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 5);
    let dir = std::env::temp_dir().join(format!("kiln-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    rt.save(&path).unwrap();
    rt.save(&path).unwrap(); // overwrites
    let loaded = Runtime::with_values(
        g,
        DeviceKind::Cpu.device(false),
        &kiln::runtime::load_weights(&path).unwrap(),
    )
    .unwrap();
    let toks = tokens(6, 1, 8, 5);
    let a = rt
        .forward(tokens_tensor(&toks, &rt.device), false)
        .into_data();
    let b = loaded
        .forward(tokens_tensor(&toks, &loaded.device), false)
        .into_data();
    assert_eq!(a, b);
    let other = optimize(&lower("models/lstm.yaml", &[]));
    let err = Runtime::with_values(
        other,
        DeviceKind::Cpu.device(false),
        &kiln::runtime::load_weights(&path).unwrap(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("belongs to another model"),
        "{err}"
    );
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(kiln::runtime::load_weights(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An ensemble graph's output is ln(mean_i softmax(member_i)): on the runtime, against the
/// float64 reference evaluating each member alone with the same weights.
#[test]
fn an_ensemble_averages_its_members_probabilities() {
    let a = optimize(&lower("models/transformer-modern.yaml", &[]));
    let b = optimize(&lower("models/lstm.yaml", &["vars.depth=1"]));
    let e = Graph::ensemble(&[a.clone(), b.clone()]).unwrap();
    let toks = tokens(6, 2, 9, 5);
    let params = reference::init_params(&e, 3);
    let member = |g: &Graph, i: usize| {
        let p = params
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&format!("member{i}."))
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        reference::run(g, &p, &toks).unwrap()
    };
    let (la, lb) = (member(&a, 0), member(&b, 1));
    let v = *la.shape.last().unwrap();
    let softmax = |r: &[f64]| {
        let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = r.iter().map(|x| (x - m).exp()).sum();
        r.iter().map(|x| (x - m).exp() / z).collect::<Vec<f64>>()
    };
    let want: Vec<f64> = la
        .data
        .chunks(v)
        .zip(lb.data.chunks(v))
        .flat_map(|(x, y)| {
            softmax(x)
                .into_iter()
                .zip(softmax(y))
                .map(|(p, q)| ((p + q) / 2.0).ln())
                .collect::<Vec<_>>()
        })
        .collect();
    let got = reference::run(&e, &params, &toks).unwrap();
    assert!(got
        .data
        .iter()
        .zip(&want)
        .all(|(x, y)| (x - y).abs() < 1e-12));
    let weights = params
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                (t.data.iter().map(|&x| x as f32).collect(), t.shape.clone()),
            )
        })
        .collect();
    let rt = Runtime::with_values(e, DeviceKind::Cpu.device(false), &weights).unwrap();
    let out = rt.forward(tokens_tensor(&toks, &rt.device), false);
    let out: Vec<f32> = out.into_data().try_to_vec::<f32>().unwrap();
    let err = out
        .iter()
        .zip(&want)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-4, "runtime vs reference: {err}");
}

/// With zero query and key weights every score is 0, so query i attends uniformly to its i + 1
/// visible keys: each layer's mean row entropy is mean_i ln(i + 1).
#[test]
fn attention_entropies_of_uniform_attention_match_a_hand_computation() {
    let g = optimize(&lower("models/transformer-modern.yaml", &[]));
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 2);
    let mut w = rt.values();
    for (name, (data, _)) in w.iter_mut() {
        if name.ends_with(".q.weight") || name.ends_with(".k.weight") {
            data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let rt = Runtime::with_values(g, DeviceKind::Cpu.device(false), &w).unwrap();
    let toks = tokens(3, 2, 12, 5);
    let (_, ents) = rt.forward_with_entropies(tokens_tensor(&toks, &rt.device), false);
    let want = (1..=12).map(|n| f64::from(n).ln()).sum::<f64>() / 12.0;
    assert_eq!(ents.len(), 2, "one per attention layer");
    for h in ents {
        let h: f32 = h.into_scalar();
        assert!((f64::from(h) - want).abs() < 1e-5, "{h} vs {want}");
    }
}

/// ETS attention agrees with its recurrence both as a dense convolution (short sequences)
/// and by FFT (100 positions, padded to 256).
#[test]
fn ets_attention_matches_its_recurrence_by_fft_too() {
    let g = optimize(&lower("models/ets.yaml", &["vars.depth=1"]));
    for seq in [12, 100] {
        let toks = tokens(3, 2, seq, 5);
        let got = run_rt(&g, 4, &toks);
        let want = reference::run(&g, &reference::init_params(&g, 4), &toks).unwrap();
        assert_close(&got, &want, &format!("seq {seq}"));
    }
}

/// An encoder-decoder model (rows: 16 source ids, then the decoder's tokens): the runtime
/// agrees with the float64 reference, optimized and not, and every parameter of the encoder
/// and the decoder gets a gradient.
#[test]
fn encoder_decoder_matches_the_reference_and_learns() {
    for pad in [None, Some(0)] {
        encoder_decoder_case(pad);
    }
}

/// Without and with the source's key-padding mask (the random sources hold PAD = 0 ids).
fn encoder_decoder_case(source_pad: Option<i64>) {
    let mut sources = SourceMap::new();
    let sets = vec!["vars.depth=1".to_string()];
    let doc = kiln::spec::load(
        Path::new("models/encoder-decoder.yaml"),
        &sets,
        &mut sources,
    )
    .unwrap();
    let kiln::spec::Document::Model(m) = doc else {
        panic!("a model")
    };
    let opts = kiln::lower::LowerOptions {
        vocab: 7,
        max_seq: Some(12),
        require_causal: false,
        source_len: None,
        forecast: None,
        source_pad,
        input_pad: None,
    };
    let g = kiln::lower::lower(&m, &opts).unwrap();
    let masks =
        g.g.node_weights()
            .filter(|n| {
                matches!(
                    n.op,
                    kiln::ir::Op::Attention(kiln::ops::attention::Attention::PadBias(_))
                )
            })
            .count();
    assert_eq!(masks, usize::from(source_pad.is_some()));
    assert_eq!(
        g.source_len(),
        Some(kiln::lower::PLACEHOLDER_SOURCE as usize)
    );
    let rows: Vec<Vec<i64>> = tokens(5, 2, 16 + 6, 5);
    assert!(
        rows.iter().all(|r| r[..16].contains(&0)),
        "sources with padding"
    );
    for graph in [g.clone(), optimize(&g)] {
        let got = run_rt(&graph, 2, &rows);
        let want = reference::run(&graph, &reference::init_params(&graph, 2), &rows).unwrap();
        assert_eq!(
            want.shape,
            vec![2, 6, 7],
            "logits for the decoder's positions only"
        );
        assert_close(&got, &want, "encoder-decoder");
    }
    let rt = Runtime::init(optimize(&g), DeviceKind::Cpu.device(true), 3);
    let logits = rt.forward(tokens_tensor(&rows, &rt.device), true);
    let grads = logits.sum().backward();
    assert_every_gradient(&rt, &grads, "encoder-decoder");
}

/// PatchTST (RevIN, channel-independent patches, flatten head) on series of 2 channels: the
/// runtime agrees with the float64 reference, optimized and not, and every parameter gets a
/// gradient.
#[test]
fn patchtst_matches_the_reference_and_learns() {
    for file in [
        "models/patchtst.yaml",
        "models/patchtst-fourier.yaml",
        "models/windowed-fft.yaml",
    ] {
        patchtst_case(file);
    }
}

fn patchtst_case(file: &str) {
    use kiln::lower::{lower, ForecastShape, LowerOptions};
    let mut sources = SourceMap::new();
    let doc = kiln::spec::load(Path::new(file), &[], &mut sources).unwrap();
    let kiln::spec::Document::Model(m) = doc else {
        panic!("a model")
    };
    let shape = ForecastShape {
        lookback: 20,
        horizon: 5,
        channels: 2,
    };
    let g = lower(
        &m,
        &LowerOptions {
            vocab: 0,
            max_seq: None,
            require_causal: false,
            source_len: None,
            forecast: Some(shape),
            source_pad: None,
            input_pad: None,
        },
    )
    .unwrap_or_else(|d| panic!("{}", render_text(&d, &sources, false)));
    let mut rng = Rng::new(3);
    let x = reference::Tensor {
        shape: vec![3, 20, 2],
        data: (0..120)
            .map(|i| (i as f64 * 0.3).sin() * 5.0 + 10.0 + rng.normal())
            .collect(),
    };
    let xt = |dev: &burn::tensor::Device| {
        burn::tensor::Tensor::<3>::from_data(
            burn::tensor::TensorData::new(
                x.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [3, 20, 2],
            ),
            dev,
        )
    };
    for graph in [g.clone(), optimize(&g)] {
        let rt = Runtime::init(graph.clone(), DeviceKind::Cpu.device(false), 5);
        let got = rt.forward_series(xt(&rt.device), false);
        assert_eq!(got.dims(), [3, 5, 2]);
        let got = got
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let want = reference::run_series(&graph, &reference::init_params(&graph, 5), &x).unwrap();
        assert_close(&got, &want, file);
    }
    let rt = Runtime::init(optimize(&g), DeviceKind::Cpu.device(true), 5);
    let out = rt.forward_series(xt(&rt.device), true);
    let grads = (out.clone() * out).sum().backward();
    assert_every_gradient(&rt, &grads, file);
}

/// Hard attention evaluated softly (`Runtime::soft_attention`, the second set of metrics of a
/// hard-attention model): the runtime against the reference of the same graph with
/// `hard: false`, which the hard evaluation does not match.
#[test]
fn hard_attention_evaluated_softly_matches_the_soft_reference() {
    let g = optimize(&lower("models/transformer-hard.yaml", &["vars.depth=2"]));
    let mut soft = g.clone();
    let mut softened = 0;
    for w in soft.g.node_weights_mut() {
        if let kiln::ir::Op::Attention(kiln::ops::attention::Attention::Attend(
            kiln::ops::attention::SelfAttention { hard, .. },
        )) = &mut w.op
        {
            softened += usize::from(*hard);
            *hard = false;
        }
    }
    assert!(softened > 0, "the model has hard attention");
    let toks = tokens(1, 2, 12, 5);
    let mut rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 7);
    rt.soft_attention = true;
    let got = host(rt.forward(tokens_tensor(&toks, &rt.device), false));
    let params = reference::init_params(&g, 7);
    let want = reference::run(&soft, &params, &toks).unwrap();
    assert_close(&got, &want, "hard attention evaluated softly");
    let hard = reference::run(&g, &params, &toks).unwrap();
    assert!(hard.max_abs_diff(&want) > 1e-3, "hard and soft differ");
}

/// The matrix products in f32 through the mixed-precision code paths (`matmul_dtype` set to
/// f32 itself, so the numbers are f32's): the plain linear map, attention built from tensor
/// ops, and the unfused LSTM, mLSTM and sLSTM recurrences, which an ordinary f32 run never
/// takes, against the float64 reference.
#[test]
fn the_mixed_precision_paths_match_the_reference_in_f32() {
    for (file, sets) in [
        ("recipes/default.yaml", &[][..]),
        ("models/lstm.yaml", &["vars.depth=2"][..]),
        ("models/xlstm.yaml", &["vars.depth=2"][..]),
        ("models/transformer-adaptive.yaml", &[][..]),
        ("models/mamba.yaml", &["vars.depth=1"][..]),
    ] {
        let g = optimize(&lower(file, sets));
        let toks = tokens(1, 2, 12, 5);
        let mut rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), 7);
        rt.matmul_dtype = Some(burn::tensor::FloatDType::F32);
        let got = rt.forward(tokens_tensor(&toks, &rt.device), false);
        let want = reference::run(&g, &reference::init_params(&g, 7), &toks).unwrap();
        assert_close(
            &host(got),
            &want,
            &format!("{file} {sets:?}, mixed-precision paths"),
        );
    }
}
