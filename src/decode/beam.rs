//! Beam search, diverse (group) beam search and beam sampling, as transformers 4.46
//! `_beam_search` / `_group_beam_search` with `BeamSearchScorer` and `BeamHypotheses`.

use super::process::{log_softmax, softmax, Processors};
use super::{identity, sample_one, Generated, NextLogits, Settings};
use crate::spec::recipe::{EarlyStop, Strategy};
use crate::util::Rng;

/// Scores compared as Python floats (−0 equals 0; NaN, which a score never is, as equal).
fn score_cmp(a: f64, b: f64) -> std::cmp::Ordering {
    a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
}

/// The finished hypotheses of one beam group (HF `BeamHypotheses`): when one too many, the
/// worst is removed, the earliest added of equal worst ones (`sorted` of (score, index)).
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
                    .min_by(|a, b| score_cmp(a.1 .0, b.1 .0))
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
pub(super) fn beam(
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
    let procs = Processors::new(&s.d, s.eos, prompt_len, super::min_tokens_to_keep(s))
        .skipping(s.source_len);
    let mut rng = Rng::new(s.d.seed);
    lm.reserve(max_len);
    let mut seqs: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), k))
        .collect();
    // The first beam of each group starts at 0, the others at −1e9 (so step one expands
    // only one beam per group). Beam scores are f32, as torch's `beam_scores`.
    let mut scores: Vec<f32> = (0..b * k)
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
    // Candidates per group: `n_tokens_to_keep = max(2, 1 + n_eos) * num_beams` (2·num_beams
    // with or without an EOS).
    let keep = 2.max(1 + n_eos) * gs;
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
                // log_softmax → processors → (+ warpers when sampling) → + beam score. Every
                // (beam, token) pair is a candidate, −∞ ones too: torch.topk takes the best
                // 2·num_beams whatever their score, so a beam can go on at −∞ (it never wins
                // again, and no PAD enters a running sequence).
                let v = logits[rows[0]].len();
                let mut cand: Vec<(f32, usize, usize)> = Vec::new(); // (score, beam j, token)
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
                    // With fewer than `keep` possible candidates (where torch.multinomial
                    // raises), the rest follow in score order.
                    let beam_scores = &scores;
                    let all: Vec<f32> = flat
                        .iter()
                        .zip(&rows)
                        .flat_map(|(sc, &r)| sc.iter().map(move |&x| x + beam_scores[r]))
                        .collect();
                    let mut probs = softmax(&all);
                    let possible = probs.iter().filter(|&&p| p > 0.0).count();
                    for _ in 0..keep.min(possible) {
                        let i = sample_one(&probs, &mut rng);
                        probs[i] = 0.0;
                        cand.push((all[i], i / v, i % v));
                    }
                    if cand.len() < keep {
                        let mut rest: Vec<usize> = (0..all.len())
                            .filter(|&i| !cand.iter().any(|c| c.1 * v + c.2 == i))
                            .collect();
                        rest.sort_by(|&a, &b| all[b].total_cmp(&all[a]).then(a.cmp(&b)));
                        let missing = keep - cand.len();
                        cand.extend(
                            rest.into_iter()
                                .take(missing)
                                .map(|i| (all[i], i / v, i % v)),
                        );
                    }
                } else {
                    for (j, sc) in flat.iter().enumerate() {
                        cand.extend(
                            sc.iter()
                                .enumerate()
                                .map(|(t, &x)| (x + scores[rows[j]], j, t)),
                        );
                    }
                }
                // The best `keep`, best first; exact ties by flat index (torch.topk leaves
                // their order to its selection algorithm).
                let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
                    b.0.partial_cmp(&a.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then((a.1, a.2).cmp(&(b.1, b.2)))
                };
                if cand.len() > keep {
                    cand.select_nth_unstable_by(keep - 1, order);
                    cand.truncate(keep);
                }
                cand.sort_by(order);
                let mut filled = 0;
                for (rank, &(sc, j, t)) in cand.iter().enumerate() {
                    let parent = rows[j];
                    if Some(t as i64) == s.eos {
                        if rank >= gs {
                            continue;
                        }
                        hyps[hi].add(
                            seqs[parent].clone(),
                            f64::from(sc),
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
                // Only a one-token vocabulary that is the EOS leaves rows unfilled (transformers
                // raises); they end at −∞.
                for &r in &rows[filled..] {
                    next_seqs[r] = seqs[r].clone();
                    next_seqs[r].push(s.pad);
                    next_scores[r] = f32::NEG_INFINITY;
                    next_parents[r] = r;
                }
                let best = cand.first().map_or(f64::NEG_INFINITY, |c| f64::from(c.0));
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
                hyps[hi].add(
                    seqs[r].clone(),
                    f64::from(scores[r]),
                    generated,
                    s.d.length_penalty,
                );
            }
        }
        let mut all: Vec<(f64, Vec<i64>)> = (0..groups)
            .flat_map(|g| hyps[bi * groups + g].beams.clone())
            .collect();
        // Best first. transformers sorts ascending (Python's stable `sorted`) and `pop()`s
        // from the end, so of exactly equal scores the hypothesis added last comes first:
        // reversed, then a stable descending sort.
        all.reverse();
        all.sort_by(|a, b| score_cmp(b.0, a.0));
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
