//! Decoding: each processor and strategy on tiny hand-built models whose logits are known,
//! against hand-computed expectations (edge cases matched to transformers:
//! `tests/decode_edges.rs`; cached against uncached decoding of real models, and bad settings:
//! `tests/decode_cached.rs`).

use kiln::decode::generate;
use kiln::decode::process::Processors;
use kiln::spec::recipe::{Decode, EarlyStop, Strategy};

mod decode_common;
use decode_common::{kept, ln, settings, tokens, Table, EOS};

#[test]
fn greedy_takes_the_most_probable_token_and_pads_after_eos() {
    // Vocab {EOS, a, b}: after the prompt a b … the model says a, then EOS.
    let mut m = Table(|s: &[i64]| match s.len() {
        1 => vec![0.0, 2.0, 1.0],
        2 => vec![3.0, 0.0, 1.0],
        _ => vec![0.0, 0.0, 5.0],
    });
    let out = generate(&mut m, &[vec![2], vec![1]], &settings(Decode::default(), 5));
    assert_eq!(tokens(&out[0]), vec![vec![2, 1, 0]]);
    assert_eq!(tokens(&out[1]), vec![vec![1, 1, 0]]);
    // Two prompts finishing at different steps in one batch: the first pads.
    let mut m = Table(|s: &[i64]| {
        if s[0] == 1 || s.len() >= 2 {
            vec![5.0, 0.0, 0.0]
        } else {
            vec![0.0, 0.0, 5.0]
        }
    });
    let out = generate(&mut m, &[vec![1], vec![2]], &settings(Decode::default(), 6));
    assert_eq!(tokens(&out[0]), vec![vec![1, 0, 9]]);
    assert_eq!(tokens(&out[1]), vec![vec![2, 2, 0]]);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
    let d = Decode {
        repetition_penalty: 2.0,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![1.0, 4.0, -3.0, 2.0];
    // Tokens 1 and 2 occurred (1 twice: penalised once).
    p.process(&[1, 2, 1], &mut s, None);
    assert_eq!(s, vec![1.0, 2.0, -6.0, 2.0]);
}

#[test]
fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
    let d = Decode {
        no_repeat_ngram_size: 2,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![0.0; 5];
    // Bigrams seen: (1,2) (2,3) (3,1); the sequence ends in 1 → token 2 banned.
    p.process(&[1, 2, 3, 1], &mut s, None);
    assert_eq!(s[2], f32::NEG_INFINITY);
    assert_eq!(s.iter().filter(|v| v.is_infinite()).count(), 1);
    let d3 = Decode {
        no_repeat_ngram_size: 3,
        ..Decode::default()
    };
    let mut s = vec![0.0; 5];
    Processors::new(&d3, Some(EOS), 1, 1).process(&[1], &mut s, None);
    assert!(
        s.iter().all(|v| v.is_finite()),
        "no banning while too short"
    );
}

#[test]
fn min_lengths_and_bad_words_mask_tokens() {
    let d = Decode {
        min_new_tokens: 2,
        bad_words_ids: vec![vec![3], vec![1, 2]],
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 2, 1);
    let mut s = vec![0.0; 5];
    p.process(&[4, 1, 7], &mut s, None); // one new token so far
    assert_eq!(s[0], f32::NEG_INFINITY, "EOS masked before min_new_tokens");
    assert_eq!(s[3], f32::NEG_INFINITY, "single-token bad word");
    assert_eq!(s[2], 0.0, "(1, 2) only after 1");
    let mut s = vec![0.0; 5];
    p.process(&[4, 7, 8, 1], &mut s, None);
    assert_eq!(s[0], 0.0);
    assert_eq!(s[2], f32::NEG_INFINITY);
    let d = Decode {
        min_length: 4,
        ..Decode::default()
    };
    let mut s = vec![0.0; 3];
    Processors::new(&d, Some(EOS), 1, 1).process(&[1, 1, 1], &mut s, None);
    assert_eq!(s[0], f32::NEG_INFINITY);
}

#[test]
fn warpers_keep_the_hand_computed_sets() {
    let probs = ln(&[0.5, 0.2, 0.15, 0.1, 0.05]);
    let base = Decode {
        top_k: 0,
        ..Decode::default()
    };
    // top-k with a tie at the threshold keeps both.
    let tie = vec![3.0, 2.0, 2.0, 1.0];
    assert_eq!(
        kept(
            Decode {
                top_k: 2,
                ..base.clone()
            },
            &tie,
            1
        ),
        vec![0, 1, 2]
    );
    // top-p 0.7: 0.5 + 0.2 reaches it.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.7,
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1]
    );
    // top-p 0.71 needs the third.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.71,
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1, 2]
    );
    // min-p 0.29: keep p ≥ 0.145.
    assert_eq!(
        kept(
            Decode {
                min_p: Some(0.29),
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1, 2]
    );
    assert_eq!(
        kept(
            Decode {
                min_p: Some(0.35),
                ..base.clone()
            },
            &probs,
            1
        ),
        vec![0, 1]
    );
    // min_tokens_to_keep = 2 overrides a tiny top-p.
    assert_eq!(
        kept(
            Decode {
                top_p: 0.01,
                ..base.clone()
            },
            &probs,
            2
        ),
        vec![0, 1]
    );
    // Temperature is applied before top-p: T = 10 flattens, so 0.7 needs more tokens.
    let hot = kept(
        Decode {
            top_p: 0.7,
            temperature: 10.0,
            ..base.clone()
        },
        &probs,
        1,
    );
    assert!(hot.len() > 2, "{hot:?}");
    // typical-p: H = −Σ p ln p; rank by |−ln p − H|.
    let p = [0.5f64, 0.2, 0.15, 0.1, 0.05];
    let h: f64 = p.iter().map(|x| -x * x.ln()).sum();
    let mut order: Vec<usize> = (0..5).collect();
    order.sort_by(|&a, &b| (-p[a].ln() - h).abs().total_cmp(&(-p[b].ln() - h).abs()));
    let mut want = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        want.push(i);
        mass += p[i];
        if mass >= 0.5 {
            break;
        }
    }
    want.sort_unstable();
    assert_eq!(
        kept(
            Decode {
                typical_p: 0.5,
                ..base
            },
            &probs,
            1
        ),
        want
    );
}

#[test]
fn sampling_is_seeded_and_follows_the_distribution() {
    let d = Decode {
        strategy: Strategy::Sample,
        num_return_sequences: 4,
        top_k: 0,
        seed: 3,
        ..Decode::default()
    };
    let probs = ln(&[0.0001, 0.7, 0.2999]);
    let run = |d: Decode| {
        let mut m = Table(|_: &[i64]| probs.clone());
        generate(&mut m, &vec![vec![1]; 200], &settings(d, 2))
    };
    let a = run(d.clone());
    assert_eq!(a, run(d.clone()), "same seed, same samples");
    let ones = a.iter().flatten().filter(|g| g.tokens[1] == 1).count() as f64 / 800.0;
    assert!((ones - 0.7).abs() < 0.05, "{ones}");
    let other = run(Decode {
        seed: 4,
        ..d.clone()
    });
    assert_ne!(a, other);
    // top_k = 1 makes sampling greedy.
    let g = run(Decode { top_k: 1, ..d });
    assert!(g.iter().flatten().all(|x| x.tokens[1] == 1));
}

/// Vocab {EOS, a, b}. Greedy takes a (0.6) then must end weakly; b (0.4) then EOS (0.9)
/// is the more probable sequence.
fn trap(s: &[i64]) -> Vec<f32> {
    match (s.len(), s.last()) {
        (1, _) => ln(&[0.0001, 0.6, 0.3999]),
        (2, Some(1)) => ln(&[0.3, 0.35, 0.35]),
        (2, Some(2)) => ln(&[0.9, 0.05, 0.05]),
        _ => ln(&[0.98, 0.01, 0.01]),
    }
}

#[test]
fn beam_search_finds_the_more_probable_sequence_with_hand_computed_scores() {
    let greedy = generate(
        &mut Table(trap),
        &[vec![5]],
        &settings(Decode::default(), 5),
    );
    assert_eq!(greedy[0][0].tokens[..2], [5, 1]);
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        ..Decode::default()
    };
    let out = generate(&mut Table(trap), &[vec![5]], &settings(d.clone(), 5));
    assert_eq!(out[0][0].tokens, vec![5, 2, 0]);
    // score = sum log p / generated_len^1 with generated_len counting the EOS.
    let want = ((0.3999f64).ln() + (0.9f64).ln()) / 2.0;
    assert!(
        (out[0][0].score - want).abs() < 1e-5,
        "{} vs {want}",
        out[0][0].score
    );
    assert!(out[0][0].score >= out[0][1].score);
    // The runner-up is a → (a or b) → EOS.
    let second = ((0.6f64).ln() + (0.35f64).ln() + (0.98f64).ln()) / 3.0;
    assert!((out[0][1].score - second).abs() < 1e-5, "{:?}", out[0]);
}

#[test]
fn length_penalty_decides_between_short_and_long_hypotheses() {
    // After the prompt: EOS at once (p .45) or x then EOS (.55 · .9 = .495).
    let m = |s: &[i64]| match s.len() {
        1 => ln(&[0.45, 0.55, 1e-9]),
        _ => ln(&[0.9, 0.05, 0.05]),
    };
    let run = |lp: f64| {
        let d = Decode {
            strategy: Strategy::Beam,
            num_beams: 2,
            length_penalty: lp,
            early_stopping: EarlyStop::Never(kiln::spec::recipe::Never::Never),
            ..Decode::default()
        };
        generate(&mut Table(m), &[vec![7]], &settings(d, 4))[0][0].clone()
    };
    // short: ln .45 / 1^lp = −0.799; long: (ln .55 + ln .9) / 2^lp = −0.703 / 2^lp.
    assert_eq!(run(1.0).tokens, vec![7, 1, 0]); // −0.351 beats −0.799
    assert_eq!(run(0.0).tokens, vec![7, 1, 0]); // −0.703 beats −0.799
    let short = run(-1.0); // long: −1.406, short −0.799
    assert_eq!(short.tokens, vec![7, 0]);
    assert!((short.score - (0.45f64).ln()).abs() < 1e-5);
}

#[test]
fn early_stopping_true_stops_at_the_first_full_set() {
    // Every step EOS has p .5; with early_stopping = true the search ends as soon as 2
    // hypotheses are finished, i.e. after step 2, never reaching longer ones.
    let m = |_: &[i64]| ln(&[0.5, 0.3, 0.2]);
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        early_stopping: EarlyStop::Flag(true),
        ..Decode::default()
    };
    let calls = std::cell::Cell::new(0);
    let mut counted = Table(|s: &[i64]| {
        calls.set(calls.get() + 1);
        m(s)
    });
    let out = generate(&mut counted, &[vec![4]], &settings(d, 10));
    assert!(out[0].iter().all(|g| g.tokens.len() <= 3), "{:?}", out[0]);
    assert!(calls.get() <= 2 * 2, "{} calls", calls.get());
}

#[test]
fn diverse_beam_search_spreads_the_groups() {
    let m = |s: &[i64]| match s.len() {
        1 => ln(&[0.01, 0.6, 0.39]),
        _ => ln(&[0.98, 0.01, 0.01]),
    };
    let run = |penalty: f64| {
        let d = Decode {
            strategy: Strategy::GroupBeam,
            num_beams: 2,
            num_beam_groups: 2,
            diversity_penalty: penalty,
            num_return_sequences: 2,
            ..Decode::default()
        };
        let mut out: Vec<i64> = generate(&mut Table(m), &[vec![3]], &settings(d, 4))[0]
            .iter()
            .map(|g| g.tokens[1])
            .collect();
        out.sort_unstable();
        out
    };
    // Without a penalty both groups pick a; with one the second group must pick b
    // (ln .6 − 5 < ln .39).
    assert_eq!(run(0.0), vec![1, 1]);
    assert_eq!(run(5.0), vec![1, 2]);
}

#[test]
fn beam_sampling_samples_and_is_seeded() {
    let d = Decode {
        strategy: Strategy::BeamSample,
        num_beams: 2,
        top_k: 0,
        seed: 1,
        ..Decode::default()
    };
    let run = |seed| {
        generate(
            &mut Table(trap),
            &vec![vec![5]; 30],
            &settings(Decode { seed, ..d.clone() }, 5),
        )
    };
    assert_eq!(run(1), run(1));
    let firsts: std::collections::HashSet<i64> = run(1).iter().map(|g| g[0].tokens[1]).collect();
    assert!(firsts.len() > 1 || firsts.contains(&2), "{firsts:?}");
}
