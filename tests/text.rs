//! The text task: the token cache (built once, rebuilt when the corpus changes, nothing left
//! half-written), the three tokenizers, nanoGPT token files, bad input, and a run end to end
//! through the CLI with its report and `kiln generate`.

mod common;
use common::{kiln, ok, tmp_path};
use kiln::spec::recipe::TextTask;
use kiln::tasks::text::{self, TextError};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = tmp_path("text", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn task(path: &Path, tokenizer: &str, context: u32, extra: serde_json::Value) -> TextTask {
    let mut v = serde_json::json!({
        "path": path.to_string_lossy(),
        "tokenizer": tokenizer,
        "context": context,
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, x) in m {
            v[k] = x;
        }
    }
    serde_json::from_value(v).unwrap()
}

/// The cache entries (tokens and descriptions) and anything else left in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn english(repeat: usize) -> String {
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. "
        .repeat(repeat)
}

#[test]
fn a_char_corpus_is_tokenized_once_and_rebuilt_when_it_changes() {
    let d = tmp("char");
    let (corpus, cache) = (d.join("a.txt"), d.join("cache"));
    std::fs::write(&corpus, english(20)).unwrap();
    let t = task(&corpus, "char", 16, serde_json::json!({}));
    let c = text::open(&t, &cache).unwrap();
    let chars: std::collections::BTreeSet<char> = english(1).chars().collect();
    assert_eq!(c.vocab, chars.len());
    let n = english(20).chars().count();
    assert_eq!(c.train.len() + c.val.len() + c.test.len(), n);
    let (a, b, e) = kiln::tasks::split_lengths(n, 0.1, 0.1);
    assert_eq!((c.train.len(), c.val.len(), c.test.len()), (a, b, e));
    assert!(b > 0 && e > 0);
    // The parts are contiguous and decode back to the text.
    let tok = c.tokenizer.as_ref().unwrap();
    let all: Vec<u32> = c.train.tokens.slice(0..n);
    assert_eq!(tok.decode(&all), english(20));
    assert_eq!(c.units_per_token, Some(1.0));
    let first = entries(&cache);
    assert_eq!(first.len(), 2, "{first:?}");
    let tokens_file = cache.join(first.iter().find(|e| e.ends_with(".tokens")).unwrap());
    let built = std::fs::metadata(&tokens_file).unwrap().modified().unwrap();
    // Opened again: the same entry, not rewritten.
    std::thread::sleep(std::time::Duration::from_millis(20));
    text::open(&t, &cache).unwrap();
    assert_eq!(entries(&cache), first);
    assert_eq!(
        std::fs::metadata(&tokens_file).unwrap().modified().unwrap(),
        built
    );
    // A changed corpus makes a new entry.
    std::fs::write(&corpus, english(21)).unwrap();
    let c2 = text::open(&t, &cache).unwrap();
    assert_eq!(
        c2.train.len() + c2.val.len() + c2.test.len(),
        english(21).len()
    );
    assert_eq!(entries(&cache).len(), 4);
    // A cache entry whose ids were cut short is rebuilt, not read.
    std::fs::write(&tokens_file, [0u8; 4]).unwrap();
    std::fs::write(&corpus, english(20)).unwrap();
    let c3 = text::open(&t, &cache).unwrap();
    assert_eq!(c3.train.len() + c3.val.len() + c3.test.len(), n);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_folder_is_read_in_path_order_and_bytes_need_no_utf8() {
    let d = tmp("folder");
    let dir = d.join("corpus");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b.txt"), "bbbb".repeat(50)).unwrap();
    std::fs::write(dir.join("a.txt"), "aaaa".repeat(50)).unwrap();
    std::fs::write(dir.join("sub/c.txt"), [0xffu8, 0xfe].repeat(100)).unwrap();
    std::fs::write(dir.join(".hidden"), "zzz").unwrap();
    let c = text::open(
        &task(&dir, "byte", 8, serde_json::json!({})),
        &d.join("cache"),
    )
    .unwrap();
    assert_eq!(c.vocab, 256);
    let n = c.train.len() + c.val.len() + c.test.len();
    assert_eq!(n, 600);
    let ids = c.train.tokens.slice(0..n);
    assert_eq!(ids[0], u32::from(b'a'));
    assert_eq!(ids[200], u32::from(b'b'));
    assert_eq!(ids[400], 0xff);
    // As characters, the same folder is not text.
    let e = text::open(
        &task(&dir, "char", 8, serde_json::json!({})),
        &d.join("cache"),
    )
    .err()
    .unwrap();
    assert!(matches!(e, TextError::NotUtf8 { offset: 0, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("c.txt") && msg.contains("is not UTF-8"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bad_text_leaves_nothing_in_the_cache() {
    let d = tmp("bad");
    let (corpus, cache) = (d.join("a.txt"), d.join("cache"));
    let mut bytes = english(30).into_bytes();
    bytes[1000] = 0xc3; // a lone lead byte
    bytes[1001] = b'x';
    std::fs::write(&corpus, &bytes).unwrap();
    let e = text::open(&task(&corpus, "char", 16, serde_json::json!({})), &cache)
        .err()
        .unwrap();
    assert!(matches!(e, TextError::NotUtf8 { offset: 1000, .. }), "{e}");
    assert!(
        entries(&cache).iter().all(|e| !e.ends_with(".tokens")),
        "{:?}",
        entries(&cache)
    );
    // Too short for the context: each part must hold one window.
    std::fs::write(&corpus, english(2)).unwrap();
    let e = text::open(&task(&corpus, "char", 64, serde_json::json!({})), &cache)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("too short for this context") && e.contains("validation part"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

const WORDS: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1,"cat":2,"sat":3,"on":4,"mat":5,".":6},
"unk_token":"[UNK]"}}"#;

#[test]
fn a_tokenizer_json_tokenizes_and_a_bad_one_is_a_clear_error() {
    let d = tmp("hf");
    let (corpus, cache, tj) = (d.join("a.txt"), d.join("cache"), d.join("tokenizer.json"));
    std::fs::write(&tj, WORDS).unwrap();
    std::fs::write(&corpus, "the cat sat on the mat.\n".repeat(40)).unwrap();
    let t = task(&corpus, &tj.to_string_lossy(), 8, serde_json::json!({}));
    let c = text::open(&t, &cache).unwrap();
    assert_eq!(c.vocab, 7);
    assert_eq!(c.train.tokens.slice(0..7), vec![1, 2, 3, 4, 1, 5, 6]);
    // 24 characters a line, 7 tokens.
    assert!((c.units_per_token.unwrap() - 24.0 / 7.0).abs() < 1e-12);
    // A vocabulary smaller than the tokenizer's ids.
    let small = task(
        &corpus,
        &tj.to_string_lossy(),
        8,
        serde_json::json!({"vocab": 4}),
    );
    let e = text::open(&small, &cache).err().unwrap().to_string();
    assert!(
        e.contains("token id 6") && e.contains("beyond the vocabulary of 4"),
        "{e}"
    );
    // Unreadable: not JSON, and missing.
    std::fs::write(&tj, "{not json").unwrap();
    let e = text::open(&t, &cache).err().unwrap().to_string();
    assert!(e.contains("cannot use the tokenizer"), "{e}");
    std::fs::remove_file(&tj).unwrap();
    let e = text::open(&t, &cache).err().unwrap().to_string();
    assert!(e.contains("cannot read the tokenizer"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

fn write_u16(path: &Path, ids: &[u16]) {
    std::fs::write(
        path,
        ids.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
}

#[test]
fn nanogpt_token_files_are_read_as_they_are() {
    let d = tmp("nanogpt");
    let dir = d.join("bins");
    std::fs::create_dir_all(&dir).unwrap();
    let train: Vec<u16> = (0..400).map(|i| (i % 7) as u16).collect();
    write_u16(&dir.join("train.bin"), &train);
    write_u16(&dir.join("val.bin"), &train[..100]);
    let cache = d.join("cache");
    let c = text::open(
        &task(&dir, "char", 8, serde_json::json!({"vocab": 7})),
        &cache,
    )
    .unwrap();
    assert_eq!((c.train.len(), c.val.len(), c.test.len()), (400, 50, 50));
    assert_eq!(c.test.ids(0, 3), vec![1, 2, 3]); // val.bin[50..]
    assert!(c.units_per_token.is_none() && c.tokenizer.is_none());
    assert!(entries(&cache).is_empty(), "token files need no cache");
    // uint32 ids above a vocabulary of 65536.
    let wide: Vec<u8> = (0..400u32)
        .flat_map(|i| (70_000 + i % 3).to_le_bytes())
        .collect();
    std::fs::write(dir.join("train.bin"), &wide).unwrap();
    std::fs::write(dir.join("val.bin"), &wide).unwrap();
    let c = text::open(
        &task(&dir, "char", 8, serde_json::json!({"vocab": 70_003})),
        &cache,
    )
    .unwrap();
    assert_eq!(c.train.ids(0, 2), vec![70_000, 70_001]);
    // An id beyond the vocabulary, and no vocabulary at all.
    let e = text::open(
        &task(&dir, "char", 8, serde_json::json!({"vocab": 70_002})),
        &cache,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("token id 70002") && e.contains("train.bin"),
        "{e}"
    );
    let e = text::open(&task(&dir, "char", 8, serde_json::json!({})), &cache)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("set `task.vocab`"), "{e}");
    // A tokenizer whose vocabulary the ids do not fit: mismatched.
    write_u16(&dir.join("train.bin"), &train);
    write_u16(&dir.join("val.bin"), &train[..100]);
    let tj = d.join("tokenizer.json");
    std::fs::write(&tj, WORDS.replace(",\".\":6", "")).unwrap();
    let e = text::open(
        &task(&dir, &tj.to_string_lossy(), 8, serde_json::json!({})),
        &cache,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("token id 6") && e.contains("does not match"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_text_run_reports_bits_per_character_beside_the_baselines_and_generates_text() {
    let d = tmp("run");
    let corpus = d.join("corpus.txt");
    std::fs::write(&corpus, english(100)).unwrap();
    let recipe = d.join("recipe.yaml");
    std::fs::write(
        &recipe,
        format!(
            "kind: recipe\nmodel: {}\ntask: {{type: text, path: corpus.txt, context: 32, eval_windows: 16, ngram_order: 3}}\ntrain: {{optimizer: {{type: adamw, lr: 0.003}}, batch_size: 16, steps: 60, eval_every: 30}}\n",
            std::env::current_dir()
                .unwrap()
                .join("models/transformer-modern.yaml")
                .display()
        ),
    )
    .unwrap();
    let env = [("KILN_CACHE_DIR", d.join("cache"))];
    let out = kiln()
        .envs(env.clone())
        .args(["train"])
        .arg(&recipe)
        .arg("--out")
        .arg(d.join("run"))
        .args(["--set", "model.vars.depth=1"])
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains("bits/char") && stdout.contains("Kneser-Ney 3-gram"),
        "{stdout}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/summary.json")).unwrap())
            .unwrap();
    let m = &s["metrics"];
    assert_eq!(m["task"], "text");
    assert_eq!(m["predictions"], 16 * 32);
    // A periodic text: the 3-gram is near certain, the unigram is not.
    let (ngram, uni) = (
        m["ngram"]["bits_per_unit"].as_f64().unwrap(),
        m["unigram"]["bits_per_unit"].as_f64().unwrap(),
    );
    assert!(ngram < 1.0 && uni > 3.0, "{m}");
    assert!(m["model"]["nats_per_token"].as_f64().unwrap().is_finite());
    // The resolved recipe holds the vocabulary read from the corpus.
    let resolved = std::fs::read_to_string(d.join("run/recipe.resolved.yaml")).unwrap();
    let n_chars = english(1)
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        resolved.contains(&format!("\"vocab\": {n_chars}")),
        "{resolved}"
    );
    // Generation prints text that starts with the prompt.
    let g = ok(&kiln()
        .envs(env.clone())
        .arg("generate")
        .arg(d.join("run"))
        .args([
            "--prompt",
            "To be, or not",
            "--set",
            "decode.max_new_tokens=10",
        ])
        .output()
        .unwrap());
    assert!(g.starts_with("To be, or not"), "{g}");
    assert_eq!(g.trim_end_matches('\n').chars().count(), 13 + 10, "{g:?}");
    // A character the corpus lacks is a clear error.
    let bad = kiln()
        .envs(env)
        .arg("generate")
        .arg(d.join("run"))
        .args(["--prompt", "Zebra"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("'Z' does not occur in the corpus"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn decoding_ids_beyond_the_corpus_vocabulary_are_refused_when_it_is_read() {
    let d = tmp("ids");
    std::fs::write(d.join("corpus.txt"), english(20)).unwrap();
    let model = std::env::current_dir()
        .unwrap()
        .join("models/transformer-modern.yaml");
    let recipe = d.join("recipe.yaml");
    let write = |decode: &str| {
        std::fs::write(
            &recipe,
            format!(
                "kind: recipe\nmodel: {}\ntask: {{type: text, path: corpus.txt, context: 16}}\ntrain: {{optimizer: {{type: adamw, lr: 0.003}}, batch_size: 4, steps: 2}}\ndecode: {decode}\n",
                model.display()
            ),
        )
        .unwrap();
    };
    std::env::set_var("KILN_CACHE_DIR", d.join("cache"));
    // The characters of the corpus: fewer than 40 distinct ones.
    write("{eos_token_id: 500, pad_token_id: 3}");
    let e = kiln::compile::recipe(&recipe, &[], false)
        .map(|_| ())
        .expect_err("an eos id beyond the vocabulary")
        .to_string();
    assert!(
        e.contains("eos_token_id") && e.contains("token id 500 is outside the task's vocabulary"),
        "{e}"
    );
    // pad_token_id 3 is a character of the corpus: one error only.
    assert_eq!(e.matches("outside the task's vocabulary").count(), 1, "{e}");
    write("{bad_words_ids: [[1, 400]]}");
    let e = kiln::compile::recipe(&recipe, &[], false)
        .map(|_| ())
        .expect_err("a banned id beyond the vocabulary")
        .to_string();
    assert!(e.contains("bad_words_ids"), "{e}");
    write("{eos_token_id: 2}");
    assert!(kiln::compile::recipe(&recipe, &[], false).is_ok());
    let _ = std::fs::remove_dir_all(d);
}

/// A byte-level BPE tokenizer.json as GPT-2's is built (ByteLevel pre-tokenizer, merges,
/// ByteLevel decoder), trained by the `tokenizers` crate on `corpus` and saved to `out`.
fn train_bpe(corpus: &Path, out: &Path, vocab: usize) {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::TokenizerBuilder;
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        // GPT-2's settings: no space added before the text.
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .build()
        .unwrap();
    tok.train_from_files(&mut trainer, vec![corpus.to_string_lossy().into_owned()])
        .unwrap()
        .save(out, false)
        .unwrap();
}

#[test]
fn a_byte_level_bpe_tokenizer_round_trips_text_and_merges_characters() {
    let d = tmp("bpe");
    let (corpus, cache, tj) = (d.join("a.txt"), d.join("cache"), d.join("tokenizer.json"));
    let text = english(30) + "Naïve café — “quoted” text, ünïcödé and emoji 🦀.\n";
    std::fs::write(&corpus, &text).unwrap();
    train_bpe(&corpus, &tj, 400);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert!(!json["model"]["merges"].as_array().unwrap().is_empty());
    let c = text::open(
        &task(&corpus, &tj.to_string_lossy(), 8, serde_json::json!({})),
        &cache,
    )
    .unwrap();
    // The vocabulary: the 256 byte symbols and the merges, at most what was asked for.
    assert!(c.vocab > 256 && c.vocab <= 400, "{}", c.vocab);
    let tok = c.tokenizer.as_ref().expect("a tokenizer");
    let n = c.train.len() + c.val.len() + c.test.len();
    let ids = c.train.tokens.slice(0..n);
    assert!(ids.iter().all(|&i| (i as usize) < c.vocab));
    // Every character comes back, multi-byte ones included, from fewer tokens than characters.
    assert_eq!(tok.decode(&ids), text);
    assert!(c.units_per_token.unwrap() > 2.0, "{:?}", c.units_per_token);
    let prompt = "To be, or not";
    assert_eq!(tok.decode(&tok.encode(prompt).unwrap()), prompt);
    let _ = std::fs::remove_dir_all(d);
}
