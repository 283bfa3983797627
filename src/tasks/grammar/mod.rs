//! The rule-extrapolation grammars (Mészáros et al., NeurIPS 2024), exactly as in
//! `shared/reference/rule-extrapolation.md`: token ids, training-data generators, test prompts,
//! the in-/out-of-distribution split, the two rules of each language, and the metrics computed
//! on greedy completions.

mod generators;
mod metrics;

pub use generators::{cs_dyck_word, dyck_word, encode, prompts, words};
pub use metrics::{chance, frac, metrics, Metrics};

use crate::spec::recipe::Language;

use crate::spec::recipe::grammar_ids;

/// Start of sequence.
pub const SOS: u8 = grammar_ids::SOS as u8;
/// End of sequence.
pub const EOS: u8 = grammar_ids::EOS as u8;
/// Padding.
pub const PAD: u8 = grammar_ids::PAD as u8;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
