//! The grammars' training-data generators and test prompts.

use super::{
    in_distribution, prompt_length, A, B, C, CLOSE_BRACKET, CLOSE_PAREN, EOS, OPEN_BRACKET,
    OPEN_PAREN, PAD, SOS,
};
use crate::spec::recipe::Language;
use crate::util::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::grammar::{dyck, grammatical};

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
    fn encoding_pads_to_max_length_plus_two() {
        assert_eq!(encode(&[A, B], 4), vec![SOS, A, B, EOS, PAD, PAD]);
    }
}
