//! The Burn runtime against the float64 reference interpreter, optimized against unoptimized
//! graphs on the runtime, gradient flow, and weights round trips.

use kiln::diag::{render_text, SourceMap};
use kiln::ir::reference::{self, Rng};
use kiln::ir::Graph;
use kiln::lower::lower_document;
use kiln::passes::{self, ALL};
use kiln::runtime::{tokens_tensor, DeviceKind, Runtime};
use std::path::Path;

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

fn lower(file: &str, sets: &[&str]) -> Graph {
    let mut sources = SourceMap::new();
    let sets: Vec<String> = sets
        .iter()
        .map(|s| {
            if file.starts_with("recipes") {
                format!("model.{s}")
            } else {
                s.to_string()
            }
        })
        .collect();
    let doc = kiln::spec::load(Path::new(file), &sets, &mut sources)
        .unwrap_or_else(|e| panic!("{}", render_text(&e.diags, &sources, false)));
    lower_document(&doc, Some(7), Some(12))
        .unwrap_or_else(|d| panic!("{}", render_text(&d, &sources, false)))
}

fn optimize(g: &Graph) -> Graph {
    let mut o = g.clone();
    let all: Vec<_> = ALL.iter().collect();
    passes::optimize(&mut o, &all, true).unwrap();
    o
}

fn tokens(seed: u64, batch: usize, seq: usize, vocab: i64) -> Vec<Vec<i64>> {
    let mut rng = Rng::new(seed);
    (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| (rng.next_u64() % vocab as u64) as i64)
                .collect()
        })
        .collect()
}

fn run_rt(g: &Graph, seed: u64, toks: &[Vec<i64>]) -> Vec<f32> {
    let rt = Runtime::init(g.clone(), DeviceKind::Cpu.device(false), seed);
    let out = rt.forward(tokens_tensor(toks, &rt.device), false);
    out.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

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

/// Spectral gates under a frequency-curriculum mask: the runtime agrees with the float64
/// reference (causal kernel and circular gate, fused and not, dense and by FFT) and gradients
/// still reach them.
#[test]
fn frequency_masked_gates_match_the_reference_and_learn() {
    let masks = [
        kiln::ir::FreqCutoff {
            cutoff: 0.3,
            slope: None,
        },
        kiln::ir::FreqCutoff {
            cutoff: 0.5,
            slope: Some(12.0),
        },
    ];
    for sets in [
        &["vars.depth=2", "vars.max_len=16"][..],
        &[
            "vars.depth=2",
            "vars.max_len=16",
            "layers.2.body.0.body.1.causal=false",
        ][..],
        // n = 128: the fused filters take the FFT branch.
        &["vars.depth=1", "vars.max_len=64"][..],
        &[
            "vars.depth=1",
            "vars.max_len=128",
            "layers.2.body.0.body.1.causal=false",
        ][..],
    ] {
        let g = lower("models/gfnet-causal.yaml", sets);
        for graph in [g.clone(), optimize(&g)] {
            for mask in masks {
                let toks = tokens(1, 2, 12, 5);
                let mut rt = Runtime::init(graph.clone(), DeviceKind::Cpu.device(true), 7);
                rt.freq_mask = Some(mask);
                let out = rt.forward(tokens_tensor(&toks, &rt.device), true);
                let got = out.to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                let params = reference::init_params(&graph, 7);
                let want = reference::run_masked(&graph, &params, &toks, Some(mask)).unwrap();
                let plain = reference::run(&graph, &params, &toks).unwrap();
                assert!(want.max_abs_diff(&plain) > 1e-6, "the mask acts");
                assert_close(&got, &want, &format!("{sets:?} {mask:?}"));
                let grads = out.sum().backward();
                for (name, p) in rt.names.iter().zip(&rt.params) {
                    if name.contains("kernel") || name.contains("gate") {
                        let gv = p.grad(&grads).unwrap().to_vec();
                        assert!(
                            gv.iter().any(|v| *v != 0.0),
                            "{name}: no gradient under the mask"
                        );
                    }
                }
            }
        }
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

fn ctx<'a>(
    device: &'a burn::tensor::Device,
    train: bool,
    aux: Option<&'a std::cell::RefCell<kiln::runtime::Aux>>,
) -> kiln::runtime::ops::Ctx<'a> {
    kiln::runtime::ops::Ctx {
        device,
        train,
        batch: 0,
        seq: 0,
        offset: 0,
        kv_capacity: None,
        matmul_dtype: None,
        soft_attention: false,
        freq_mask: None,
        aux,
        consts: None,
        keys: None,
    }
}

/// Random normal values times `scale`, as a runtime tensor and, exactly the same values, as a
/// reference tensor.
fn pair<const D: usize>(
    dims: [usize; D],
    seed: u64,
    scale: f64,
    device: &burn::tensor::Device,
) -> (burn::tensor::Tensor<D>, reference::Tensor) {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (scale * rng.normal()) as f32).collect();
    let r = reference::Tensor {
        shape: dims.to_vec(),
        data: v.iter().map(|&x| f64::from(x)).collect(),
    };
    let t = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, dims), device);
    (t, r)
}

/// A runtime tensor's values.
fn host<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Checks the gradient `grad` (of a shape `shape` input) of a loss that is linear in that
/// input: its projection on each of three random directions v must equal `loss(v)`, the
/// reference's loss at v, to a relative 1e-4 of Σ|grad_i·v_i|.
fn check_projections(
    grad: &[f32],
    shape: &[usize],
    seed: u64,
    loss: impl Fn(&reference::Tensor) -> f64,
    what: &str,
) {
    let mut rng = Rng::new(seed);
    for _ in 0..3 {
        let v = reference::Tensor {
            shape: shape.to_vec(),
            data: (0..grad.len()).map(|_| rng.normal()).collect(),
        };
        let got: f64 = grad
            .iter()
            .zip(&v.data)
            .map(|(g, v)| f64::from(*g) * v)
            .sum();
        let scale: f64 = grad
            .iter()
            .zip(&v.data)
            .map(|(g, v)| (f64::from(*g) * v).abs())
            .sum();
        let want = loss(&v);
        assert!(
            scale > 0.0 && (got - want).abs() < 1e-4 * scale,
            "{what}: gradient·v = {got}, the reference's {want} (scale {scale})"
        );
    }
}

/// With the identity gate (1 + 0i at every bin) the windowed gate returns its input, for any
/// window mix, with and without overlap, and on lengths that frames do not divide. That holds
/// whatever the window is, so with a random gate the runtime is also compared with the float64
/// reference (which has its own windows and framing) under the same mixes: a wrong window,
/// mix or frame count changes the output.
#[test]
fn the_windowed_gate_reconstructs_with_an_identity_gate_and_matches_the_reference() {
    use burn::tensor::{Tensor, TensorData};
    use kiln::ir::Op;
    use kiln::ops::spectral::WindowedGate;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(false);
    for (window, hop, len) in [
        (8, 4, 13),
        (8, 3, 20),
        (6, 6, 7),
        (5, 1, 9),
        (16, 4, 3),
        (7, 2, 16),
        (4, 4, 8),
    ] {
        let (x, xr) = pair([2, len, 3], window as u64 + len as u64, 1.0, &device);
        let f = window / 2 + 1;
        let mut gate = vec![0f32; f * 3 * 2];
        for i in 0..f * 3 {
            gate[2 * i] = 1.0;
        }
        let gate = Tensor::<3>::from_data(TensorData::new(gate, [f, 3, 2]), &device);
        let (random_gate, random_gate_r) = pair([f, 3, 2], 40 + window as u64, 1.0, &device);
        let op = Op::from(WindowedGate {
            window: window as u64,
            hop: hop as u64,
        });
        for mix in [
            [0.0f32, 0.0, 0.0],
            [3.0, -1.0, -4.0],
            [-5.0, 2.0, -6.0],
            [0.5, 1.5, -1.0],
        ] {
            let mix_r = reference::Tensor {
                shape: vec![3],
                data: mix.iter().map(|&v| f64::from(v)).collect(),
            };
            let mix = Tensor::<1>::from_data(TensorData::new(mix.to_vec(), [3]), &device);
            let y = ops::eval(
                &op,
                &[&V::F3(x.clone()), &V::F1(mix.clone()), &V::F3(gate.clone())],
                &ctx(&device, false, None),
            )
            .f3();
            let d: f32 = (y - x.clone()).abs().max().into_scalar();
            // f32 rounding, divided by Σ g² where a Hann-heavy window is near 0.
            assert!(d < 1e-4, "window {window} hop {hop} len {len}: off by {d}");
            let y = ops::eval(
                &op,
                &[&V::F3(x.clone()), &V::F1(mix), &V::F3(random_gate.clone())],
                &ctx(&device, false, None),
            )
            .f3();
            let want = reference::eval_op(&op, &[&xr, &mix_r, &random_gate_r]).unwrap();
            assert!(
                want.max_abs_diff(&xr) > 0.1,
                "a random gate changes the input"
            );
            assert_close(
                &host(y),
                &want,
                &format!("window {window} hop {hop} len {len} mix {mix_r:?}"),
            );
        }
    }
}

/// The windowed gate's gradients against the float64 reference: the op is linear in the input
/// and in the gate, so the gradient's projection on a random direction is the reference's
/// output for that direction, weighted as the loss weighs the output; the three window-mix
/// logits by central differences of the reference.
#[test]
fn the_windowed_gate_gradients_match_the_reference() {
    use kiln::ir::Op;
    use kiln::ops::spectral::WindowedGate;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    for (window, hop, len) in [(8, 3, 20), (6, 6, 7), (16, 4, 3)] {
        let f = window / 2 + 1;
        let op = Op::from(WindowedGate {
            window: window as u64,
            hop: hop as u64,
        });
        let (x, xr) = pair([2, len, 3], 1, 1.0, &device);
        let (mix, mix_r) = pair([3], 2, 1.0, &device);
        let (gate, gate_r) = pair([f, 3, 2], 3, 1.0, &device);
        let (x, mix, gate) = (x.require_grad(), mix.require_grad(), gate.require_grad());
        let y = ops::eval(
            &op,
            &[&V::F3(x.clone()), &V::F1(mix.clone()), &V::F3(gate.clone())],
            &ctx(&device, false, None),
        )
        .f3();
        let (w, wr) = pair([2, len, 3], 4, 1.0, &device);
        let grads = (y * w).sum().backward();
        let loss = |x: &reference::Tensor, m: &reference::Tensor, g: &reference::Tensor| {
            let y = reference::eval_op(&op, &[x, m, g]).unwrap();
            y.data.iter().zip(&wr.data).map(|(a, b)| a * b).sum::<f64>()
        };
        let what = format!("window {window} hop {hop} len {len}");
        let gx = host(x.grad(&grads).unwrap());
        check_projections(
            &gx,
            &xr.shape,
            5,
            |v| loss(v, &mix_r, &gate_r),
            &format!("{what}: input"),
        );
        let gg = host(gate.grad(&grads).unwrap());
        check_projections(
            &gg,
            &gate_r.shape,
            6,
            |v| loss(&xr, &mix_r, v),
            &format!("{what}: gate"),
        );
        let gm = host(mix.grad(&grads).unwrap());
        for (i, got) in gm.iter().enumerate() {
            let h = 1e-5;
            let (mut up, mut down) = (mix_r.clone(), mix_r.clone());
            up.data[i] += h;
            down.data[i] -= h;
            let want = (loss(&xr, &up, &gate_r) - loss(&xr, &down, &gate_r)) / (2.0 * h);
            assert!(
                (f64::from(*got) - want).abs() < 1e-3 * want.abs().max(1.0),
                "{what}: mix logit {i}: {got} vs {want}"
            );
        }
    }
}

/// The fused spectral filter against the float64 reference on every algorithm branch: dense
/// (n ≤ 64, as spectral fusion picks it), FFT (n = 128, a power of two above 64) and the FFT's
/// fallback to the dense product for n = 100 and 200 (not powers of two), each causal (a
/// kernel of n/2 taps) and circular (a gate of n/2 + 1 bins), on sequences shorter than the
/// transform; both algorithms are run at every size. Values, and gradients of the input and of
/// the kernel or gate (projected on random directions: the filter is linear in each).
#[test]
fn the_spectral_filter_matches_the_reference_on_every_branch() {
    use kiln::ir::Op;
    use kiln::ops::spectral::{SpectralAlgo, SpectralFilter};
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    for (n, causal, s) in [
        (64, true, 29),
        (128, true, 61),
        (200, true, 37),
        (64, false, 50),
        (128, false, 100),
        (100, false, 77),
    ] {
        let (b, d) = (2, 2);
        let (x, xr) = pair([b, s, d], n as u64, 1.0, &device);
        let (w, wr) = pair([b, s, d], 7, 1.0, &device);
        // Kernels of scale 0.3 keep outputs of order 1.
        let (p, pr) = if causal {
            let (k, kr) = pair([n / 2, d], 8, 0.3, &device);
            (V::F2(k.require_grad()), kr)
        } else {
            let (g, gr) = pair([n / 2 + 1, d, 2], 9, 0.3, &device);
            (V::F3(g.require_grad()), gr)
        };
        let x = x.require_grad();
        for algo in [SpectralAlgo::Dense, SpectralAlgo::Fft] {
            let op = Op::from(SpectralFilter {
                n: n as u64,
                causal,
                algo,
            });
            let what = format!("n {n}, s {s}, causal {causal}, {algo:?}");
            let y = ops::eval(&op, &[&V::F3(x.clone()), &p], &ctx(&device, false, None)).f3();
            let want = reference::eval_op(&op, &[&xr, &pr]).unwrap();
            assert_close(&host(y.clone()), &want, &what);
            let grads = (y * w.clone()).sum().backward();
            let loss = |x: &reference::Tensor, p: &reference::Tensor| {
                let y = reference::eval_op(&op, &[x, p]).unwrap();
                y.data.iter().zip(&wr.data).map(|(a, b)| a * b).sum::<f64>()
            };
            let gx = host(x.grad(&grads).unwrap());
            check_projections(
                &gx,
                &xr.shape,
                10,
                |v| loss(v, &pr),
                &format!("{what}: input"),
            );
            let gp = p.grad(&grads).unwrap().to_vec();
            check_projections(
                &gp,
                &pr.shape,
                11,
                |v| loss(&xr, v),
                &format!("{what}: filter"),
            );
        }
    }
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

/// A forecasting ensemble's output, the mean of its members' forecasts, against the reference.
#[test]
fn the_mean_of_forecasts_matches_the_reference() {
    use kiln::ir::Op;
    use kiln::ops::ensemble::Ensemble;
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(false);
    let op = Op::Ensemble(Ensemble::MeanForecasts { members: 3 });
    let members: Vec<_> = (0..3)
        .map(|i| pair([2, 5, 3], 20 + i, 1.0, &device))
        .collect();
    let ins: Vec<V> = members.iter().map(|(t, _)| V::F3(t.clone())).collect();
    let got = ops::eval(
        &op,
        &ins.iter().collect::<Vec<_>>(),
        &ctx(&device, false, None),
    )
    .f3();
    let refs: Vec<&reference::Tensor> = members.iter().map(|(_, r)| r).collect();
    let want = reference::eval_op(&op, &refs).unwrap();
    assert_close(&host(got), &want, "mean of forecasts");
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

/// Harmonic selection keeps exactly k groups per position; in training the choice is a
/// Gumbel top-k sample (for k = 1: harmonic h with probability softmax(scores)_h), the
/// scorer gets a gradient through the relaxed top-k, and the sparsity statistic is the mass
/// of softmax(scores/τ) outside the kept harmonics.
#[test]
fn harmonic_selection_samples_gumbel_top_k_and_passes_gradients() {
    use burn::tensor::{Tensor, TensorData};
    use kiln::ir::{Op, Real};
    use kiln::runtime::{ops, V};
    let device = DeviceKind::Cpu.device(true);
    let (b, s, h, g) = (4, 500, 3, 2);
    let x = Tensor::<3>::ones([b, s, h * g], &device);
    let logits = [0.0f32, 1.0, 2.0];
    let scores = Tensor::<3>::from_data(TensorData::new(logits.repeat(b * s), [b, s, h]), &device)
        .require_grad();
    let select = |scores: &Tensor<3>, k: u64, tau: f64, ctx: &kiln::runtime::ops::Ctx| {
        let op = Op::Wave(kiln::ops::wave::Wave::Select {
            k,
            temperature: Real(tau),
        });
        ops::eval(&op, &[&V::F3(x.clone()), &V::F3(scores.clone())], ctx).f3()
    };
    let host = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    // Inference: the plain top-k, k groups each.
    for k in [1, 2, 3] {
        let y = select(&scores, k, 1.0, &ctx(&device, false, None));
        let kept = host(y.sum_dim(1));
        let want: Vec<f32> = (0..b)
            .flat_map(|_| {
                (0..h * g).map(|f| {
                    if f / g >= h - k as usize {
                        s as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        assert_eq!(kept, want, "k = {k}");
    }
    // Tied scores still keep exactly k groups.
    let tied = Tensor::<3>::zeros([b, s, h], &device);
    let kept = host(select(&tied, 2, 1.0, &ctx(&device, false, None)).sum_dim(2));
    assert!(
        kept.iter().all(|&v| v == (2 * g) as f32),
        "ties: {:?}",
        &kept[..4]
    );
    // Training, k = 1: selection frequencies follow softmax(scores).
    device.seed(7);
    let aux = std::cell::RefCell::new(kiln::runtime::Aux::default());
    let y = select(&scores, 1, 0.5, &ctx(&device, true, Some(&aux)));
    let per_pos = host(y.clone().sum_dim(2));
    assert!(
        per_pos.iter().all(|&v| (v - g as f32).abs() < 1e-5),
        "one group kept each"
    );
    let freq = host(y.clone().reshape([b * s, h, g]).narrow(2, 0, 1).mean_dim(0));
    let z: f32 = logits.iter().map(|v| v.exp()).sum();
    for (j, f) in freq.iter().enumerate() {
        let p = logits[j].exp() / z;
        // 2000 draws: σ ≤ 0.011.
        assert!(
            (f - p).abs() < 0.04,
            "harmonic {j}: chosen {f}, softmax {p}"
        );
    }
    let grads = (y * Tensor::<3>::random(
        [b, s, h * g],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    ))
    .sum()
    .backward();
    let gs = host(scores.grad(&grads).unwrap());
    assert!(gs.iter().any(|v| *v != 0.0) && gs.iter().all(|v| v.is_finite()));
    // The sparsity statistic: 1 − softmax(s/τ) of the top harmonic.
    let stat: f32 = aux.borrow().harmonic_sparsity[0].clone().into_scalar();
    let e: Vec<f32> = logits.iter().map(|v| (v / 0.5).exp()).collect();
    let want = 1.0 - e[2] / e.iter().sum::<f32>();
    assert!((stat - want).abs() < 1e-5, "{stat} vs {want}");
}

/// Relative error under 1e-4 (largest absolute difference over the largest magnitude, at
/// least 1) between the runtime's `got` and the float64 reference's `want`.
fn assert_close(got: &[f32], want: &reference::Tensor, what: &str) {
    let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert_eq!(got.len(), want.data.len(), "{what}: sizes differ");
    assert!(
        err / scale < 1e-4,
        "{what}: relative error {} against the reference",
        err / scale
    );
}

/// Every parameter of `rt` has a gradient in `grads` that is finite and not all zero.
fn assert_every_gradient(rt: &Runtime, grads: &burn::tensor::Gradients, what: &str) {
    for (name, p) in rt.names.iter().zip(&rt.params) {
        let gv = p
            .grad(grads)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"))
            .to_vec();
        assert!(
            gv.iter().any(|v| *v != 0.0),
            "{what}: gradient of {name} is zero"
        );
        assert!(
            gv.iter().all(|v| v.is_finite()),
            "{what}: gradient of {name} is not finite"
        );
    }
}
