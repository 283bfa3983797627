//! `kiln lsp` latency: for every bundled recipe, the time to check a changed buffer (the
//! `kiln validate` pipeline on the text, and the protocol's diagnostics), and the time from a
//! `didChange` to its `publishDiagnostics` through a running server (in process, over
//! `lsp-server`'s memory connection; the debounce of [`kiln::lsp::DEBOUNCE`] included).
//! The goal is 50 ms per change. `cargo bench --bench lsp`.

use lsp_server::{Connection, Message, Notification, Request, RequestId};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut recipes: Vec<PathBuf> = std::fs::read_dir("recipes")
        .unwrap()
        .map(|e| std::fs::canonicalize(e.unwrap().path()).unwrap())
        .collect();
    recipes.sort();
    let (server, client) = Connection::memory();
    let thread = std::thread::spawn(move || kiln::lsp::serve(&server));
    let send = |m: Message| client.sender.send(m).unwrap();
    send(
        Request::new(
            RequestId::from(1),
            "initialize".into(),
            json!({"capabilities": {}}),
        )
        .into(),
    );
    let _ = client.receiver.recv().unwrap();
    send(Notification::new("initialized".into(), json!({})).into());
    let wait = |uri: &str| loop {
        if let Message::Notification(n) = client.receiver.recv().unwrap() {
            if n.method == "textDocument/publishDiagnostics" && n.params["uri"] == uri {
                return n.params["diagnostics"].as_array().unwrap().len();
            }
        }
    };
    println!(
        "{:<40} {:>10} {:>16} {:>6}",
        "recipe", "check(ms)", "change→diag(ms)", "diags"
    );
    let mut worst = Duration::ZERO;
    for path in &recipes {
        let text = std::fs::read_to_string(path).unwrap();
        let check: Vec<Duration> = (0..15)
            .map(|i| {
                let overlay = HashMap::from([(path.clone(), format!("{text}# edit {i}\n"))]);
                let t = Instant::now();
                let a = kiln::lsp::Analysis::run(path, overlay);
                std::hint::black_box(a.published());
                t.elapsed()
            })
            .collect();
        let uri = kiln::lsp::path_uri(path).unwrap().as_str().to_string();
        send(
            Notification::new(
                "textDocument/didOpen".into(),
                json!({"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}}),
            )
            .into(),
        );
        let diags = wait(&uri);
        let change: Vec<Duration> = (0..15)
            .map(|i| {
                let t = Instant::now();
                send(
                    Notification::new(
                        "textDocument/didChange".into(),
                        json!({"textDocument": {"uri": uri, "version": i + 2},
                               "contentChanges": [{"text": format!("{text}# edit {i}\n")}]}),
                    )
                    .into(),
                );
                wait(&uri);
                t.elapsed()
            })
            .collect();
        let (c, e) = (median(check), median(change));
        worst = worst.max(e);
        let name = path.file_name().unwrap().to_string_lossy();
        println!("{name:<40} {:>10.2} {:>16.2} {diags:>6}", ms(c), ms(e));
    }
    println!(
        "worst median change→diagnostics: {:.2} ms (goal < 50 ms; debounce {} ms included)",
        ms(worst),
        kiln::lsp::DEBOUNCE.as_millis()
    );
    send(Request::new(RequestId::from(2), "shutdown".into(), json!(null)).into());
    send(Notification::new("exit".into(), json!(null)).into());
    thread.join().unwrap().unwrap();
}
