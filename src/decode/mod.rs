//! Generation with the semantics of Hugging Face transformers' `GenerationConfig` (4.46; see
//! `shared/reference/decoding.md`): greedy, sampling, beam search, diverse (group) beam search
//! and beam sampling, with the logit processors in the reference order.
//!
//! The strategies work on any [`NextLogits`] source: a trained model ([`ModelLm`], with or
//! without a KV cache) or, in tests, tiny hand-built models whose logits are known.

mod beam;
pub mod process;

use crate::runtime::{tokens_tensor, KvCache, Runtime};
use crate::spec::recipe::{Decode, Strategy};
use crate::util::Rng;
use process::{softmax, Processors};

/// A source of next-token logits.
pub trait NextLogits {
    /// Logits of the next token for each row. `seqs[r]` is row r's whole sequence (all rows
    /// have one length); `parents[r]` is the row of the previous call that row r continues
    /// (`None` on the first call).
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>>;

    /// Called once before a generation's first call: no row will grow past `len` tokens
    /// (source and prompt included). A model with a preallocated cache sizes it so.
    fn reserve(&mut self, _len: usize) {}
}

/// A trained model as a [`NextLogits`] source; with a cache, each call after the first runs
/// the model on one new token per row.
///
/// The cache is preallocated (static shapes, [`KvCache::with_capacity`]) on a GPU, where a
/// new shape per token means new kernels and allocations, and grows by one position per token
/// on the CPU, where that is cheaper; [`ModelLm::static_cache`] chooses. The capacity is the
/// length [`NextLogits::reserve`] announces (less an encoder-decoder's source), at most the
/// model's positions ([`Runtime::max_positions`]).
pub struct ModelLm<'a> {
    rt: &'a Runtime,
    cache: Option<KvCache>,
    /// Preallocate the cache.
    static_cache: bool,
    /// The longest sequence announced by [`NextLogits::reserve`].
    reserved: Option<usize>,
    /// Model calls made (for tests and benchmarks).
    pub calls: usize,
}

impl<'a> ModelLm<'a> {
    /// Wrap `rt`; `use_cache` asks for incremental decoding, which is used when every op of
    /// the graph allows it ([`Runtime::cache_support`]), with a preallocated cache where `rt`
    /// runs on a GPU.
    pub fn new(rt: &'a Runtime, use_cache: bool) -> Self {
        let cache = (use_cache && rt.cache_support().is_ok()).then(KvCache::new);
        ModelLm {
            rt,
            cache,
            static_cache: !crate::runtime::is_cpu(&rt.device),
            reserved: None,
            calls: 0,
        }
    }

    /// Preallocate the cache (`true`, static shapes) or let it grow (`false`), whatever the
    /// device; both give the same tokens and logits.
    pub fn static_cache(mut self, on: bool) -> Self {
        self.static_cache = on;
        self
    }

    /// Whether the cache is preallocated (when there is one).
    pub fn is_static(&self) -> bool {
        self.static_cache
    }

    /// Whether decoding is incremental.
    pub fn cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The cache (after generation: what it holds).
    pub fn cache(&self) -> Option<&KvCache> {
        self.cache.as_ref()
    }
}

/// A new cache for sequences of `len` tokens: growing, or (`static_cache`) preallocated for
/// the positions the model will be fed: one less than the `reserved` length (the last token
/// is never fed), without the source, at least `len`'s and at most the model's positions.
/// Without a reservation, or past it (`overflow`), it holds twice `len`'s positions.
fn fresh_cache(
    rt: &Runtime,
    static_cache: bool,
    reserved: Option<usize>,
    len: usize,
    overflow: bool,
) -> KvCache {
    if !static_cache {
        return KvCache::new();
    }
    let src = rt.source_len().unwrap_or(0);
    let need = len.saturating_sub(src);
    let want = match reserved {
        Some(r) if !overflow => r.saturating_sub(1 + src),
        _ => 2 * need,
    };
    // A prompt longer than the positions fails in the model, as it does uncached.
    let cap = rt.max_positions().map_or(want, |m| want.min(m)).max(need);
    KvCache::with_capacity(cap)
}

fn last_logits(logits: burn::prelude::Tensor<3>) -> Vec<Vec<f32>> {
    let [b, s, v] = logits.dims();
    let flat: Vec<f32> = logits
        .narrow(1, s - 1, 1)
        .reshape([b, v])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 logits");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

impl NextLogits for ModelLm<'_> {
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>> {
        self.calls += 1;
        let device = &self.rt.device;
        match &mut self.cache {
            None => last_logits(self.rt.forward(tokens_tensor(seqs, device), false)),
            Some(cache) => {
                let len = seqs.first().map_or(0, Vec::len);
                let src = self.rt.source_len().unwrap_or(0);
                let next = cache.len > 0 && len == src + cache.len + 1;
                let overflow = next && cache.capacity.is_some_and(|c| cache.len + 1 > c);
                if !next || overflow {
                    // A new sequence, or one longer than `reserve` announced: run it whole
                    // into a new cache (with room for it).
                    let (rt, on, r) = (self.rt, self.static_cache, self.reserved);
                    *cache = fresh_cache(rt, on, r, len, overflow);
                    let out = self.rt.forward_cached(tokens_tensor(seqs, device), cache);
                    return last_logits(out.expect("the cache has room for the sequence"));
                }
                if let Some(p) = parents {
                    if p.iter().enumerate().any(|(i, &r)| i != r) {
                        cache.reorder(p);
                    }
                }
                let last: Vec<Vec<i64>> = seqs.iter().map(|s| vec![s[len - 1]]).collect();
                let out = self.rt.forward_cached(tokens_tensor(&last, device), cache);
                last_logits(out.expect("the cache has room for one more position"))
            }
        }
    }

    fn reserve(&mut self, len: usize) {
        self.reserved = Some(len);
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Prompt and generated tokens.
    pub tokens: Vec<i64>,
    /// Beam score (sum of log-probabilities / generated_len^length_penalty); 0 for greedy
    /// and sampling.
    pub score: f64,
}

/// Decoding settings resolved against a task: the recipe's `decode` with its EOS/PAD ids
/// and length limits filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The recipe's decode section.
    pub d: Decode,
    /// EOS id, if any.
    pub eos: Option<i64>,
    /// PAD id written after a finished sequence.
    pub pad: i64,
    /// Length limit used when the recipe gives none (prompt included).
    pub default_max_length: usize,
    /// An encoder-decoder's source length: rows start with the source, which lengths and
    /// processors do not count (as Hugging Face counts only decoder tokens). 0 otherwise.
    pub source_len: usize,
}

impl Settings {
    /// The length (prompt included) at which generation stops.
    pub fn max_length(&self, prompt_len: usize) -> usize {
        match (self.d.max_new_tokens, self.d.max_length) {
            (Some(n), _) => prompt_len + n as usize,
            (None, Some(m)) => self.source_len + m as usize,
            (None, None) => self.default_max_length,
        }
    }
}

/// Generate for `prompts` (any lengths: prompts of equal length run as one batch). Returns,
/// per prompt, `num_return_sequences` sequences (best first for beam strategies).
pub fn generate(
    lm: &mut dyn NextLogits,
    prompts: &[Vec<i64>],
    s: &Settings,
) -> Vec<Vec<Generated>> {
    let mut out: Vec<Vec<Generated>> = vec![Vec::new(); prompts.len()];
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let idx: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].len() == len)
            .collect();
        let group: Vec<Vec<i64>> = idx.iter().map(|&i| prompts[i].clone()).collect();
        let res = match s.d.strategy {
            Strategy::Greedy | Strategy::Sample => sample_or_greedy(lm, &group, s),
            Strategy::Beam | Strategy::BeamSample => beam::beam(lm, &group, s, 1),
            Strategy::GroupBeam => beam::beam(lm, &group, s, s.d.num_beam_groups as usize),
        };
        for (i, r) in idx.into_iter().zip(res) {
            out[i] = r;
        }
    }
    out
}

/// The fewest tokens the sampling warpers keep: 2 for beam sampling (transformers 4.46
/// `_get_logits_processor`: `len(eos_token_id) + 1` with an EOS, 2 without one; kiln has at
/// most one EOS), else 1.
pub fn min_tokens_to_keep(s: &Settings) -> usize {
    if s.d.strategy == Strategy::BeamSample {
        2
    } else {
        1
    }
}

fn sample_or_greedy(
    lm: &mut dyn NextLogits,
    prompts: &[Vec<i64>],
    s: &Settings,
) -> Vec<Vec<Generated>> {
    let n_ret = s.d.num_return_sequences as usize;
    let prompt_len = prompts[0].len();
    let max_len = s.max_length(prompt_len);
    let sample = s.d.strategy == Strategy::Sample;
    let procs = Processors::new(&s.d, s.eos, prompt_len, 1).skipping(s.source_len);
    let mut rng = Rng::new(s.d.seed);
    lm.reserve(max_len);
    let mut seqs: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), n_ret))
        .collect();
    let mut done = vec![false; seqs.len()];
    let rows = identity(seqs.len());
    let mut first = true;
    while seqs[0].len() < max_len && !done.iter().all(|&d| d) {
        let logits = lm.next_logits(&seqs, if first { None } else { Some(&rows) });
        first = false;
        for (r, mut scores) in logits.into_iter().enumerate() {
            let tok = if done[r] {
                s.pad
            } else {
                procs.process(&seqs[r], &mut scores, None);
                if sample {
                    procs.warp(&mut scores);
                    sample_one(&softmax(&scores), &mut rng) as i64
                } else {
                    argmax(&scores) as i64
                }
            };
            seqs[r].push(tok);
            if Some(tok) == s.eos {
                done[r] = true;
            }
        }
    }
    seqs.chunks(n_ret)
        .map(|c| {
            c.iter()
                .map(|t| Generated {
                    tokens: t.clone(),
                    score: 0.0,
                })
                .collect()
        })
        .collect()
}

pub(crate) fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Index of the largest value (the first on ties, as torch.argmax).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

pub(crate) fn sample_one(probs: &[f32], rng: &mut Rng) -> usize {
    let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    let mut u = rng.uniform() * total;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            u -= f64::from(p);
            if u < 0.0 {
                return i;
            }
        }
    }
    last
}
