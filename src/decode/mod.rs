//! Generation with the semantics of Hugging Face transformers' `GenerationConfig` (4.46; see
//! `shared/reference/decoding.md`): greedy, sampling, beam search, diverse (group) beam search
//! and beam sampling, with the logit processors in the reference order.
//!
//! The strategies work on any [`NextLogits`] source: a trained model ([`ModelLm`], with or
//! without a KV cache) or, in tests, tiny hand-built models whose logits are known.

pub mod process;

use crate::runtime::{tokens_tensor, KvCache, Runtime};
use crate::spec::recipe::{Decode, EarlyStop, Strategy};
use crate::util::Rng;
use process::{log_softmax, softmax, Processors};

/// A source of next-token logits.
pub trait NextLogits {
    /// Logits of the next token for each row. `seqs[r]` is row r's whole sequence (all rows
    /// have one length); `parents[r]` is the row of the previous call that row r continues
    /// (`None` on the first call).
    fn next_logits(&mut self, seqs: &[Vec<i64>], parents: Option<&[usize]>) -> Vec<Vec<f32>>;
}

/// A trained model as a [`NextLogits`] source; with a cache, each call after the first runs
/// the model on one new token per row.
pub struct ModelLm<'a> {
    rt: &'a Runtime,
    cache: Option<KvCache>,
    /// Model calls made (for tests and benchmarks).
    pub calls: usize,
}

impl<'a> ModelLm<'a> {
    /// Wrap `rt`; `use_cache` asks for incremental decoding, which is used when every op of
    /// the graph allows it ([`Runtime::cache_support`]).
    pub fn new(rt: &'a Runtime, use_cache: bool) -> Self {
        let cache = (use_cache && rt.cache_support().is_ok()).then(KvCache::new);
        ModelLm {
            rt,
            cache,
            calls: 0,
        }
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
                if cache.len == 0 || len != src + cache.len + 1 {
                    *cache = KvCache::new();
                    return last_logits(self.rt.forward_cached(tokens_tensor(seqs, device), cache));
                }
                if let Some(p) = parents {
                    if p.iter().enumerate().any(|(i, &r)| i != r) {
                        cache.reorder(p);
                    }
                }
                let last: Vec<Vec<i64>> = seqs.iter().map(|s| vec![s[len - 1]]).collect();
                last_logits(self.rt.forward_cached(tokens_tensor(&last, device), cache))
            }
        }
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
            Strategy::Beam | Strategy::BeamSample => beam(lm, &group, s, 1),
            Strategy::GroupBeam => beam(lm, &group, s, s.d.num_beam_groups as usize),
        };
        for (i, r) in idx.into_iter().zip(res) {
            out[i] = r;
        }
    }
    out
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

fn identity(n: usize) -> Vec<usize> {
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

fn sample_one(probs: &[f32], rng: &mut Rng) -> usize {
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

/// The finished hypotheses of one beam group (HF `BeamHypotheses`).
struct Hyps {
    beams: Vec<(f64, Vec<i64>)>,
    worst: f64,
    size: usize,
}

impl Hyps {
    fn new(size: usize) -> Self {
        Hyps {
            beams: Vec::new(),
            worst: 1e9,
            size,
        }
    }

    fn add(&mut self, tokens: Vec<i64>, sum_logprobs: f64, generated_len: usize, lp: f64) {
        let score = sum_logprobs / (generated_len.max(1) as f64).powf(lp);
        if self.beams.len() < self.size || score > self.worst {
            self.beams.push((score, tokens));
            if self.beams.len() > self.size {
                let (wi, _) = self
                    .beams
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                    .expect("non-empty");
                self.beams.remove(wi);
                self.worst = self.beams.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(
        &self,
        best_sum: f64,
        cur_len: usize,
        prompt_len: usize,
        s: &Settings,
        max_len: usize,
    ) -> bool {
        if self.beams.len() < self.size {
            return false;
        }
        let lp = s.d.length_penalty;
        let highest = match s.d.early_stopping {
            EarlyStop::Flag(true) => return true,
            EarlyStop::Flag(false) => best_sum / ((cur_len - prompt_len) as f64).powf(lp),
            EarlyStop::Never(_) => {
                if lp > 0.0 {
                    best_sum / ((max_len - prompt_len).max(1) as f64).powf(lp)
                } else {
                    best_sum / ((cur_len - prompt_len) as f64).powf(lp)
                }
            }
        };
        self.worst >= highest
    }
}

/// Beam search (groups = 1), diverse group beam search (groups > 1) and beam sampling, as
/// HF's `_beam_search` / `_group_beam_search` with `BeamSearchScorer`.
fn beam(
    lm: &mut dyn NextLogits,
    prompts: &[Vec<i64>],
    s: &Settings,
    groups: usize,
) -> Vec<Vec<Generated>> {
    let k = s.d.num_beams as usize;
    let gs = k / groups;
    let b = prompts.len();
    let prompt_len = prompts[0].len();
    let max_len = s.max_length(prompt_len);
    let sample = s.d.strategy == Strategy::BeamSample;
    let n_eos = usize::from(s.eos.is_some());
    let procs = Processors::new(&s.d, s.eos, prompt_len, if sample { n_eos + 1 } else { 1 })
        .skipping(s.source_len);
    let mut rng = Rng::new(s.d.seed);
    let mut seqs: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), k))
        .collect();
    // The first beam of each group starts at 0, the others at −1e9 (so step one expands
    // only one beam per group).
    let mut scores: Vec<f64> = (0..b * k)
        .map(|r| {
            if (r % k).is_multiple_of(gs) {
                0.0
            } else {
                -1e9
            }
        })
        .collect();
    let mut hyps: Vec<Hyps> = (0..b * groups).map(|_| Hyps::new(gs)).collect();
    let mut done = vec![false; b * groups];
    let mut parents: Option<Vec<usize>> = None;
    let keep = (1 + n_eos) * gs;
    while seqs[0].len() < max_len {
        let logits = lm.next_logits(&seqs, parents.as_deref());
        let cur_len = seqs[0].len() + 1;
        let mut next_seqs = seqs.clone();
        let mut next_scores = scores.clone();
        let mut next_parents: Vec<usize> = identity(b * k);
        for bi in 0..b {
            // Tokens chosen at this step by earlier groups (Hamming diversity).
            let mut chosen: Vec<i64> = Vec::new();
            for g in 0..groups {
                let hi = bi * groups + g;
                let rows: Vec<usize> = (0..gs).map(|j| bi * k + g * gs + j).collect();
                if done[hi] {
                    for &r in &rows {
                        next_seqs[r] = seqs[r].clone();
                        next_seqs[r].push(s.pad);
                        next_scores[r] = 0.0;
                        next_parents[r] = r;
                        chosen.push(s.pad);
                    }
                    continue;
                }
                // log_softmax → processors → (+ warpers when sampling) → + beam score.
                let mut cand: Vec<(f64, usize, usize)> = Vec::new(); // (score, beam j, token)
                let mut flat: Vec<Vec<f32>> = Vec::with_capacity(gs);
                for &r in &rows {
                    let mut sc = log_softmax(&logits[r]);
                    procs.process(&seqs[r], &mut sc, Some((&chosen, s.d.diversity_penalty)));
                    if sample {
                        procs.warp(&mut sc);
                    }
                    flat.push(sc);
                }
                if sample {
                    // Sample `keep` candidates without replacement from softmax over all
                    // (beam, token) pairs of the group, then order them by score.
                    let beam_scores = &scores;
                    let all: Vec<f32> = flat
                        .iter()
                        .zip(&rows)
                        .flat_map(|(sc, &r)| sc.iter().map(move |&v| v + beam_scores[r] as f32))
                        .collect();
                    let mut probs = softmax(&all);
                    for _ in 0..keep.min(probs.iter().filter(|&&p| p > 0.0).count()) {
                        let i = sample_one(&probs, &mut rng);
                        probs[i] = 0.0;
                        let v = logits[rows[0]].len();
                        cand.push((f64::from(all[i]), i / v, i % v));
                    }
                } else {
                    for (j, sc) in flat.iter().enumerate() {
                        for (t, &v) in sc.iter().enumerate() {
                            if v > f32::NEG_INFINITY {
                                cand.push((f64::from(v) + scores[rows[j]], j, t));
                            }
                        }
                    }
                }
                // Best first; ties by flat index as torch.topk on CPU.
                cand.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
                cand.truncate(keep);
                let mut filled = 0;
                for (rank, &(sc, j, t)) in cand.iter().enumerate() {
                    let parent = rows[j];
                    if Some(t as i64) == s.eos {
                        if rank >= gs {
                            continue;
                        }
                        hyps[hi].add(
                            seqs[parent].clone(),
                            sc,
                            cur_len - prompt_len,
                            s.d.length_penalty,
                        );
                    } else {
                        let r = rows[filled];
                        next_seqs[r] = seqs[parent].clone();
                        next_seqs[r].push(t as i64);
                        next_scores[r] = sc;
                        next_parents[r] = parent;
                        chosen.push(t as i64);
                        filled += 1;
                    }
                    if filled == gs {
                        break;
                    }
                }
                // Rows a candidate list too short could not fill keep their beam, dead.
                for &r in &rows[filled..] {
                    next_seqs[r] = seqs[r].clone();
                    next_seqs[r].push(s.pad);
                    next_scores[r] = -1e9;
                    next_parents[r] = r;
                }
                let best = cand.first().map_or(f64::NEG_INFINITY, |c| c.0);
                done[hi] = done[hi] || hyps[hi].is_done(best, cur_len, prompt_len, s, max_len);
            }
        }
        seqs = next_seqs;
        scores = next_scores;
        parents = Some(next_parents);
        if done.iter().all(|&d| d) {
            break;
        }
    }
    // Finalize: running beams of unfinished groups become hypotheses too.
    let mut out = Vec::with_capacity(b);
    for bi in 0..b {
        for g in 0..groups {
            let hi = bi * groups + g;
            if done[hi] {
                continue;
            }
            for j in 0..gs {
                let r = bi * k + g * gs + j;
                let generated = seqs[r].len() - prompt_len;
                hyps[hi].add(seqs[r].clone(), scores[r], generated, s.d.length_penalty);
            }
        }
        let mut all: Vec<(f64, Vec<i64>)> = (0..groups)
            .flat_map(|g| hyps[bi * groups + g].beams.clone())
            .collect();
        // Best first (a stable sort keeps insertion order on ties, like Python's sorted).
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.push(
            all.into_iter()
                .take(s.d.num_return_sequences as usize)
                .map(|(score, mut tokens)| {
                    if let Some(e) = s.eos {
                        if tokens.len() < max_len {
                            tokens.push(e);
                        }
                    }
                    Generated { tokens, score }
                })
                .collect(),
        );
    }
    out
}
