//! The preallocated (static-shape) KV cache against the growing one: the same tokens and logits
//! for every strategy on real models (grouped-query attention with RoPE, sinusoidal and learned
//! positions, memory tokens, hard attention, phase-coherent attention, an encoder-decoder), on
//! the fused and the plain (GPU) path; one shape at every decoding step; a clear error past the
//! capacity. And the causal mask of the plain path, built once per runtime.

use kiln::decode::{generate, Generated, ModelLm, NextLogits, Settings};
use kiln::runtime::{fused, tokens_tensor, CacheFull, KvCache, Runtime};
use kiln::spec::recipe::Decode;

mod decode_common;
use decode_common::{model, model_on, perturbed, strategies};

fn tokens(g: &[Vec<Generated>]) -> Vec<Vec<Vec<i64>>> {
    g.iter()
        .map(|x| x.iter().map(|y| y.tokens.clone()).collect())
        .collect()
}

/// Decodes with the static cache and, on every call, with the growing one on the same
/// sequences, comparing all the logits and the static cache's key shapes; returns the static
/// cache's logits.
struct Pair<'a> {
    fixed: ModelLm<'a>,
    growing: ModelLm<'a>,
    what: String,
    calls: usize,
    /// Largest difference of a logit, and whether every logit was equal to the bit.
    max_diff: f32,
    bitwise: bool,
    /// The static cache's key shapes after each call.
    shapes: Vec<Vec<[usize; 4]>>,
}

impl<'a> Pair<'a> {
    fn new(rt: &'a Runtime, what: String) -> Self {
        let fixed = ModelLm::new(rt, true).static_cache(true);
        let growing = ModelLm::new(rt, true).static_cache(false);
        assert!(fixed.cached() && fixed.is_static() && !growing.is_static());
        Pair {
            fixed,
            growing,
            what,
            calls: 0,
            max_diff: 0.0,
            bitwise: true,
            shapes: Vec::new(),
        }
    }
}

impl NextLogits for Pair<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>> {
        let a = self.fixed.next_logits(seqs, parents);
        let b = self.growing.next_logits(seqs, parents);
        assert_eq!(a.len(), b.len());
        for (r, (x, y)) in a.iter().zip(&b).enumerate() {
            for (v, (p, q)) in x.iter().zip(y).enumerate() {
                let d = (p - q).abs();
                self.bitwise &= p.to_bits() == q.to_bits();
                self.max_diff = self.max_diff.max(d);
                assert!(
                    d <= 1e-5 * (1.0 + q.abs()),
                    "{}: call {}, row {r}, token {v}: static {p}, growing {q}",
                    self.what,
                    self.calls
                );
            }
        }
        self.shapes
            .push(self.fixed.cache().expect("cached").key_shapes());
        self.calls += 1;
        a
    }

    fn reserve(&mut self, len: usize) {
        self.fixed.reserve(len);
        self.growing.reserve(len);
    }
}

/// Generates with every strategy through a [`Pair`]: the same logits at every step (so the
/// same tokens), the static cache's keys one shape throughout, holding `capacity` positions.
/// Returns whether every logit was equal to the bit.
fn agree(rt: &Runtime, what: &str, prompts: &[Vec<i64>], s: &Settings, capacity: usize) -> bool {
    let mut bitwise = true;
    for d in strategies() {
        let s = Settings {
            d: Decode {
                min_new_tokens: s.d.min_new_tokens,
                max_new_tokens: s.d.max_new_tokens,
                max_length: s.d.max_length,
                ..d
            },
            ..s.clone()
        };
        let what = format!("{what} {:?}", s.d.strategy);
        let mut lm = Pair::new(rt, what.clone());
        let a = generate(&mut lm, prompts, &s);
        assert!(lm.calls >= 4, "{what}: {} calls", lm.calls);
        let first = &lm.shapes[0];
        assert!(!first.is_empty(), "{what}: no attention cache");
        for sh in first {
            assert_eq!(sh[2], capacity, "{what}: {first:?}");
        }
        for (i, sh) in lm.shapes.iter().enumerate() {
            assert_eq!(sh, first, "{what}: call {i} changed the shapes");
        }
        // The growing cache's keys are one position per token fed.
        let grown = lm.growing.cache().unwrap().key_shapes();
        assert!(grown.iter().all(|g| g[2] <= capacity), "{what}: {grown:?}");
        let b = generate(&mut ModelLm::new(rt, true).static_cache(false), prompts, &s);
        assert_eq!(tokens(&a), tokens(&b), "{what}");
        bitwise &= lm.bitwise;
        eprintln!(
            "{what}: max |Δlogit| {}, bitwise {}",
            lm.max_diff, lm.bitwise
        );
    }
    bitwise
}

fn settings(max_new: usize) -> Settings {
    Settings {
        d: Decode {
            min_new_tokens: 6,
            max_new_tokens: Some(max_new as u32),
            ..Decode::default()
        },
        eos: Some(1),
        pad: 2,
        default_max_length: 0,
        source_len: 0,
    }
}

#[test]
fn static_and_growing_caches_give_the_same_logits_and_tokens() {
    let prompts = vec![vec![0, 3, 3, 4], vec![0, 3, 4, 4], vec![0, 4, 3, 3]];
    let cases: [(&str, Vec<&str>); 6] = [
        // The modern Transformer: grouped-query attention (4 query heads, 2 KV heads), RoPE.
        ("recipes/default.yaml", vec![]),
        // Post-LN with sinusoidal positions.
        (
            "recipes/anbn-transformer-paper.yaml",
            vec!["model.vars.depth=2"],
        ),
        // Hard attention: the attention variant built from tensor ops (masked scores).
        (
            "recipes/anbn-hard-attention.yaml",
            vec!["model.vars.depth=2"],
        ),
        // Memory tokens: a prefix of every attention's keys, inside the buffers too.
        ("recipes/anbn-memory.yaml", vec!["model.vars.depth=2"]),
        // Phase-coherent attention, cosine and complex: keys, values, phases (amplitudes).
        ("recipes/anbn-wave.yaml", vec!["model.vars.depth=1"]),
        (
            "recipes/anbn-wave.yaml",
            vec![
                "model.vars.depth=1",
                "model.layers.4.body.0.body.1.mode=complex",
            ],
        ),
    ];
    let mut bitwise = Vec::new();
    for (file, sets) in cases {
        let rt = perturbed(file, &sets, 23);
        let what = format!("{file} {sets:?}");
        // 4 prompt tokens and 9 new: 12 positions fed (the last token is not).
        let memory = if file.contains("memory") { 4 } else { 0 };
        bitwise.push(agree(&rt, &what, &prompts, &settings(9), 12 + memory));
    }
    // On the CPU's fused kernels the static cache computes exactly what the growing one does:
    // the kernel stops each row at its causal limit, so the zeros after it are never read.
    assert!(
        bitwise[0],
        "the modern Transformer's logits differ in some bit"
    );
}

/// The plain Burn path (what a GPU runs): the masked positions get probability exactly 0, so
/// the static cache gives the growing cache's tokens and, to float tolerance, its logits.
#[test]
fn the_plain_path_agrees_too() {
    let prompts = vec![vec![0, 3, 3, 4], vec![0, 4, 3, 3]];
    fused::plain_on_this_thread(|| {
        for (file, sets) in [
            ("recipes/default.yaml", vec![]),
            ("recipes/anbn-wave.yaml", vec!["model.vars.depth=1"]),
        ] {
            let rt = perturbed(file, &sets, 23);
            agree(&rt, &format!("plain {file}"), &prompts, &settings(7), 10);
        }
    });
}

/// An encoder-decoder: the source is not among the positions the decoder's cache holds.
#[test]
fn an_encoder_decoder_preallocates_only_the_decoder_positions() {
    let rt = perturbed(
        "recipes/reverse-encoder-decoder.yaml",
        &["task.max_length=6", "model.vars.depth=1"],
        23,
    );
    let prompts = vec![vec![3, 4, 5, 0, 0, 0, 1], vec![7, 7, 3, 4, 5, 6, 1]];
    let s = Settings {
        source_len: 6,
        eos: Some(2),
        pad: 0,
        ..settings(5)
    };
    // BOS and 5 new tokens: 5 decoder positions fed.
    agree(&rt, "encoder-decoder", &prompts, &s, 5);
}

/// Learned positions limit the model to `max_len` positions: the capacity stops there, even
/// when the generation may reach one token more (that last token is never fed).
#[test]
fn the_capacity_stops_at_the_models_positions() {
    let rt = perturbed(
        "recipes/anbn-transformer-paper.yaml",
        &[
            "model.vars.depth=1",
            "model.layers.1.type=learned_positions",
            "model.layers.1.max_len=12",
            "task.max_length=11",
        ],
        23,
    );
    assert_eq!(rt.max_positions(), Some(12));
    let prompts = vec![vec![0, 3, 3], vec![0, 4, 4]];
    // 3 prompt tokens and 10 new: 13 tokens, 12 positions fed.
    agree(&rt, "learned positions", &prompts, &settings(10), 12);
    // Asking for fewer preallocates fewer.
    agree(&rt, "learned positions, short", &prompts, &settings(5), 7);
}

/// Without a reservation (a caller that drives `next_logits` itself), the static cache starts
/// at twice the prompt and doubles when full: still the growing cache's logits.
#[test]
fn a_static_cache_without_a_reservation_grows_by_doubling() {
    let rt = perturbed("recipes/default.yaml", &[], 23);
    let mut fixed = ModelLm::new(&rt, true).static_cache(true);
    let mut growing = ModelLm::new(&rt, true);
    assert!(!growing.is_static(), "the CPU grows its cache by default");
    let mut seqs = vec![vec![0i64, 3, 4], vec![0, 4, 3]];
    let mut capacities = Vec::new();
    for step in 0..12 {
        let a = fixed.next_logits(&seqs, (step > 0).then_some(&[0, 1][..]));
        let b = growing.next_logits(&seqs, (step > 0).then_some(&[0, 1][..]));
        assert_eq!(a, b, "step {step}");
        capacities.push(fixed.cache().unwrap().key_shapes()[0][2]);
        for (row, l) in seqs.iter_mut().zip(&a) {
            row.push(kiln::decode::argmax(l) as i64);
        }
    }
    // 3 positions, room for 6; at the 7th, a new cache of 14 (the 7 run again).
    assert_eq!(capacities, [[6; 4].as_slice(), &[14; 8]].concat());
    assert!(capacities
        .windows(2)
        .all(|w| w[1] == w[0] || w[1] >= 2 * w[0]));
}

#[test]
fn a_call_past_the_capacity_is_an_error_before_any_work() {
    let rt = model("recipes/default.yaml", &[]);
    let device = &rt.device;
    let mut cache = KvCache::with_capacity(4);
    let err = rt
        .forward_cached(tokens_tensor(&[vec![0, 3, 3, 4, 4]], device), &mut cache)
        .unwrap_err();
    assert_eq!(
        err,
        CacheFull {
            capacity: 4,
            held: 0,
            new: 5,
            needed: 5
        }
    );
    assert_eq!(cache.len, 0);
    assert!(cache.key_shapes().is_empty(), "nothing ran");
    let out = rt.forward_cached(tokens_tensor(&[vec![0, 3, 3]], device), &mut cache);
    assert_eq!(out.unwrap().dims()[1], 3);
    rt.forward_cached(tokens_tensor(&[vec![4]], device), &mut cache)
        .unwrap();
    assert_eq!(cache.key_shapes(), vec![[1, 2, 4, 8]; 2]);
    let err = rt
        .forward_cached(tokens_tensor(&[vec![4]], device), &mut cache)
        .unwrap_err();
    assert_eq!(err.needed, 5);
    assert_eq!(cache.len, 4, "the cache is unchanged");
    let msg = err.to_string();
    assert!(
        msg.contains("holds 4 positions") && msg.contains("5 are needed"),
        "{msg}"
    );
}

/// The plain path's causal mask is built once per runtime: by every attention layer of a
/// forward pass, by every later pass of the same length, shorter ones, and a whole static
/// decoding; the logits are the fused path's.
#[test]
fn the_plain_paths_causal_mask_is_built_once() {
    for (file, sets) in [
        ("recipes/default.yaml", vec![]),
        // The mLSTM's parallel form masks its decay matrix.
        ("recipes/anbn-xlstm.yaml", vec!["model.vars.depth=2"]),
    ] {
        let rt = model_on(file, &sets, true);
        let device = &rt.device;
        let batch = vec![vec![0i64, 3, 3, 4, 4, 3, 4, 3]; 2];
        let fused_logits = rt.forward(tokens_tensor(&batch, device), true);
        assert_eq!(rt.consts.masks_built(), 0, "the fused path needs no mask");
        let plain = fused::plain_on_this_thread(|| {
            let a = rt.forward(tokens_tensor(&batch, device), true);
            // A training step: the backward pass goes through the cached mask too.
            a.clone().sum().backward();
            let b = rt.forward(tokens_tensor(&batch, device), true);
            assert_eq!(a.to_data(), b.to_data());
            let short: Vec<Vec<i64>> = batch.iter().map(|r| r[..5].to_vec()).collect();
            rt.forward(tokens_tensor(&short, device), true);
            a
        });
        assert_eq!(rt.consts.masks_built(), 1, "{file}");
        plain.to_data().assert_approx_eq::<f32>(
            &fused_logits.to_data(),
            burn::tensor::Tolerance::absolute(1e-4),
        );
    }
    // A static decoding on the plain path: one mask of the cache's capacity for every step.
    let rt = model("recipes/default.yaml", &[]);
    fused::plain_on_this_thread(|| {
        let mut lm = ModelLm::new(&rt, true).static_cache(true);
        generate(&mut lm, &[vec![0, 3, 3]], &settings(8));
    });
    assert_eq!(rt.consts.masks_built(), 1);
}
