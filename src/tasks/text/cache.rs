//! The token cache: a corpus tokenized once into a memory-mapped file of ids, and nanoGPT's
//! token files mapped as they are.
//!
//! A cache entry is named by the SHA-256 of the tokenizer and of every corpus file's name and
//! bytes, so a changed corpus or tokenizer makes a new entry. The ids are written to a
//! temporary file that is renamed into place, then the entry's description (`.json`) is
//! written the same way: an entry without its description, or whose size disagrees with it,
//! is rebuilt, so an interrupted build leaves nothing that is read.

use super::{TextError, Tokenizer};
use crate::spec::recipe::TextTask;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const VERSION: u32 = 1;
const CHUNK: usize = 4 << 20;

/// A memory-mapped file of little-endian uint16 or uint32 token ids.
pub struct Tokens {
    map: memmap2::Mmap,
    width: usize,
    path: PathBuf,
}

impl Tokens {
    /// Map `path` holding ids of `width` bytes (2 or 4).
    pub fn open(path: &Path, width: usize) -> Result<Self, TextError> {
        let file = std::fs::File::open(path).map_err(TextError::io("read the token file", path))?;
        let len = file
            .metadata()
            .map_err(TextError::io("read the token file", path))?
            .len();
        if len % width as u64 != 0 {
            return Err(TextError::Unusable(format!(
                "the token file `{}` has {len} bytes, not a multiple of {width}: it is not a file of uint{} ids",
                path.display(),
                width * 8
            )));
        }
        // SAFETY: read-only; kiln never writes a file it maps (cache entries are renamed
        // into place whole). A file truncated by another process is outside what any mmap
        // reader survives.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(TextError::io("map the token file", path))?;
        Ok(Tokens {
            map,
            width,
            path: path.to_path_buf(),
        })
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.map.len() / self.width
    }

    /// Whether the file holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Id `i`.
    pub fn get(&self, i: usize) -> u32 {
        let at = i * self.width;
        if self.width == 2 {
            u32::from(u16::from_le_bytes([self.map[at], self.map[at + 1]]))
        } else {
            u32::from_le_bytes(self.map[at..at + 4].try_into().expect("4 bytes"))
        }
    }

    /// Ids `range`, as u32.
    pub fn slice(&self, range: Range<usize>) -> Vec<u32> {
        range.map(|i| self.get(i)).collect()
    }

    /// The largest id and its first index (`None` when empty).
    pub fn max(&self) -> Option<(u32, usize)> {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..self.len() {
            let v = self.get(i);
            if best.is_none_or(|(m, _)| v > m) {
                best = Some((v, i));
            }
        }
        best
    }
}

/// A contiguous part of a token file.
#[derive(Clone)]
pub struct Part {
    /// The file.
    pub tokens: Arc<Tokens>,
    /// The ids of the part.
    pub range: Range<usize>,
}

impl Part {
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the part is empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// `n` ids from offset `start` of the part, as model inputs.
    pub fn ids(&self, start: usize, n: usize) -> Vec<i64> {
        let s = self.range.start + start;
        (s..s + n).map(|i| i64::from(self.tokens.get(i))).collect()
    }
}

/// A text task's tokens: its three parts, its tokenizer (none for nanoGPT files without a
/// `tokenizer.json`) and what a token is worth in characters.
pub struct Corpus {
    /// Training part.
    pub train: Part,
    /// Validation part.
    pub val: Part,
    /// Test part.
    pub test: Part,
    /// Number of ids.
    pub vocab: usize,
    /// The tokenizer.
    pub tokenizer: Option<Tokenizer>,
    /// Characters (bytes at the byte level) per token over the whole corpus; `None` for
    /// token files, whose text is unknown.
    pub units_per_token: Option<f64>,
}

/// What a cache entry holds, written beside its ids.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    tokens: u64,
    width: usize,
    text_chars: u64,
    max_id: u32,
    argmax: u64,
    /// The character vocabulary (char level).
    chars: Option<String>,
}

/// Where cache entries are kept: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `~/.cache/kiln`, else the temporary folder; text entries under `text/`.
pub fn cache_dir() -> PathBuf {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = env("KILN_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("kiln")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("kiln")))
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-cache"));
    base.join("text")
}

/// The corpus files of `path`: the file itself, or a folder's files (recursively, in path
/// order, hidden ones skipped).
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>, TextError> {
    let meta = std::fs::metadata(path).map_err(TextError::io("read the corpus", path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(TextError::io("read the corpus folder", &dir))? {
            let e = e.map_err(TextError::io("read the corpus folder", &dir))?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(TextError::Unusable(format!(
            "the corpus folder `{}` holds no file",
            path.display()
        )));
    }
    Ok(files)
}

/// Whether `path` is a folder of nanoGPT token files (`train.bin` and `val.bin`).
pub fn is_nanogpt(path: &Path) -> bool {
    path.join("train.bin").is_file() && path.join("val.bin").is_file()
}

/// The files a text task reads (for a sweep's content key).
pub fn task_files(task: &TextTask) -> Vec<PathBuf> {
    let path = Path::new(&task.path);
    let mut files = if is_nanogpt(path) {
        vec![path.join("train.bin"), path.join("val.bin")]
    } else {
        corpus_files(path).unwrap_or_else(|_| vec![path.to_path_buf()])
    };
    if !matches!(task.tokenizer.as_str(), "char" | "byte") {
        files.push(PathBuf::from(&task.tokenizer));
    }
    files
}

/// The tokenizer a task names (`char` is built from the corpus, so `None` here).
fn named_tokenizer(task: &TextTask) -> Result<Option<Tokenizer>, TextError> {
    match task.tokenizer.as_str() {
        "char" => Ok(None),
        "byte" => Ok(Some(Tokenizer::Byte)),
        path => Tokenizer::hf(Path::new(path)).map(Some),
    }
}

/// Open a text task's tokens (paths as given: the command line resolves them against the
/// recipe), tokenizing the corpus into `cache` first when no valid entry exists. Checks every
/// id against the vocabulary and every part against one window of `context + 1` tokens.
pub fn open(task: &TextTask, cache: &Path) -> Result<Corpus, TextError> {
    let path = Path::new(&task.path);
    let named = named_tokenizer(task)?;
    if is_nanogpt(path) {
        return open_nanogpt(task, path, named);
    }
    let files = corpus_files(path)?;
    let (tokens, meta, tokenizer) = build_or_open(&files, named, cache)?;
    let vocab = task.vocab.map_or(tokenizer.vocab(), |v| v as usize);
    if meta.tokens > 0 && meta.max_id as usize >= vocab {
        return Err(TextError::IdBeyondVocab {
            path: tokens.path().to_path_buf(),
            id: u64::from(meta.max_id),
            index: meta.argmax,
            vocab: vocab as u64,
            help: format!(
                "The tokenizer gives {} ids: leave `task.vocab` out, or set it to at least {}",
                tokenizer.vocab(),
                meta.max_id + 1
            ),
        });
    }
    let n = tokens.len();
    let (n_train, n_val, _) = crate::tasks::split_lengths(n, task.val_fraction, task.test_fraction);
    let tokens = Arc::new(tokens);
    let part = |range| Part {
        tokens: tokens.clone(),
        range,
    };
    let corpus = Corpus {
        train: part(0..n_train),
        val: part(n_train..n_train + n_val),
        test: part(n_train + n_val..n),
        vocab,
        units_per_token: Some(meta.text_chars as f64 / (meta.tokens.max(1)) as f64).map(|r| {
            if tokenizer.unit() == "byte" {
                1.0
            } else {
                r
            }
        }),
        tokenizer: Some(tokenizer),
    };
    check_parts(
        &corpus,
        task.context as usize,
        &format!("the corpus `{}` ({n} tokens)", path.display()),
    )?;
    Ok(corpus)
}

fn check_parts(c: &Corpus, context: usize, what: &str) -> Result<(), TextError> {
    let window = context + 1;
    for (name, p) in [
        ("training", &c.train),
        ("validation", &c.val),
        ("test", &c.test),
    ] {
        if p.len() < window {
            return Err(TextError::Unusable(format!(
                "the {name} part of {what} holds {} tokens, fewer than one window of context + 1 = {window}: the corpus is too short for this context. Use more text, a shorter `context`, or larger fractions",
                p.len()
            )));
        }
    }
    Ok(())
}

fn open_nanogpt(
    task: &TextTask,
    dir: &Path,
    tokenizer: Option<Tokenizer>,
) -> Result<Corpus, TextError> {
    let vocab = match (task.vocab, &tokenizer) {
        (Some(v), _) => v as usize,
        (None, Some(t)) if task.tokenizer != "byte" => t.vocab(),
        (None, _) => {
            return Err(TextError::Unusable(format!(
                "`{}` holds nanoGPT token files, whose vocabulary kiln cannot tell: set `task.vocab` (50257 for GPT-2's tokenizer) or `task.tokenizer` to their tokenizer.json",
                dir.display()
            )))
        }
    };
    let width = if vocab > 65536 { 4 } else { 2 };
    let train = Tokens::open(&dir.join("train.bin"), width)?;
    let val = Tokens::open(&dir.join("val.bin"), width)?;
    for t in [&train, &val] {
        if let Some((id, index)) = t.max().filter(|&(m, _)| m as usize >= vocab) {
            return Err(TextError::IdBeyondVocab {
                path: t.path().to_path_buf(),
                id: u64::from(id),
                index: index as u64,
                vocab: vocab as u64,
                help: "The vocabulary (`task.vocab`, or the tokenizer's) does not match these token files: give the tokenizer they were made with, or a larger `task.vocab` (ids are read as uint16 up to a vocab of 65536, uint32 above)".into(),
            });
        }
    }
    let (train, val) = (Arc::new(train), Arc::new(val));
    let half = val.len() / 2;
    let corpus = Corpus {
        train: Part {
            range: 0..train.len(),
            tokens: train,
        },
        val: Part {
            range: 0..half,
            tokens: val.clone(),
        },
        test: Part {
            range: half..val.len(),
            tokens: val,
        },
        vocab,
        tokenizer: tokenizer.filter(|_| task.tokenizer != "char"),
        units_per_token: None,
    };
    check_parts(
        &corpus,
        task.context as usize,
        &format!("the nanoGPT files in `{}`", dir.display()),
    )?;
    Ok(corpus)
}

/// The cache key of a corpus and tokenizer.
fn key(files: &[PathBuf], tokenizer: &Option<Tokenizer>) -> Result<String, TextError> {
    let mut h = Sha256::new();
    h.update(format!("kiln text cache v{VERSION}\n"));
    match tokenizer {
        None => h.update("char\n"),
        Some(Tokenizer::Byte) => h.update("byte\n"),
        Some(Tokenizer::Hf { path, .. }) => {
            h.update("hf\n");
            h.update(std::fs::read(path).map_err(TextError::io("read the tokenizer", path))?);
        }
        Some(Tokenizer::Char { .. }) => unreachable!("char tokenizers are built from the corpus"),
    }
    for (i, f) in files.iter().enumerate() {
        h.update(format!("\nfile {i}\n"));
        for_each_byte_chunk(f, |bytes| {
            h.update(bytes);
            Ok(())
        })?;
    }
    Ok(format!("{:x}", h.finalize())[..32].to_string())
}

/// Call `f` on each UTF-8 chunk of `file` (cut after a newline when one is near, so a
/// tokenizer sees whole lines); invalid UTF-8 is an error naming its offset.
/// Calls `f` on the bytes of `file`, a chunk of up to [`CHUNK`] bytes at a time.
fn for_each_byte_chunk(
    file: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), TextError>,
) -> Result<(), TextError> {
    let mut r = std::fs::File::open(file).map_err(TextError::io("read the corpus file", file))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(TextError::io("read the corpus file", file))?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n])?;
    }
}

fn for_each_text_chunk(
    file: &Path,
    mut f: impl FnMut(&str) -> Result<(), TextError>,
) -> Result<(), TextError> {
    let mut r = std::fs::File::open(file).map_err(TextError::io("read the corpus file", file))?;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let mut offset = 0u64; // of buf[0] in the file
    let mut eof = false;
    while !eof || !buf.is_empty() {
        if !eof {
            let old = buf.len();
            buf.resize(old + CHUNK, 0);
            let n = r
                .read(&mut buf[old..])
                .map_err(TextError::io("read the corpus file", file))?;
            buf.truncate(old + n);
            eof = n == 0;
        }
        let valid = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
            Err(e) => {
                return Err(TextError::NotUtf8 {
                    path: file.to_path_buf(),
                    offset: offset + e.valid_up_to() as u64,
                })
            }
        };
        let mut cut = valid;
        if !eof {
            if let Some(nl) = buf[..valid].iter().rposition(|&b| b == b'\n') {
                cut = nl + 1;
            }
        }
        if cut == 0 && !eof {
            continue;
        }
        f(std::str::from_utf8(&buf[..cut]).expect("validated"))?;
        buf.drain(..cut);
        offset += cut as u64;
    }
    Ok(())
}

/// Open the cache entry of `files` and `tokenizer`, building it first when missing or invalid.
fn build_or_open(
    files: &[PathBuf],
    tokenizer: Option<Tokenizer>,
    cache: &Path,
) -> Result<(Tokens, Meta, Tokenizer), TextError> {
    let key = key(files, &tokenizer)?;
    let ids_path = cache.join(format!("{key}.tokens"));
    let meta_path = cache.join(format!("{key}.json"));
    if let Some(meta) = read_meta(&meta_path, &ids_path) {
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Tokenizer::chars(meta.chars.clone().unwrap_or_default().chars().collect()),
        };
        return Ok((Tokens::open(&ids_path, meta.width)?, meta, tokenizer));
    }
    std::fs::create_dir_all(cache).map_err(TextError::io("create the token cache", cache))?;
    // The character vocabulary: a first pass over the text.
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => {
            let mut set = std::collections::BTreeSet::new();
            let mut ascii = [false; 128];
            for f in files {
                for_each_text_chunk(f, |s| {
                    for c in s.chars() {
                        if c.is_ascii() {
                            ascii[c as usize] = true;
                        } else {
                            set.insert(c);
                        }
                    }
                    Ok(())
                })?;
            }
            set.extend((0..128u8).filter(|&b| ascii[b as usize]).map(char::from));
            Tokenizer::chars(set.into_iter().collect())
        }
    };
    let width = if tokenizer.vocab() > 65536 { 4 } else { 2 };
    let tmp = cache.join(format!("{key}.tokens.tmp-{}", std::process::id()));
    let result = write_ids(files, &tokenizer, width, &tmp);
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &ids_path).map_err(TextError::io("write the token cache", &ids_path))?;
    let meta = Meta {
        chars: match &tokenizer {
            Tokenizer::Char { chars, .. } => Some(chars.iter().collect()),
            _ => None,
        },
        ..meta
    };
    let tmp = cache.join(format!("{key}.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&meta).expect("meta serializes"))
        .and_then(|_| std::fs::rename(&tmp, &meta_path))
        .map_err(TextError::io("write the token cache", &meta_path))?;
    Ok((Tokens::open(&ids_path, width)?, meta, tokenizer))
}

fn read_meta(meta_path: &Path, ids_path: &Path) -> Option<Meta> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(meta_path).ok()?).ok()?;
    let len = std::fs::metadata(ids_path).ok()?.len();
    (meta.version == VERSION && len == meta.tokens * meta.width as u64).then_some(meta)
}

/// Tokenize `files` into `tmp` (ids of `width` bytes).
fn write_ids(
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    width: usize,
    tmp: &Path,
) -> Result<Meta, TextError> {
    let file = std::fs::File::create(tmp).map_err(TextError::io("write the token cache", tmp))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut meta = Meta {
        version: VERSION,
        tokens: 0,
        width,
        text_chars: 0,
        max_id: 0,
        argmax: 0,
        chars: None,
    };
    for f in files {
        if let Tokenizer::Byte = tokenizer {
            for_each_byte_chunk(f, |bytes| {
                let ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
                meta.text_chars += bytes.len() as u64;
                put(&mut meta, &ids, &mut w, tmp)
            })?;
            continue;
        }
        let mut chars = 0u64;
        for_each_text_chunk(f, |s| {
            chars += s.chars().count() as u64;
            put(&mut meta, &tokenizer.encode(s)?, &mut w, tmp)
        })?;
        meta.text_chars += chars;
    }
    w.flush()
        .map_err(TextError::io("write the token cache", tmp))?;
    w.get_ref()
        .sync_all()
        .map_err(TextError::io("write the token cache", tmp))?;
    Ok(meta)
}

/// Append `ids` to the cache file being written, keeping the count and the largest id.
fn put(
    meta: &mut Meta,
    ids: &[u32],
    w: &mut std::io::BufWriter<std::fs::File>,
    tmp: &Path,
) -> Result<(), TextError> {
    for &id in ids {
        if id > meta.max_id || meta.tokens == 0 {
            meta.max_id = id;
            meta.argmax = meta.tokens;
        }
        meta.tokens += 1;
        let r = if meta.width == 2 {
            w.write_all(&(id as u16).to_le_bytes())
        } else {
            w.write_all(&id.to_le_bytes())
        };
        r.map_err(TextError::io("write the token cache", tmp))?;
    }
    Ok(())
}
