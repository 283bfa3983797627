//! The rule-extrapolation grammars (Mészáros et al., NeurIPS 2024), exactly as in
//! `shared/reference/rule-extrapolation.md`: token ids, training-data generators, test prompts,
//! the in-/out-of-distribution split, the two rules of each language, and the metrics computed
//! on greedy completions.

use crate::spec::recipe::Language;
use crate::util::Rng;

/// Start of sequence.
pub const SOS: u8 = 0;
/// End of sequence.
pub const EOS: u8 = 1;
/// Padding.
pub const PAD: u8 = 2;
/// `a` (a-grammars) or `(` (bracket grammars).
pub const A: u8 = 3;
/// `b` or `)`.
pub const B: u8 = 4;
/// `c` or `[`.
pub const C: u8 = 5;
/// `]`.
pub const CLOSE_BRACKET: u8 = 6;
/// `(` in the bracket grammars.
pub const OPEN_PAREN: u8 = A;
/// `)` in the bracket grammars.
pub const CLOSE_PAREN: u8 = B;
/// `[` in the bracket grammars.
pub const OPEN_BRACKET: u8 = C;

fn positions(s: &[u8], t: u8) -> impl Iterator<Item = usize> + '_ {
    s.iter()
        .enumerate()
        .filter(move |(_, &x)| x == t)
        .map(|(i, _)| i)
}

fn count(s: &[u8], t: u8) -> usize {
    s.iter().filter(|&&x| x == t).count()
}

/// True if there are no `x` or no `y`, else every `x` precedes every `y`.
fn before(s: &[u8], x: u8, y: u8) -> bool {
    match (positions(s, x).max(), positions(s, y).min()) {
        (Some(last_x), Some(first_y)) => last_x < first_y,
        _ => true,
    }
}

/// `as_before_bs`.
pub fn as_before_bs(s: &[u8]) -> bool {
    before(s, A, B)
}

/// `as_before_bs_before_cs` (reference §1.2).
pub fn as_before_bs_before_cs(s: &[u8]) -> bool {
    let (has_a, has_b, has_c) = (s.contains(&A), s.contains(&B), s.contains(&C));
    if has_c {
        if has_b {
            if has_a {
                before(s, A, B) && before(s, B, C)
            } else {
                before(s, B, C)
            }
        } else {
            before(s, A, C)
        }
    } else {
        as_before_bs(s)
    }
}

/// `bs_before_as`: false without a `b`; true without an `a`; else every b precedes every a.
pub fn bs_before_as(s: &[u8]) -> bool {
    if !s.contains(&B) {
        return false;
    }
    before(s, B, A)
}

/// Counter over one bracket type only: never negative, zero at the end.
pub fn matched(s: &[u8], open: u8, close: u8) -> bool {
    let mut depth: i64 = 0;
    for &t in s {
        if t == open {
            depth += 1;
        } else if t == close {
            depth -= 1;
            if depth < 0 {
                return false;
            }
        }
    }
    depth == 0
}

/// Full Dyck-2 membership: one stack, types must match.
pub fn dyck(s: &[u8]) -> bool {
    let mut stack = Vec::new();
    for &t in s {
        match t {
            OPEN_PAREN | OPEN_BRACKET => stack.push(t),
            CLOSE_PAREN if stack.pop() != Some(OPEN_PAREN) => return false,
            CLOSE_BRACKET if stack.pop() != Some(OPEN_BRACKET) => return false,
            _ => {}
        }
    }
    stack.is_empty()
}

/// `begins_with_b`: the first token after SOS (or the first token) is `b`.
pub fn begins_with_b(s: &[u8]) -> bool {
    match s {
        [SOS, second, ..] => *second == B,
        [first, ..] => *first == B,
        [] => false,
    }
}

/// Even number of `a` after the last `b` (true without `a`).
pub fn even_as_at_end(s: &[u8]) -> bool {
    let start = positions(s, B).max().map_or(0, |i| i + 1);
    count(&s[start..], A).is_multiple_of(2)
}

/// Rule 1 of a language, on the whole sequence.
pub fn rule1(lang: Language, s: &[u8]) -> bool {
    match lang {
        Language::ANbN => count(s, A) == count(s, B),
        Language::ANbNcN => count(s, A) == count(s, B) && count(s, B) == count(s, C),
        Language::BaN => count(s, A).is_multiple_of(2),
        Language::BbaN => even_as_at_end(s),
        Language::Dyck | Language::CsDyck => matched(s, OPEN_BRACKET, CLOSE_BRACKET),
    }
}

/// Rule 2 of a language, on the whole sequence.
pub fn rule2(lang: Language, s: &[u8]) -> bool {
    match lang {
        Language::ANbN => as_before_bs(s),
        Language::ANbNcN => as_before_bs_before_cs(s),
        Language::BaN => begins_with_b(s),
        Language::BbaN => bs_before_as(s),
        Language::Dyck | Language::CsDyck => matched(s, OPEN_PAREN, CLOSE_PAREN),
    }
}

/// Membership in the language.
pub fn grammatical(lang: Language, s: &[u8]) -> bool {
    match lang {
        Language::Dyck => dyck(s),
        _ => rule1(lang, s) && rule2(lang, s),
    }
}

/// Test-prompt length (tokens after SOS) of a language.
pub fn prompt_length(lang: Language) -> usize {
    match lang {
        Language::ANbN | Language::BaN | Language::BbaN => 8,
        Language::ANbNcN => 5,
        Language::Dyck | Language::CsDyck => 6,
    }
}

/// Rule 2 on the completion only (reference §1.5), given the whole sequence `s` (SOS, prompt,
/// completion).
pub fn rule2_completion(lang: Language, s: &[u8]) -> bool {
    let tpl = prompt_length(lang);
    match lang {
        Language::Dyck | Language::CsDyck => {
            matched(s.get(3..).unwrap_or(&[]), OPEN_PAREN, CLOSE_PAREN)
        }
        _ => {
            let c = s.get(tpl + 1..).unwrap_or(&[]);
            match lang {
                Language::ANbN => as_before_bs(c),
                Language::ANbNcN => as_before_bs_before_cs(c),
                Language::BaN => c.first() == Some(&B),
                Language::BbaN => bs_before_as(c),
                Language::Dyck | Language::CsDyck => unreachable!(),
            }
        }
    }
}

/// Whether a prompt (without SOS) can still be completed into a word of the language.
pub fn in_distribution(lang: Language, p: &[u8]) -> bool {
    let (a, b, c) = (count(p, A), count(p, B), count(p, C));
    match lang {
        Language::ANbN => as_before_bs(p) && a >= b,
        Language::ANbNcN => {
            if c == 0 {
                b == 0 || (as_before_bs(p) && a >= b)
            } else {
                as_before_bs(p) && before(p, B, C) && a == b && b >= c
            }
        }
        Language::BaN | Language::BbaN => p.first() == Some(&B),
        Language::Dyck | Language::CsDyck => p.first() == Some(&OPEN_PAREN),
    }
}

/// A word of the nested Dyck generator for length budget `n`: a random walk that opens `(` or
/// `[` on an empty stack, otherwise picks uniformly among `(`, `[` and the matching closer,
/// closes when `len(word) + len(stack) >= n`, and stops as soon as the stack empties.
pub fn dyck_word(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut word = Vec::new();
    let mut stack: Vec<u8> = Vec::new();
    loop {
        let closer = |o: u8| {
            if o == OPEN_PAREN {
                CLOSE_PAREN
            } else {
                CLOSE_BRACKET
            }
        };
        if stack.is_empty() {
            let o = if rng.next_u64().is_multiple_of(2) {
                OPEN_PAREN
            } else {
                OPEN_BRACKET
            };
            word.push(o);
            stack.push(o);
        } else if word.len() + stack.len() >= n {
            word.push(closer(stack.pop().expect("non-empty")));
        } else {
            let top = *stack.last().expect("non-empty");
            match rng.next_u64() % 3 {
                0 => {
                    word.push(OPEN_PAREN);
                    stack.push(OPEN_PAREN);
                }
                1 => {
                    word.push(OPEN_BRACKET);
                    stack.push(OPEN_BRACKET);
                }
                _ => {
                    word.push(closer(top));
                    stack.pop();
                }
            }
        }
        if stack.is_empty() {
            return word;
        }
    }
}

/// A word of the not-nested generator of exactly length `n` (even): two independent counters;
/// each step picks uniformly among the allowed moves (open either type while the word can
/// still be closed in time, close a type that is open); near the end only closing is allowed.
pub fn cs_dyck_word(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut word = Vec::with_capacity(n);
    let (mut parens, mut brackets) = (0usize, 0usize);
    while word.len() < n {
        let mut moves = Vec::with_capacity(4);
        if word.len() + parens + brackets + 2 <= n {
            moves.push(OPEN_PAREN);
            moves.push(OPEN_BRACKET);
        }
        if parens > 0 {
            moves.push(CLOSE_PAREN);
        }
        if brackets > 0 {
            moves.push(CLOSE_BRACKET);
        }
        let m = moves[(rng.next_u64() % moves.len() as u64) as usize];
        match m {
            OPEN_PAREN => parens += 1,
            OPEN_BRACKET => brackets += 1,
            CLOSE_PAREN => parens -= 1,
            _ => brackets -= 1,
        }
        word.push(m);
    }
    word
}

fn uniform(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

fn shuffle(rng: &mut Rng, v: &mut [u8]) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Training words. aNbN and aNbNcN: all words up to `max_length` (train = val = test, as in
/// the paper); the other languages: `count` sampled words.
pub fn words(lang: Language, max_length: usize, count_: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    match lang {
        Language::ANbN => (1..=max_length / 2)
            .map(|n| [vec![A; n], vec![B; n]].concat())
            .collect(),
        Language::ANbNcN => (1..=max_length / 3)
            .map(|n| [vec![A; n], vec![B; n], vec![C; n]].concat())
            .collect(),
        Language::BaN => (0..count_)
            .map(|_| {
                let l = uniform(rng, 1, max_length);
                let k = uniform(rng, 0, (l - 1) / 2);
                let mut rest = [vec![A; 2 * k], vec![B; l - 1 - 2 * k]].concat();
                shuffle(rng, &mut rest);
                [vec![B], rest].concat()
            })
            .collect(),
        Language::BbaN => (0..count_)
            .map(|_| {
                let l = uniform(rng, 1, max_length);
                let k = uniform(rng, 0, (l - 1) / 2);
                [vec![B; l - 2 * k], vec![A; 2 * k]].concat()
            })
            .collect(),
        Language::Dyck | Language::CsDyck => (0..count_)
            .map(|_| {
                let n = 2 * uniform(rng, 1, max_length / 2);
                if lang == Language::Dyck {
                    dyck_word(rng, n)
                } else {
                    cs_dyck_word(rng, n)
                }
            })
            .collect(),
    }
}

/// `SOS word EOS` right-padded with PAD to `max_length + 2`.
pub fn encode(word: &[u8], max_length: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(max_length + 2);
    s.push(SOS);
    s.extend_from_slice(word);
    s.push(EOS);
    s.resize(max_length + 2, PAD);
    s
}

/// The test prompts (each starting with SOS), split into (in-distribution, out-of-distribution).
pub fn prompts(lang: Language, rng: &mut Rng) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let tpl = prompt_length(lang);
    let all_over = |alphabet: &[u8]| -> Vec<Vec<u8>> {
        let k = alphabet.len();
        (0..k.pow(tpl as u32))
            .map(|mut i| {
                let mut p = vec![0; tpl];
                for slot in p.iter_mut().rev() {
                    *slot = alphabet[i % k];
                    i /= k;
                }
                p
            })
            .collect()
    };
    let raw: Vec<Vec<u8>> = match lang {
        Language::ANbN | Language::BaN => all_over(&[A, B]),
        Language::ANbNcN => all_over(&[A, B, C]),
        Language::BbaN => {
            let mut v: Vec<Vec<u8>> = (0..128)
                .map(|_| {
                    let j = uniform(rng, 1, 7);
                    [vec![B; 8 - j], vec![A; j]].concat()
                })
                .collect();
            v.extend((0..128).map(|_| {
                let j = uniform(rng, 1, 6);
                [vec![A], vec![B; 7 - j], vec![A; j]].concat()
            }));
            v
        }
        Language::Dyck | Language::CsDyck => {
            let mut v = Vec::new();
            for _ in 0..32 {
                let w = loop {
                    let w = if lang == Language::Dyck {
                        dyck_word(rng, 6)
                    } else {
                        cs_dyck_word(rng, 6)
                    };
                    if w.len() == 6 {
                        break w;
                    }
                };
                v.push([vec![OPEN_PAREN, OPEN_BRACKET], w.clone()].concat());
                v.push([vec![CLOSE_PAREN, OPEN_BRACKET], w].concat());
            }
            v
        }
    };
    let (id, ood): (Vec<_>, Vec<_>) = raw.into_iter().partition(|p| in_distribution(lang, p));
    let with_sos = |v: Vec<Vec<u8>>| v.into_iter().map(|p| [vec![SOS], p].concat()).collect();
    (with_sos(id), with_sos(ood))
}

/// Metrics of completed sequences (prompt + generated tokens).
///
/// A rate over zero sequences (0/0) is undefined: `None` (null in summary.json, "-" in the
/// printed table), never 0. The rule rates are over the finished sequences, so they are all
/// `None` when nothing finished; `finished_n` says over how many they are taken.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredMetrics")]
pub struct Metrics {
    /// Number of sequences.
    pub n: usize,
    /// Number of sequences that contain EOS (the denominator of the rule rates).
    pub finished_n: usize,
    /// Fraction that contain EOS (`finished_n / n`).
    pub finished: Option<f64>,
    /// Among finished: fraction satisfying rule 1.
    pub rule1: Option<f64>,
    /// Among finished: fraction satisfying rule 2.
    pub rule2: Option<f64>,
    /// Among finished: fraction whose completion satisfies rule 2.
    pub rule2_completion: Option<f64>,
    /// Among finished: fraction in the language.
    pub grammatical: Option<f64>,
}

/// `Metrics` as summary.json stores it, including summaries written before `finished_n`
/// existed (the count is then recovered from the fraction) and before undefined rates were
/// stored as null (their 0.0 over zero finished sequences becomes `None`).
#[derive(serde::Deserialize)]
struct StoredMetrics {
    n: usize,
    #[serde(default)]
    finished_n: Option<usize>,
    finished: Option<f64>,
    rule1: Option<f64>,
    rule2: Option<f64>,
    rule2_completion: Option<f64>,
    grammatical: Option<f64>,
}

impl From<StoredMetrics> for Metrics {
    fn from(s: StoredMetrics) -> Self {
        let finished_n = s
            .finished_n
            .unwrap_or_else(|| s.finished.map_or(0, |f| (f * s.n as f64).round() as usize));
        let over_finished = |x: Option<f64>| x.filter(|_| finished_n > 0);
        Metrics {
            n: s.n,
            finished_n,
            finished: s.finished.filter(|_| s.n > 0),
            rule1: over_finished(s.rule1),
            rule2: over_finished(s.rule2),
            rule2_completion: over_finished(s.rule2_completion),
            grammatical: over_finished(s.grammatical),
        }
    }
}

impl Metrics {
    /// Whether some rate is undefined (nothing to take it over).
    pub fn has_undefined(&self) -> bool {
        [
            self.finished,
            self.rule1,
            self.rule2,
            self.rule2_completion,
            self.grammatical,
        ]
        .iter()
        .any(Option::is_none)
    }
}

/// `k / n`, or `None` when `n` is 0: a rate over nothing is undefined, not 0.
pub fn frac(k: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

/// Compute the metrics of `sequences` (SOS, prompt, then generated tokens), as the reference
/// does: a sequence is finished if it contains EOS after the prompt; for finished ones,
/// everything after the first EOS becomes EOS and the checks run on the whole sequence.
pub fn metrics(lang: Language, sequences: &[Vec<u8>]) -> Metrics {
    let mut finished = 0;
    let (mut r1, mut r2, mut r2c, mut gram) = (0, 0, 0, 0);
    for s in sequences {
        let Some(end) = s.iter().position(|&t| t == EOS) else {
            continue;
        };
        finished += 1;
        let s = &s[..end];
        r1 += usize::from(rule1(lang, s));
        r2 += usize::from(rule2(lang, s));
        r2c += usize::from(rule2_completion(lang, s));
        gram += usize::from(grammatical(lang, s));
    }
    Metrics {
        n: sequences.len(),
        finished_n: finished,
        finished: frac(finished, sequences.len()),
        rule1: frac(r1, finished),
        rule2: frac(r2, finished),
        rule2_completion: frac(r2c, finished),
        grammatical: frac(gram, finished),
    }
}

/// The authors' chance levels for a uniform random next-token model: (OOD R1, OOD R2
/// completion) (reference §1.5).
pub fn chance(lang: Language) -> (f64, f64) {
    match lang {
        Language::BaN => (0.5, 1.0 / 3.0),
        Language::BbaN => (0.5, 0.75),
        Language::ANbN => (0.154, 0.4445),
        Language::Dyck | Language::CsDyck => (0.1273, 0.382),
        Language::ANbNcN => (0.00334, 0.5925),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Language; 6] = [
        Language::ANbN,
        Language::ANbNcN,
        Language::BaN,
        Language::BbaN,
        Language::Dyck,
        Language::CsDyck,
    ];

    #[test]
    fn id_ood_split_matches_the_reference_counts() {
        let mut rng = Rng::new(0);
        let (id, ood) = prompts(Language::ANbN, &mut rng);
        assert_eq!((id.len(), ood.len()), (5, 251));
        let ids: Vec<Vec<u8>> = id.iter().map(|p| p[1..].to_vec()).collect();
        for w in ["aaaaaaaa", "aaaaaaab", "aaaaaabb", "aaaaabbb", "aaaabbbb"] {
            let w: Vec<u8> = w.bytes().map(|c| if c == b'a' { A } else { B }).collect();
            assert!(ids.contains(&w));
        }
        let (id, ood) = prompts(Language::ANbNcN, &mut rng);
        assert_eq!((id.len(), ood.len()), (4, 239));
        let (id, ood) = prompts(Language::BaN, &mut rng);
        assert_eq!((id.len(), ood.len()), (128, 128));
        let (id, ood) = prompts(Language::BbaN, &mut rng);
        assert_eq!((id.len(), ood.len()), (128, 128));
        for lang in [Language::Dyck, Language::CsDyck] {
            let (id, ood) = prompts(lang, &mut rng);
            assert_eq!((id.len(), ood.len()), (32, 32));
            assert!(id
                .iter()
                .all(|p| p.len() == 9 && p[1] == OPEN_PAREN && p[2] == OPEN_BRACKET));
            assert!(ood.iter().all(|p| p[1] == CLOSE_PAREN));
        }
    }

    #[test]
    fn generated_training_words_are_in_their_language() {
        let mut rng = Rng::new(7);
        for lang in ALL {
            let ws = words(lang, 64, 300, &mut rng);
            assert!(!ws.is_empty());
            for w in &ws {
                assert!(w.len() <= 64, "{lang:?}: word of length {}", w.len());
                assert!(grammatical(lang, w), "{lang:?}: {w:?} is not grammatical");
            }
        }
        assert_eq!(words(Language::ANbN, 256, 0, &mut rng).len(), 128);
        assert_eq!(words(Language::ANbNcN, 256, 0, &mut rng).len(), 85);
        // The nested generator yields irreducible words (one outer pair).
        for _ in 0..200 {
            let w = dyck_word(&mut rng, 20);
            assert!(dyck(&w));
            assert!((1..w.len()).all(|i| !dyck(&w[..i])), "{w:?} is reducible");
        }
        // The not-nested generator fills its length exactly and may cross.
        assert!((0..200)
            .map(|_| cs_dyck_word(&mut rng, 12))
            .all(|w| w.len() == 12));
        assert!((0..500).any(|_| !dyck(&cs_dyck_word(&mut rng, 8))));
    }

    #[test]
    fn rule_checks_follow_the_reference() {
        let s = |t: &str| -> Vec<u8> {
            t.bytes()
                .map(|c| match c {
                    b'a' | b'(' => A,
                    b'b' | b')' => B,
                    b'c' | b'[' => C,
                    b']' => CLOSE_BRACKET,
                    _ => panic!(),
                })
                .collect()
        };
        assert!(as_before_bs(&s("aab")) && as_before_bs(&s("bbb")) && !as_before_bs(&s("aba")));
        assert!(
            as_before_bs_before_cs(&s("abc"))
                && !as_before_bs_before_cs(&s("acb"))
                && as_before_bs_before_cs(&s("bcc"))
        );
        assert!(
            !bs_before_as(&s("aa"))
                && bs_before_as(&s("bb"))
                && bs_before_as(&s("bbaa"))
                && !bs_before_as(&s("bab"))
        );
        assert!(
            even_as_at_end(&s("abaa")) && !even_as_at_end(&s("ba")) && even_as_at_end(&s("bbb"))
        );
        assert!(dyck(&s("([])")) && !dyck(&s("([)]")));
        assert!(
            grammatical(Language::CsDyck, &s("([)]")) && !grammatical(Language::Dyck, &s("([)]"))
        );
        assert!(begins_with_b(&[SOS, B, A]) && !begins_with_b(&[SOS, A]));
        assert!(grammatical(Language::BaN, &s("baab")) && !grammatical(Language::BaN, &s("aab")));
    }

    #[test]
    fn metrics_truncate_at_the_first_eos() {
        // aNbN prompt "aaaaaaab" (ID) completed with 7 b's then EOS: grammatical.
        let mut seq = vec![SOS];
        seq.extend([A; 7]);
        seq.push(B);
        seq.extend([B; 6]);
        seq.push(EOS);
        seq.extend([A, A]); // after EOS: ignored
        let unfinished = vec![SOS, A, B, A];
        let m = metrics(Language::ANbN, &[seq, unfinished]);
        assert_eq!((m.n, m.finished_n), (2, 1));
        assert_eq!(m.finished, Some(0.5));
        assert_eq!(
            (m.rule1, m.rule2, m.grammatical, m.rule2_completion),
            (Some(1.0), Some(1.0), Some(1.0), Some(1.0))
        );
    }

    #[test]
    fn metrics_over_zero_finished_sequences_are_undefined_not_zero() {
        // baN prompts that never reach EOS: 0/0 for every rule rate.
        let unfinished = vec![vec![SOS, B, A, A, B]; 3];
        let m = metrics(Language::BaN, &unfinished);
        assert_eq!((m.n, m.finished_n, m.finished), (3, 0, Some(0.0)));
        assert_eq!(
            (m.rule1, m.rule2, m.rule2_completion, m.grammatical),
            (None, None, None, None)
        );
        assert!(m.has_undefined());
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["finished_n"], 0);
        assert_eq!(v["finished"], 0.0);
        for k in ["rule1", "rule2", "rule2_completion", "grammatical"] {
            assert!(v[k].is_null(), "{k}: {v}");
        }
        assert_eq!(serde_json::from_value::<Metrics>(v).unwrap(), m);
        // No sequences at all: even the finished fraction is undefined.
        let none = metrics(Language::BaN, &[]);
        assert_eq!((none.n, none.finished_n, none.finished), (0, 0, None));
        assert!(serde_json::to_value(none).unwrap()["finished"].is_null());
    }

    #[test]
    fn mixed_metrics_count_only_the_finished_sequences() {
        let s = |w: &[u8], end: bool| {
            let mut v = vec![SOS];
            v.extend_from_slice(w);
            if end {
                v.push(EOS);
                v.push(EOS);
            }
            v
        };
        let seqs = [
            s(&[B, A, A], true),     // R1, R2: grammatical
            s(&[B, A], true),        // R2 only
            s(&[A, A], true),        // R1 only
            s(&[B, A, A, B], false), // unfinished: not counted
        ];
        let m = metrics(Language::BaN, &seqs);
        assert_eq!((m.n, m.finished_n), (4, 3));
        assert_eq!(m.finished, Some(0.75));
        assert_eq!(m.rule1, Some(2.0 / 3.0));
        assert_eq!(m.rule2, Some(2.0 / 3.0));
        assert_eq!(m.grammatical, Some(1.0 / 3.0));
        assert!(!m.has_undefined());
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["finished_n"], 3);
        assert_eq!(v["rule1"], 2.0 / 3.0);
        assert_eq!(frac(0, 0), None);
        assert_eq!(frac(0, 5), Some(0.0));
    }

    #[test]
    fn summaries_written_before_undefined_rates_still_load() {
        // The old form: no finished_n, and 0.0 for a rate over zero finished sequences.
        let old = serde_json::json!({"n": 128, "finished": 0.0, "rule1": 0.0, "rule2": 0.0,
            "rule2_completion": 0.0, "grammatical": 0.0});
        let m: Metrics = serde_json::from_value(old).unwrap();
        assert_eq!(
            (m.n, m.finished_n, m.finished, m.rule1),
            (128, 0, Some(0.0), None)
        );
        let old = serde_json::json!({"n": 4, "finished": 0.75, "rule1": 0.5, "rule2": 0.25,
            "rule2_completion": 1.0, "grammatical": 0.25});
        let m: Metrics = serde_json::from_value(old).unwrap();
        assert_eq!((m.finished_n, m.rule1, m.rule2), (3, Some(0.5), Some(0.25)));
    }

    #[test]
    fn encoding_pads_to_max_length_plus_two() {
        assert_eq!(encode(&[A, B], 4), vec![SOS, A, B, EOS, PAD, PAD]);
    }
}
