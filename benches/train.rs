//! Training speed of a kiln-compiled model against the same model written by hand in plain Burn.
//!
//! `cargo bench --bench train` compiles the bundled default recipe (`recipes/default.yaml`:
//! the modern Transformer of `models/transformer-modern.yaml`, i.e. embedding, depth × [pre-
//! RMSNorm residual grouped-query attention with RoPE, no biases; pre-RMSNorm residual SwiGLU],
//! final RMSNorm, linear head with bias) at two sizes, and writes the same network by hand with
//! `#[derive(Module)]` structs, `burn::nn` layers and Burn's own AdamW. Both start from the same
//! weights (kiln's initial values, copied by IR name into the hand-written model; the bench
//! asserts that the logits agree) and train on the same random token batches, on the same
//! device (Burn `flex` CPU with autodiff). Timed steps of the two alternate (ABBA) so that drift
//! of the machine hits both alike. It prints steps/s, tokens/s and the ratio kiln/hand-written.
//!
//! Both sides run AdamW (same lr, betas, eps, weight decay on every parameter: the recipe sets
//! `decay_all`, as Burn's AdamW decays everything) at a constant learning rate and without
//! gradient clipping (Burn's clipping is per tensor, kiln's global; the recipe turns it off).
//!
//! `KILN_BENCH_STEPS=N` sets the number of timed steps per side of the large model (default 24);
//! `KILN_BENCH_PROFILE=N` also times forward, backward and optimizer step of each side over N
//! more steps and prints their medians.

use burn::module::Param;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use kiln::runtime::{tokens_tensor, DeviceKind, Weights};
use kiln::spec::model::VarValue;
use kiln::spec::recipe::{Optimizer, Schedule};
use kiln::spec::LoadedRecipe;
use kiln::train::{Batch, Trainer};
use std::path::Path;
use std::time::Instant;

/// One benchmark row: overrides of `recipes/default.yaml`.
struct Case {
    name: &'static str,
    sets: Vec<String>,
    warmup: usize,
    steps: usize,
}

/// Options shared by every case: constant lr, no clipping, decay on every parameter.
const COMMON: &[&str] = &[
    "train.schedule={type: constant}",
    "train.clip_grad_norm=null",
    "train.optimizer={type: adamw, lr: 3.0e-3, weight_decay: 0.01, decay_all: true}",
    "train.batch_size=32",
];

fn cases() -> Vec<Case> {
    let steps: usize = std::env::var("KILN_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let with = |extra: &[&str]| -> Vec<String> {
        COMMON.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    vec![
        Case {
            name: "default (d32, 2 layers, seq 65)",
            sets: with(&[]),
            warmup: 10,
            steps: 120,
        },
        Case {
            name: "d128, 4 layers, 4/2 heads, ff 344, seq 128",
            sets: with(&[
                "model.vars.d_model=128",
                "model.vars.depth=4",
                "model.vars.heads=4",
                "model.vars.kv_heads=2",
                "model.vars.d_ff=344",
                "task.max_length=127",
            ]),
            warmup: 3,
            steps,
        },
    ]
}

fn load(sets: &[String]) -> (LoadedRecipe, kiln::ir::Graph) {
    kiln::compile::recipe(Path::new("recipes/default.yaml"), sets, false)
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// The hand-written model.

/// Pre-norm block: grouped-query attention with RoPE, then SwiGLU; no biases.
#[derive(Module, Debug)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ff_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
    kv_heads: usize,
}

/// Rotary tables `[1, 1, seq, head_dim / 2]`, computed once.
struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    fn new(seq: usize, head_dim: usize, base: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for pos in 0..seq {
            for i in 0..half {
                let theta = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
                c.push(theta.cos() as f32);
                s.push(theta.sin() as f32);
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, seq, half]), device);
        Rope {
            cos: t(c),
            sin: t(s),
        }
    }

    /// Rotate-half RoPE of `[b, h, s, d]`: (x1, x2) → (x1·cos − x2·sin, x1·sin + x2·cos).
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.narrow(3, d / 2, d / 2);
        Tensor::cat(
            vec![
                x1.clone() * self.cos.clone() - x2.clone() * self.sin.clone(),
                x1 * self.sin.clone() + x2 * self.cos.clone(),
            ],
            3,
        )
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>, rope: &Rope) -> Tensor<3> {
        let [b, s, w] = x.dims();
        let (h, kv) = (self.heads, self.kv_heads);
        let (hd, g) = (w / h, h / kv);
        let a = self.attn_norm.forward(x.clone());
        let split = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = rope.apply(split(self.q.forward(a.clone()), h));
        let k = rope.apply(split(self.k.forward(a.clone()), kv));
        let v = split(self.v.forward(a), kv);
        // The g query heads of a key/value head attend as g·s rows of one matmul.
        let q = q.reshape([b, kv, g * s, hd]);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt());
        let mask = Tensor::<2, Bool>::tril_mask([s, s], 0, &x.device())
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, g)
            .reshape([1, 1, g * s, s]);
        let scores = scores.mask_fill(mask.expand([b, kv, g * s, s]), f32::NEG_INFINITY);
        let o = softmax(scores, 3)
            .matmul(v)
            .reshape([b, h, s, hd])
            .swap_dims(1, 2)
            .reshape([b, s, w]);
        let x = x + self.out.forward(o);
        let f = self.ff_norm.forward(x.clone());
        let f = silu(self.gate.forward(f.clone())) * self.up.forward(f);
        x + self.down.forward(f)
    }
}

#[derive(Module, Debug)]
struct Lm {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
}

impl Lm {
    fn forward(&self, tokens: Tensor<2, Int>, rope: &Rope) -> Tensor<3> {
        let mut x = self.embed.forward(tokens);
        for b in &self.blocks {
            x = b.forward(x, rope);
        }
        self.head.forward(self.norm.forward(x))
    }

    /// The model with kiln's parameter values, taken by IR name; every value must be used.
    fn from_kiln(mut w: Weights, heads: usize, kv_heads: usize, device: &Device) -> Self {
        let depth = (0..)
            .take_while(|i| w.contains_key(&format!("layers.1.{i}.0.0.weight")))
            .count();
        let mut take = |name: &str| -> (Vec<f32>, Vec<usize>) {
            w.remove(name)
                .unwrap_or_else(|| panic!("kiln has no parameter `{name}`"))
        };
        let p1 = |(d, s): (Vec<f32>, Vec<usize>)| -> Param<Tensor<1>> {
            Param::from_tensor(Tensor::from_data(TensorData::new(d, s), device))
        };
        let p2 = |(d, s): (Vec<f32>, Vec<usize>)| -> Param<Tensor<2>> {
            Param::from_tensor(Tensor::from_data(TensorData::new(d, s), device))
        };
        let norm = |p| RmsNorm {
            gamma: p1(p),
            epsilon: 1e-6,
        };
        let lin = |p| Linear {
            weight: p2(p),
            bias: None,
        };
        let embed = Embedding {
            weight: p2(take("layers.0.weight")),
        };
        let mut blocks = Vec::new();
        for i in 0..depth {
            let a = format!("layers.1.{i}.0");
            let f = format!("layers.1.{i}.1");
            blocks.push(Block {
                attn_norm: norm(take(&format!("{a}.0.weight"))),
                q: lin(take(&format!("{a}.1.q.weight"))),
                k: lin(take(&format!("{a}.1.k.weight"))),
                v: lin(take(&format!("{a}.1.v.weight"))),
                out: lin(take(&format!("{a}.1.out.weight"))),
                ff_norm: norm(take(&format!("{f}.0.weight"))),
                gate: lin(take(&format!("{f}.1.gate.weight"))),
                up: lin(take(&format!("{f}.1.up.weight"))),
                down: lin(take(&format!("{f}.1.down.weight"))),
                heads,
                kv_heads,
            });
        }
        let final_norm = norm(take("layers.2.weight"));
        let head = Linear {
            weight: p2(take("layers.3.proj.weight")),
            bias: Some(p1(take("layers.3.proj.bias"))),
        };
        assert!(w.is_empty(), "unused kiln parameters: {:?}", w.keys());
        Lm {
            embed,
            blocks,
            norm: final_norm,
            head,
        }
    }
}

/// The hand-written training loop's state: model, Burn's AdamW, loss.
struct Hand {
    /// Always `Some` between steps (the optimizer takes the model by value).
    model: Option<Lm>,
    optim: burn::optim::ModuleOptimizer,
    ce: CrossEntropyLoss,
    rope: Rope,
    lr: f64,
}

impl Hand {
    fn model(&self) -> &Lm {
        self.model.as_ref().expect("model")
    }

    /// Forward and loss; the loss value is read, as a training loop that logs it does.
    fn loss(&self, batch: &[Vec<i64>], device: &Device) -> (Tensor<1>, f64) {
        let (x, y) = split_xy(batch, device);
        let logits = self.model().forward(x, &self.rope);
        let [b, s, v] = logits.dims();
        let loss = self
            .ce
            .forward(logits.reshape([b * s, v]), y.reshape([b * s]));
        let value: f32 = loss.clone().into_scalar();
        (loss, f64::from(value))
    }

    /// AdamW on the gradients of `loss`.
    fn update(&mut self, grads: GradientsParams) {
        let model = self.model.take().expect("model");
        self.model = Some(self.optim.step(self.lr, model, grads));
    }

    /// One training step; returns the loss.
    fn step(&mut self, batch: &[Vec<i64>], device: &Device) -> f64 {
        let (loss, value) = self.loss(batch, device);
        let grads = GradientsParams::from_grads(loss.backward(), self.model());
        self.update(grads);
        value
    }
}

// ---------------------------------------------------------------------------------------------
// Data and timing.

/// Random token batches (splitmix64), each sequence L+1 ids.
fn batches(n: usize, batch: usize, len: usize, vocab: u64, seed: u64) -> Vec<Vec<Vec<i64>>> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| {
            (0..batch)
                .map(|_| (0..len).map(|_| (next() % vocab) as i64).collect())
                .collect()
        })
        .collect()
}

fn split_xy(batch: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let x: Vec<Vec<i64>> = batch.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
    let y: Vec<Vec<i64>> = batch.iter().map(|s| s[1..].to_vec()).collect();
    (tokens_tensor(&x, device), tokens_tensor(&y, device))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Time of each phase of a step, per side (`KILN_BENCH_PROFILE=N`, N steps each): kiln's
/// forward and backward passes with the loss (`Trainer::gradients`) and its optimizer step
/// (`Trainer::apply`: global gradient norm and the fused AdamW), the library's own code; the
/// hand-written model's forward with the loss, backward (`GradientsParams`) and
/// `ModuleOptimizer::step`. Run after the timed steps: it moves both models on.
fn profile(n: usize, trainer: &mut Trainer, hand: &mut Hand, data: &[Vec<Vec<i64>>]) {
    let device = trainer.rt.device.clone();
    let mut t: [Vec<f64>; 5] = Default::default();
    let mut lap = |i: usize, start: &mut Instant| {
        t[i].push(start.elapsed().as_secs_f64());
        *start = Instant::now();
    };
    for step in 0..n {
        let batch = &data[step % data.len()];
        // kiln, phase by phase, through the trainer itself.
        let mut at = Instant::now();
        let g = trainer
            .gradients(&[Batch::Tokens(batch.clone())], u64::MAX)
            .expect("finite loss");
        lap(0, &mut at);
        trainer.apply(g);
        lap(1, &mut at);
        // hand-written, phase by phase.
        let (loss, _) = hand.loss(batch, &device);
        lap(2, &mut at);
        let grads = GradientsParams::from_grads(loss.backward(), hand.model());
        lap(3, &mut at);
        hand.update(grads);
        lap(4, &mut at);
    }
    let ms = |v: &[f64]| median(v) * 1e3;
    println!(
        "  phases (median ms of {n}):   forward+loss  backward  optimizer   sum\n\
         \x20   kiln                      {:>22.1} {:>10.1} {:>5.1}  (forward and backward together)\n\
         \x20   hand-written              {:>12.1} {:>9.1} {:>10.1} {:>5.1}",
        ms(&t[0]),
        ms(&t[1]),
        ms(&t[0]) + ms(&t[1]),
        ms(&t[2]),
        ms(&t[3]),
        ms(&t[4]),
        ms(&t[2]) + ms(&t[3]) + ms(&t[4]),
    );
}

struct Row {
    name: &'static str,
    params: usize,
    tokens: usize,
    kiln: Vec<f64>,
    hand: Vec<f64>,
}

fn run_case(case: &Case) -> Row {
    let (recipe, graph) = load(&case.sets);
    let train = recipe.spec.train.clone();
    let vocab = recipe.spec.task.vocab();
    let len = recipe.spec.task.max_seq() as usize + 1;
    let bs = train.batch_size as usize;
    let vars = &recipe.model.spec.vars;
    let var = |k: &str| match vars[k] {
        VarValue::Int(i) => i as usize,
        v => panic!("model variable `{k}` is {v:?}, not an integer"),
    };
    let (heads, kv_heads, d_model) = (var("heads"), var("kv_heads"), var("d_model"));
    let Optimizer::Adamw {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decay_all,
    } = train.optimizer.clone();
    assert!(decay_all && train.clip_grad_norm.is_none() && train.grad_accum == 1);
    assert!(matches!(train.schedule, Schedule::Constant {}));

    let device = DeviceKind::Cpu.device(true);
    let mut trainer = Trainer::new(&train, graph, device.clone());
    let params = trainer.rt.num_params();
    let model = Lm::from_kiln(trainer.rt.values(), heads, kv_heads, &device);
    let mut hand = Hand {
        model: Some(model),
        optim: AdamWConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(eps as f32)
            .with_weight_decay(weight_decay as f32)
            .init(),
        ce: CrossEntropyLossConfig::new().init(&device),
        rope: Rope::new(len - 1, d_model / heads, 10000.0, &device),
        lr,
    };

    let data = batches(8, bs, len, vocab, 0xBE7C4);

    // Same model: the logits of both agree on the initial weights.
    let (x, _) = split_xy(&data[0], &device);
    let a = trainer.rt.forward(x.clone(), false);
    let b = hand.model().forward(x, &hand.rope);
    let diff: f32 = (a - b).abs().max().into_scalar();
    println!(
        "{}: {params} parameters; initial logits max |kiln − hand| = {diff:.2e}",
        case.name
    );
    assert!(diff < 1e-4, "the two models disagree: {diff}");

    let total = (case.warmup + case.steps) as u64;
    let batch = |i: usize| &data[i % data.len()];
    let kiln_step = |trainer: &mut Trainer, i: usize| -> (f64, f64) {
        let t = Instant::now();
        let stats = trainer
            .step(std::slice::from_ref(batch(i)), total)
            .expect("finite loss");
        (t.elapsed().as_secs_f64(), stats.loss)
    };
    let hand_step = |hand: &mut Hand, i: usize| -> (f64, f64) {
        let t = Instant::now();
        let loss = hand.step(batch(i), &device);
        (t.elapsed().as_secs_f64(), loss)
    };

    // Warm-up; the first step's loss is the same function of the same weights and data.
    for i in 0..case.warmup {
        let (_, lk) = kiln_step(&mut trainer, i);
        let (_, lh) = hand_step(&mut hand, i);
        if i == 0 {
            println!("  first-step loss: kiln {lk:.6}, hand-written {lh:.6}");
            assert!((lk - lh).abs() < 1e-4 * lk.abs().max(1.0));
        }
    }
    // Both optimizers are AdamW with the same settings: the models stay close.
    let (x, _) = split_xy(&data[0], &device);
    let a = trainer.rt.forward(x.clone(), false);
    let b = hand.model().forward(x, &hand.rope);
    let drift: f32 = (a - b).abs().max().into_scalar();
    println!(
        "  after {} warm-up steps: logits max |kiln − hand| = {drift:.2e}",
        case.warmup
    );
    assert!(drift < 1e-3, "the two trainings diverge: {drift}");
    // Timed steps, alternating ABBA so slow drift of the machine hits both alike.
    let (mut kiln_t, mut hand_t) = (Vec::new(), Vec::new());
    for i in 0..case.steps {
        let step = case.warmup + i;
        if i % 2 == 0 {
            kiln_t.push(kiln_step(&mut trainer, step).0);
            hand_t.push(hand_step(&mut hand, step).0);
        } else {
            hand_t.push(hand_step(&mut hand, step).0);
            kiln_t.push(kiln_step(&mut trainer, step).0);
        }
    }
    if let Some(n) = std::env::var("KILN_BENCH_PROFILE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        profile(n, &mut trainer, &mut hand, &data);
    }
    Row {
        name: case.name,
        params,
        tokens: bs * (len - 1),
        kiln: kiln_t,
        hand: hand_t,
    }
}

fn main() {
    // The same allocator settings as the `kiln` binary, for both sides of the comparison.
    kiln::util::tune_allocator();
    let mut rows = Vec::new();
    for case in cases() {
        rows.push(run_case(&case));
    }
    println!();
    println!(
        "{:<44} {:>7} {:>5} {:>9} {:>9} {:>10} {:>10} {:>6} {:>9} {:>13} {:>13}",
        "model",
        "params",
        "steps",
        "kiln st/s",
        "hand st/s",
        "kiln tok/s",
        "hand tok/s",
        "ratio",
        "ratio(md)",
        "kiln ms md/min",
        "hand ms md/min"
    );
    for r in &rows {
        let sk = r.kiln.len() as f64 / r.kiln.iter().sum::<f64>();
        let sh = r.hand.len() as f64 / r.hand.iter().sum::<f64>();
        let ms = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            format!("{:.1}/{:.1}", median(v) * 1e3, min * 1e3)
        };
        println!(
            "{:<44} {:>7} {:>5} {:>9.3} {:>9.3} {:>10.0} {:>10.0} {:>6.3} {:>9.3} {:>14} {:>14}",
            r.name,
            r.params,
            r.kiln.len(),
            sk,
            sh,
            sk * r.tokens as f64,
            sh * r.tokens as f64,
            sk / sh,
            median(&r.hand) / median(&r.kiln),
            ms(&r.kiln),
            ms(&r.hand),
        );
    }
    println!(
        "ratio: kiln steps/s ÷ hand-written steps/s over all timed steps; ratio(md): the same from \
         median step times; ms: median and fastest step"
    );
}
