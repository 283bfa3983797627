//! Decoding edge cases on hand-built models, each matched to what transformers 4.46.3 does:
//! bad words, top-p's rounding, beam sampling without an end token, ties between hypotheses,
//! beams without a finite candidate, −0 against 0, typical-p, the diversity penalty, the log
//! softmax, and processors that skip an encoder-decoder's source.

use kiln::decode::process::Processors;
use kiln::decode::{generate, Settings};
use kiln::spec::recipe::{Decode, Strategy};

mod decode_common;
use decode_common::{kept, ln, settings, tokens, Table, EOS};

#[test]
fn bad_words_skip_the_eos_word_and_words_longer_than_the_sequence() {
    // transformers 4.46 `NoBadWordsLogitsProcessor` drops a bad word equal to [eos], and
    // `SequenceBiasLogitsProcessor` skips a word longer than the sequence so far.
    let d = Decode {
        bad_words_ids: vec![vec![0], vec![1, 2], vec![4, 3, 1]],
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 1, 1);
    let mut s = vec![0.0; 5];
    p.process(&[1], &mut s, None);
    assert_eq!(s, vec![0.0; 5], "[eos] ignored; [1, 2] longer than [1]");
    let mut s = vec![0.0; 5];
    p.process(&[3, 1], &mut s, None);
    assert_eq!(s[2], f32::NEG_INFINITY);
    assert_eq!(s[0], 0.0);
    let mut s = vec![0.0; 5];
    p.process(&[4, 3], &mut s, None);
    assert_eq!(s[1], 0.0, "[4, 3, 1] is longer than [4, 3]");
    let mut s = vec![0.0; 5];
    p.process(&[2, 4, 3], &mut s, None);
    assert_eq!(s[1], f32::NEG_INFINITY);
    // Without an EOS, [0] is an ordinary bad word.
    let mut s = vec![0.0; 5];
    Processors::new(&d, None, 1, 1).process(&[2], &mut s, None);
    assert_eq!(s[0], f32::NEG_INFINITY);
}

#[test]
fn top_p_compares_the_cumulative_mass_with_one_minus_top_p_rounded_once() {
    // transformers 4.46 `TopPLogitsWarper`: remove `cumsum(sorted probs) <= 1 - top_p`, the
    // bound computed in f64 and rounded to f32 once (0.4 for top_p 0.6; f32 arithmetic gave
    // 0.39999998), the cumulative sum accumulated in f64 (torch's CPU cumsum). Five equal
    // tokens: 0.2 + 0.2 = 0.4 ≤ 0.4, so two are removed and three kept.
    let base = Decode {
        top_k: 0,
        top_p: 0.6,
        ..Decode::default()
    };
    assert_eq!(kept(base.clone(), &[0.0; 5], 1), vec![2, 3, 4]);
    assert_eq!(kept(base.clone(), &ln(&[0.4, 0.6]), 1), vec![1]);
    assert_eq!(kept(base, &ln(&[0.4, 0.6]), 2), vec![0, 1]);
}

fn no_eos(d: Decode, max_len: usize) -> Settings {
    Settings {
        eos: None,
        ..settings(d, max_len)
    }
}

#[test]
fn beam_sampling_without_eos_keeps_two_tokens_per_beam_and_draws_two_per_beam() {
    // As transformers 4.46 (`_get_logits_processor`: min_tokens_to_keep = 2 with beams and no
    // EOS; `_beam_search`: n_tokens_to_keep = max(2, 1 + n_eos) · num_beams). Step 1: four
    // tied tokens survive top-k 1, and all four are drawn. Step 2: top-k 1 keeps two tokens
    // per beam (four in all), all four are drawn, and the two best both continue token 0.
    let m = |s: &[i64]| match (s.len(), s.last()) {
        (1, _) => vec![0.0, 0.0, 0.0, 0.0, -30.0, -30.0],
        (_, Some(0)) => vec![5.0, 4.9, -30.0, -30.0, -30.0, -30.0],
        (_, Some(1)) => vec![-30.0, -30.0, 0.3, 0.0, -0.2, -30.0],
        _ => vec![0.0; 6],
    };
    for seed in 0..6 {
        let d = Decode {
            strategy: Strategy::BeamSample,
            num_beams: 2,
            num_return_sequences: 2,
            top_k: 1,
            max_new_tokens: Some(2),
            seed,
            ..Decode::default()
        };
        let out = generate(&mut Table(m), &[vec![5]], &no_eos(d, 9));
        assert_eq!(
            tokens(&out[0]),
            vec![vec![5, 0, 0], vec![5, 0, 1]],
            "seed {seed}"
        );
    }
}

#[test]
fn exactly_tied_hypotheses_return_the_last_added_first() {
    // transformers 4.46 `BeamSearchScorer.finalize`: `sorted(..., key=score)` then `pop()`,
    // so of two equal scores the later hypothesis comes first. Vocab {EOS, a, b, c}; a and
    // b tie (ln ½); a → EOS and b → c → EOS are certain (log p exactly 0), so with
    // length_penalty 0 both hypotheses score ln ½; a's is added at step 2, b's at step 3.
    let m = |s: &[i64]| match (s.len(), s.last()) {
        (1, _) => vec![-1e4, 0.0, 0.0, -1e4],
        (_, Some(2)) => vec![-1e4, -1e4, -1e4, 0.0],
        _ => vec![0.0, -1e4, -1e4, -1e4],
    };
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        length_penalty: 0.0,
        ..Decode::default()
    };
    let out = generate(&mut Table(m), &[vec![5]], &settings(d, 6));
    assert_eq!(tokens(&out[0]), vec![vec![5, 2, 3, 0], vec![5, 1, 0]]);
    assert_eq!(out[0][0].score, out[0][1].score);
}

#[test]
fn beams_without_a_finite_candidate_continue_at_minus_infinity() {
    // transformers 4.46 `_beam_search` takes the top 2·num_beams candidates whatever their
    // score, so a beam can continue at −∞; it never comes back and no PAD enters a running
    // sequence. Vocab {0, 1, 2, 3}, no EOS: after 1 every token is a bad word, after 2 and
    // after 3 all but 3.
    let bad: Vec<Vec<u32>> = [1u32, 2, 3]
        .iter()
        .flat_map(|&a| {
            (0..4)
                .filter(move |&b| a == 1 || b != 3)
                .map(move |b| vec![a, b])
        })
        .collect();
    let m = |s: &[i64]| match s.len() {
        1 => vec![-10.0, 1.0, 1.5, -10.0],
        _ => vec![0.0; 4],
    };
    let d = Decode {
        strategy: Strategy::Beam,
        num_beams: 2,
        num_return_sequences: 2,
        max_new_tokens: Some(3),
        bad_words_ids: bad,
        ..Decode::default()
    };
    let out = generate(&mut Table(m), &[vec![0]], &no_eos(d, 9));
    assert_eq!(out[0][0].tokens, vec![0, 2, 3, 3]);
    assert_eq!(out[0][1].score, f64::NEG_INFINITY, "{:?}", out[0]);
    // The −∞ beam took the first candidate in flat order (beam 0 before beam 1, then by token)
    // at steps 2 and 3.
    assert_eq!(out[0][1].tokens, vec![0, 2, 3, 0]);
}

#[test]
fn warpers_order_minus_zero_and_zero_as_equal() {
    // torch sorts −0.0 and 0.0 as equal (a stable order keeps their indices' order); kiln
    // sorted −0.0 first, so top-p removed a different one of the tied tokens. Checked against
    // transformers 4.46 `TopPLogitsWarper(0.7)`: it keeps tokens 0, 2, 5 and 7.
    let scores = [0.5, 0.0, 1.0, 0.0, -0.5, 1.5, 0.0, -0.0];
    let d = Decode {
        top_k: 0,
        top_p: 0.7,
        ..Decode::default()
    };
    assert_eq!(kept(d, &scores, 1), vec![0, 2, 5, 7]);
}

#[test]
fn typical_p_accumulates_the_softmax_of_the_sorted_scores_as_transformers() {
    // transformers 4.46 `TypicalLogitsWarper`: the mass is `softmax(sorted scores).cumsum()`
    // (accumulated in f64 by torch's CPU cumsum), compared with typical_p in f32. kiln summed
    // exp(log-softmax) in f32 and kept token 21 too on this row (found by a randomized
    // comparison with transformers: 1 row in 4000 differed).
    let row: Vec<f32> = vec![
        -1.6061692,
        2.3164103,
        4.3453174,
        0.2973928,
        1.2089149,
        1.4450159,
        3.8093123,
        0.80602956,
        0.13190039,
        4.5752583,
        0.90617067,
        0.42965212,
        -3.4170182,
        3.1229057,
        0.6089068,
        -1.970892,
        3.551914,
        -3.761173,
        0.4008596,
        2.0557811,
        1.9744726,
        1.3302068,
        -1.9150195,
        0.6425746,
        1.2006793,
        0.8421002,
        0.8404408,
        1.67466,
        0.3156007,
        -1.2634462,
        -0.3736669,
        -2.8555954,
        3.2934198,
        -1.1246606,
        2.4236805,
        -0.04463846,
        2.6491957,
        -3.227798,
        -1.7913129,
        0.32765487,
        1.2962443,
        1.912521,
        3.4659579,
        -1.1678952,
        1.0345957,
        3.0728545,
        3.2080617,
        0.51074564,
        0.7837133,
        0.2106002,
        2.2201684,
        2.1208153,
        0.52342296,
        -4.19101,
        1.6413954,
        2.6824226,
        0.883069,
        -3.799621,
        -0.44716617,
        -0.6229192,
        -0.5562629,
        0.44907364,
        1.4694237,
        -1.1473181,
    ];
    let d = Decode {
        top_k: 0,
        typical_p: 0.9,
        ..Decode::default()
    };
    let want = vec![
        1, 2, 5, 6, 9, 13, 16, 19, 20, 27, 32, 34, 36, 41, 42, 45, 46, 50, 51, 54, 55, 62,
    ];
    assert_eq!(kept(d, &row, 1), want);
}

#[test]
fn diversity_penalty_is_subtracted_once_times_the_count() {
    // transformers 4.46 `HammingDiversityLogitsProcessor`: scores −= penalty · bincount (f32),
    // one subtraction; kiln subtracted the penalty once per earlier choice, which rounds
    // differently: −0.1 − 2 · 1.1 = −2.3 in f32, but −0.1 − 1.1 − 1.1 = −2.3000002.
    let p = Processors::new(&Decode::default(), Some(EOS), 1, 1);
    let mut s = vec![0.0, -0.1, 0.0];
    p.process(&[2], &mut s, Some((&[1, 1], 1.1)));
    assert_eq!(s[1], -0.1f32 - 2.0 * 1.1f32);
    assert_eq!(s[1], -2.3f32);
}

#[test]
fn log_softmax_subtracts_the_max_then_the_log_sum_as_torch() {
    // torch's CPU log_softmax computes (x − max) − log Σ exp(x − max); kiln computed
    // x − (max + log Σ), which rounds differently far from 0. Expected values from
    // torch.log_softmax (2.15, CPU).
    let x = [-42.37135f32, -43.660522, -39.797886];
    let want = [-2.666_301_f32, -3.955_474_1, -0.092_837_565];
    assert_eq!(kiln::decode::process::log_softmax(&x), want);
}

/// Processors skip an encoder-decoder's source: a repetition penalty does not touch tokens
/// that occur only in the source.
#[test]
fn processors_ignore_the_source() {
    let d = Decode {
        repetition_penalty: 2.0,
        ..Decode::default()
    };
    let p = Processors::new(&d, Some(EOS), 4, 1).skipping(3);
    let mut s = vec![1.0, 4.0, -3.0, 2.0];
    // Source [1, 2, 3], then the decoder's [3].
    p.process(&[1, 2, 3, 3], &mut s, None);
    assert_eq!(s, vec![1.0, 4.0, -3.0, 1.0]);
}
