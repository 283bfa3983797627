//! `kiln lsp` spoken to over JSON-RPC, as an editor does: the binary is spawned with `lsp`,
//! and the test checks its diagnostics against `kiln validate --format json` for the same
//! text, then hover, completion, definition, symbols, a model file's edits reaching the
//! recipe that uses it, a panic that is not fatal, the fuzz corpus replayed through it, and
//! a clean shutdown.

mod common;

use lsp_server::{Message, Notification, Request, RequestId};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Message>,
    next: i32,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("lsp")
            .env(kiln::lsp::PANIC_HOOK_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kiln starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            while let Ok(Some(m)) = Message::read(&mut stdout) {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            rx,
            next: 0,
        };
        let init = c.request("initialize", json!({"capabilities": {}, "processId": null}));
        let caps = &init["capabilities"];
        assert_eq!(caps["hoverProvider"], json!(true), "{init}");
        assert_eq!(caps["definitionProvider"], json!(true));
        assert!(caps["completionProvider"].is_object());
        assert_eq!(init["serverInfo"]["name"], "kiln");
        c.notify("initialized", json!({}));
        c
    }

    fn send(&mut self, m: Message) {
        m.write(&mut self.stdin).expect("the server reads");
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(Notification::new(method.into(), params).into());
    }

    /// Send a request; its response (a result, or the error object as `{"error": ...}`).
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = RequestId::from(self.next);
        self.send(Request::new(id.clone(), method.into(), params).into());
        loop {
            match self.recv() {
                Message::Response(r) if r.id == id => {
                    return match r.response_result {
                        Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
                        Ok(v) => v,
                    }
                }
                _ => {}
            }
        }
    }

    fn recv(&mut self) -> Message {
        self.rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server answers within a minute")
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        loop {
            if let Message::Notification(n) = self.recv() {
                if n.method == "textDocument/publishDiagnostics" && n.params["uri"] == uri {
                    return n.params["diagnostics"].as_array().unwrap().clone();
                }
            }
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}}),
        );
    }

    fn change(&mut self, uri: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
        );
    }

    fn at(&mut self, method: &str, uri: &str, text: &str, needle: &str, offset: usize) -> Value {
        let (line, character) = position(text, needle, offset);
        self.request(
            method,
            json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
        )
    }

    fn shutdown(mut self) {
        assert_eq!(self.request("shutdown", Value::Null), Value::Null);
        self.notify("exit", Value::Null);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "kiln lsp exited with {status}");
    }
}

/// Line and UTF-16 column of `offset` bytes into the first `needle` of `text`.
fn position(text: &str, needle: &str, offset: usize) -> (u32, u32) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} in text"))
        + offset;
    let line = text[..at].matches('\n').count();
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (line as u32, text[start..at].encode_utf16().count() as u32)
}

/// The number (with thousands separators) a text starts with.
fn params(text: &str) -> u64 {
    let digits: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number: {text}"))
}

fn uri(path: &Path) -> String {
    kiln::lsp::path_uri(path).unwrap().as_str().to_string()
}

fn setup(name: &str) -> PathBuf {
    let dir = common::tmp_path("lsp", name);
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    dir
}

/// `kiln validate --format json` of a file: its diagnostics.
fn validate(path: &Path) -> Vec<Value> {
    let out = common::kiln()
        .args(["validate", "--format", "json"])
        .arg(path)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["files"][0]["diagnostics"].as_array().unwrap().clone()
}

/// The server's diagnostics are `kiln validate`'s: same codes, messages, help and places.
fn assert_same(lsp: &[Value], validate: &[Value]) {
    assert_eq!(lsp.len(), validate.len(), "{lsp:#?}\n{validate:#?}");
    for (l, v) in lsp.iter().zip(validate) {
        assert_eq!(l["source"], "kiln");
        assert_eq!(l["code"], v["code"]);
        assert_eq!(l["data"], *v, "the validate JSON rides along as data");
        let mut message = v["message"].as_str().unwrap().to_string();
        if let Some(h) = v["help"].as_str() {
            message.push_str(&format!("\nhelp: {h}"));
        }
        assert_eq!(l["message"], message);
        // 1-based line and character columns there, 0-based UTF-16 here (ASCII text).
        assert_eq!(l["range"]["start"]["line"], v["line"].as_u64().unwrap() - 1);
        assert_eq!(
            l["range"]["start"]["character"],
            v["column"].as_u64().unwrap() - 1
        );
        assert_eq!(
            l["range"]["end"]["line"],
            v["end_line"].as_u64().unwrap() - 1
        );
    }
}

#[test]
fn diagnostics_hover_completion_definition_and_shutdown() {
    let dir = setup("main");
    let good = std::fs::read_to_string("recipes/anbn-inline.yaml").unwrap();
    // 3 heads do not divide the width 16: a shape error found by lowering, at the layer.
    let broken = good.replace("heads: 2", "heads: 3");
    assert_ne!(broken, good);
    let path = dir.join("recipes/inline.yaml");
    std::fs::write(&path, &broken).unwrap();
    let expected = validate(&path);
    assert!(!expected.is_empty());
    let u = uri(&path);
    let mut c = Client::start();
    c.open(&u, &broken);
    let diags = c.diagnostics(&u);
    assert_same(&diags, &expected);
    assert_eq!(
        diags[0]["range"]["start"]["line"],
        position(&broken, "{type: attention", 0).0
    );

    // An unsaved edit that fixes it clears the diagnostics.
    c.change(&u, 2, &good);
    assert_eq!(c.diagnostics(&u), Vec::<Value>::new());

    // Hover on a layer: documentation, output shape, parameters, mixing.
    let h = c.at("textDocument/hover", &u, &good, "type: attention", 7);
    let text = h["contents"]["value"].as_str().unwrap();
    assert!(text.contains("**attention**"), "{text}");
    assert!(text.contains("f32[batch, seq, 16]"), "{text}");
    assert!(text.contains("causally"), "{text}");
    assert!(
        text.contains("and 1 more copies"),
        "inside `repeat: 2`: {text}"
    );
    // On a `$variable`: its value and where it is defined.
    let h = c.at("textDocument/hover", &u, &good, "$d_model", 2);
    let text = h["contents"]["value"].as_str().unwrap();
    assert!(
        text.contains("`$d_model` = `16`") && text.contains("line 8"),
        "{text}"
    );
    // On `kind`: the totals.
    let h = c.at("textDocument/hover", &u, &good, "kind: recipe", 1);
    let text = h["contents"]["value"].as_str().unwrap();
    assert!(
        text.contains("parameters") && text.contains("activation memory"),
        "{text}"
    );
    assert!(text.contains("training needs"), "{text}");
    // The top-level layers' parameters add up to the model's.
    let total = params(text.split("**: ").nth(1).unwrap());
    let mut sum = 0;
    for (needle, at) in [
        ("{type: embedding", 7),
        ("type: repeat", 7),
        ("    - {type: layernorm}\n    - {type: head}", 12),
        ("{type: head}", 7),
    ] {
        let h = c.at("textDocument/hover", &u, &good, needle, at);
        let text = h["contents"]["value"].as_str().unwrap();
        sum += params(text.split("| parameters | ").nth(1).unwrap());
    }
    assert!(total > 0);
    assert_eq!(sum, total);

    // Completion of a layer type, from the schema.
    let items = c.at("textDocument/completion", &u, &good, "{type: layernorm}", 7);
    let labels: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"rmsnorm") && labels.contains(&"attention"),
        "{labels:?}"
    );

    // Go to definition of a `$variable`: its key under `vars`.
    let d = c.at("textDocument/definition", &u, &good, "$d_model}", 1);
    assert_eq!(d["uri"], u.as_str());
    assert_eq!(
        d["range"]["start"]["line"],
        position(&good, "d_model: 16", 0).0
    );

    // Document symbols: the layer tree.
    let s = c.request(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": u}}),
    );
    let model = s
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "model")
        .unwrap();
    let layers = model["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "layers")
        .unwrap();
    let names: Vec<&str> = layers["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["embedding", "repeat", "layernorm", "head"]);
    assert_eq!(layers["children"][1]["children"][0]["name"], "residual");

    // Another YAML file (a CI workflow) gets no diagnostics from kiln.
    let other = uri(&dir.join("workflow.yaml"));
    c.open(&other, "on: push\njobs: {}\n");
    assert_eq!(c.diagnostics(&other), Vec::<Value>::new());

    // A panic inside a request is answered with an error, and the server goes on.
    let r = c.request("kiln/panic", Value::Null);
    assert_eq!(r["error"]["code"], -32603, "{r}");
    let h = c.at("textDocument/hover", &u, &good, "type: attention", 7);
    assert!(h["contents"]["value"]
        .as_str()
        .unwrap()
        .contains("attention"));
    c.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn editing_a_model_file_rechecks_the_recipe_that_uses_it() {
    let dir = setup("model");
    let model = std::fs::read_to_string("models/transformer-modern.yaml").unwrap();
    let recipe = std::fs::read_to_string("recipes/default.yaml").unwrap();
    let (mp, rp) = (
        dir.join("models/transformer-modern.yaml"),
        dir.join("recipes/default.yaml"),
    );
    std::fs::write(&mp, &model).unwrap();
    std::fs::write(&rp, &recipe).unwrap();
    let (mu, ru) = (uri(&mp), uri(&rp));
    let mut c = Client::start();
    c.open(&ru, &recipe);
    assert_eq!(c.diagnostics(&ru), Vec::<Value>::new());
    // Definition of `model:` is the model file.
    let d = c.at("textDocument/definition", &ru, &recipe, "../models/", 3);
    assert_eq!(d["uri"], mu.as_str());
    // A non-causal attention in the unsaved model buffer: the recipe (next-token prediction)
    // rejects it at its `model:` line, and the model file hears it at the layer.
    c.open(&mu, &model);
    let broken = model.replace("bias: false}", "bias: false, causal: false}");
    assert_ne!(broken, model);
    c.change(&mu, 2, &broken);
    let start = Instant::now();
    let (mut on_recipe, mut on_model) = (None, None);
    while on_recipe.is_none() || on_model.as_ref().is_none_or(|d: &Vec<Value>| d.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(60));
        if let Message::Notification(n) = c.recv() {
            if n.method != "textDocument/publishDiagnostics" {
                continue;
            }
            let diags = n.params["diagnostics"].as_array().unwrap().clone();
            if n.params["uri"] == ru.as_str() && !diags.is_empty() {
                on_recipe = Some(diags);
            } else if n.params["uri"] == mu.as_str() {
                on_model = Some(diags);
            }
        }
    }
    let on_recipe = on_recipe.unwrap();
    assert_eq!(on_recipe[0]["code"], "K301", "{on_recipe:#?}");
    assert_eq!(
        on_recipe[0]["range"]["start"]["line"],
        position(&recipe, "model:", 0).0
    );
    let on_model = on_model.unwrap();
    assert_eq!(on_model[0]["code"], "K301");
    assert_eq!(
        on_model[0]["range"]["start"]["line"],
        position(&broken, "{type: attention", 0).0
    );
    // The file on disk is unchanged, and `kiln validate` of the saved text agrees.
    std::fs::write(&mp, &broken).unwrap();
    let expected = validate(&rp);
    assert_eq!(expected[0]["code"], "K301");
    assert_eq!(
        expected[0]["line"],
        on_model[0]["range"]["start"]["line"].as_u64().unwrap() + 1
    );
    c.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// The fuzz corpus of `tests/fuzz.rs` (its generators, replayed with a fixed seed) through
/// the server: every text is opened or changed, then hovered, completed and outlined at a
/// pseudo-random place. The server must answer every request and stay up.
#[test]
fn the_fuzz_corpus_never_crashes_the_server() {
    use common::corpus::{apply, bundled_texts, pathological, Edit, TOKENS};
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let mut texts: Vec<String> = Vec::new();
    let bundled = bundled_texts();
    for _ in 0..150 {
        let (_, text) = &bundled[rand() % bundled.len()];
        let edits: Vec<Edit> = (0..1 + rand() % 5)
            .map(|_| match rand() % 5 {
                0 => Edit::Delete(rand(), rand() % 20),
                1 => Edit::Insert(rand(), rand() % TOKENS.len()),
                2 => Edit::DuplicateLine(rand()),
                3 => Edit::SwapLines(rand(), rand()),
                _ => Edit::Indent(rand(), rand() % 4),
            })
            .collect();
        texts.push(apply(text, &edits));
    }
    for _ in 0..30 {
        let bytes: Vec<u8> = (0..rand() % 400).map(|_| rand() as u8).collect();
        texts.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    texts.extend(
        pathological()
            .into_iter()
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned()),
    );
    let dir = setup("fuzz");
    let path = dir.join("recipes/fuzz.yaml");
    let u = uri(&path);
    let mut c = Client::start();
    c.open(&u, "");
    for (i, text) in texts.iter().enumerate() {
        c.change(&u, i as i32 + 2, text);
        let lines = text.lines().count().max(1);
        let pos = json!({"line": rand() % lines, "character": rand() % 40});
        let params = json!({"textDocument": {"uri": u}, "position": pos});
        for method in [
            "textDocument/hover",
            "textDocument/completion",
            "textDocument/definition",
        ] {
            let r = c.request(method, params.clone());
            assert!(
                r.get("error").is_none(),
                "{method} on text {i}: {r}\n{text}"
            );
        }
        let r = c.request(
            "textDocument/documentSymbol",
            json!({"textDocument": {"uri": u}}),
        );
        assert!(r.get("error").is_none(), "symbols of text {i}: {r}");
    }
    c.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// The output of `sh script` (with `KILN` naming the binary under test), or `None` where `tool`
/// is not installed (`tool --version` fails).
fn editor_check(tool: &str, script: &str) -> Option<String> {
    let installed = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("{tool} is not installed: skipped");
        return None;
    }
    let out = std::process::Command::new("sh")
        .arg(script)
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .output()
        .unwrap();
    Some(common::ok(&out))
}

/// A real editor's client: headless Neovim's built-in LSP client against `kiln lsp` on a
/// recipe whose 3 heads do not divide the width (`editors/nvim/check.sh`), where nvim is
/// installed.
#[test]
fn neovims_client_receives_kilns_diagnostics_and_hover() {
    let Some(text) = editor_check("nvim", "editors/nvim/check.sh") else {
        return;
    };
    assert!(
        text.contains("broken.yaml:19:45: ERROR[K300] (kiln) width 16 is not divisible by 3 heads"),
        "{text}"
    );
    assert!(text.contains("hover: **attention**"), "{text}");
}

/// The VS Code extension's manifest and activation (`editors/vscode/check.sh`), where node
/// is installed.
#[test]
fn the_vs_code_extension_starts_kiln_lsp() {
    let Some(text) = editor_check("node", "editors/vscode/check.sh") else {
        return;
    };
    assert!(text.contains("ok: kiln-lsp"), "{text}");
}
