//! `kiln lsp`: a Language Server Protocol server over stdio for model and recipe files.
//!
//! Diagnostics are those of `kiln validate` ([`crate::compile::check`]) on the unsaved text
//! of the open buffers; hover shows a layer's documentation, output shape, parameters and
//! mixing, a `$variable`'s value, and the model's totals; completion offers the schema's keys
//! and values; definitions lead to `$variables` and to a recipe's model file; symbols list
//! the layer tree. Built on rust-analyzer's synchronous `lsp-server`. A panic while handling
//! a message is caught, logged and answered with an error: the server keeps running.

mod analysis;
mod complete;
mod hover;
mod navigate;
mod text;

pub use analysis::Analysis;
pub use text::{path_uri, uri_path, Lines};

use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types as lsp;
use lsp_types::notification::Notification as _;
use lsp_types::request::Request as _;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long after the last change of a buffer it is checked.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Set (to anything) in the environment, the server answers the request `kiln/panic` by
/// panicking: the tests' way to check that a panic is not fatal.
pub const PANIC_HOOK_ENV: &str = "KILN_LSP_PANIC_REQUEST";

/// Serve the protocol on stdin/stdout until the client says `exit`; returns the exit status.
pub fn main() -> i32 {
    let (conn, io) = Connection::stdio();
    let status = match serve(&conn) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln lsp: {e}");
            1
        }
    };
    drop(conn);
    if let Err(e) = io.join() {
        eprintln!("kiln lsp: {e}");
    }
    status
}

/// Initialize, then run the message loop on `conn` until `shutdown` and `exit`.
pub fn serve(conn: &Connection) -> Result<(), lsp_server::ProtocolError> {
    let (id, _params) = conn.initialize_start()?;
    let caps = lsp::ServerCapabilities {
        text_document_sync: Some(lsp::TextDocumentSyncCapability::Kind(
            lsp::TextDocumentSyncKind::FULL,
        )),
        hover_provider: Some(lsp::HoverProviderCapability::Simple(true)),
        completion_provider: Some(lsp::CompletionOptions {
            trigger_characters: Some(vec!["$".into(), ":".into()]),
            ..Default::default()
        }),
        definition_provider: Some(lsp::OneOf::Left(true)),
        document_symbol_provider: Some(lsp::OneOf::Left(true)),
        ..Default::default()
    };
    let result = lsp::InitializeResult {
        capabilities: caps,
        server_info: Some(lsp::ServerInfo {
            name: "kiln".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
        }),
    };
    conn.initialize_finish(id, serde_json::to_value(result).expect("serializes"))?;
    let mut server = Server {
        conn,
        docs: HashMap::new(),
        published: HashSet::new(),
        panic_hook: std::env::var_os(PANIC_HOOK_ENV).is_some(),
    };
    loop {
        let msg = match server.deadline() {
            Some(at) => match conn
                .receiver
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    server.guarded("checking changed buffers", |s| s.check_due());
                    continue;
                }
                Err(_) => return Ok(()),
            },
            None => match conn.receiver.recv() {
                Ok(m) => m,
                Err(_) => return Ok(()),
            },
        };
        match msg {
            Message::Request(req) => {
                if conn.handle_shutdown(&req)? {
                    return Ok(());
                }
                let (id, method) = (req.id.clone(), req.method.clone());
                let resp = match catch_unwind(AssertUnwindSafe(|| server.request(req))) {
                    Ok(r) => r,
                    Err(p) => {
                        let what = panic_text(&*p);
                        server.log(&format!("internal error (panic) handling {method}: {what}"));
                        Response::new_err(
                            id,
                            ErrorCode::InternalError as i32,
                            format!("kiln lsp: internal error handling {method}: {what}"),
                        )
                    }
                };
                let _ = conn.sender.send(resp.into());
            }
            Message::Notification(n) => {
                let method = n.method.clone();
                server.guarded(&method, |s| s.notification(n));
            }
            Message::Response(_) => {}
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Whether a YAML buffer is meant for kiln: it has a top-level `kind:` key or names a kiln
/// schema in a modeline. Other YAML files (CI workflows, ...) get no diagnostics from kiln,
/// which editors also start for them.
fn is_kiln_document(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("kind:")
            || l.contains("schemas/model.schema.json")
            || l.contains("schemas/recipe.schema.json")
    })
}

/// An open buffer.
struct Doc {
    uri: lsp::Uri,
    text: String,
    /// Its last check (of the text it had then).
    analysis: Option<Analysis>,
    /// That check's diagnostics, each with the file it is published on.
    diagnostics: Vec<(PathBuf, lsp::Diagnostic)>,
    /// When it is due to be checked again (after a change, or a change of its model file).
    due: Option<Instant>,
}

struct Server<'a> {
    conn: &'a Connection,
    docs: HashMap<PathBuf, Doc>,
    /// Files that were last published with diagnostics (to clear them when they go).
    published: HashSet<PathBuf>,
    panic_hook: bool,
}

impl Server<'_> {
    fn deadline(&self) -> Option<Instant> {
        self.docs.values().filter_map(|d| d.due).min()
    }

    /// Run `f`; a panic is logged (to stderr and the client) and the server goes on.
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Self)) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let text = panic_text(&*p);
            self.log(&format!("internal error (panic) handling {what}: {text}"));
            // Do not retry what panicked in a loop.
            for d in self.docs.values_mut() {
                d.due = None;
            }
        }
    }

    fn log(&self, message: &str) {
        eprintln!("kiln lsp: {message}");
        self.notify::<lsp::notification::LogMessage>(lsp::LogMessageParams {
            typ: lsp::MessageType::ERROR,
            message: message.into(),
        });
    }

    fn notify<N: lsp::notification::Notification>(&self, params: N::Params) {
        let n = Notification::new(N::METHOD.into(), params);
        let _ = self.conn.sender.send(n.into());
    }

    fn notification(&mut self, n: Notification) {
        use lsp::notification::{DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument};
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                let Ok(p) =
                    n.extract::<lsp::DidOpenTextDocumentParams>(DidOpenTextDocument::METHOD)
                else {
                    return;
                };
                let Some(path) = uri_path(&p.text_document.uri) else {
                    return;
                };
                self.docs.insert(
                    path.clone(),
                    Doc {
                        uri: p.text_document.uri,
                        text: p.text_document.text,
                        analysis: None,
                        diagnostics: Vec::new(),
                        due: None,
                    },
                );
                self.changed(&path, Instant::now());
                self.check_due();
            }
            DidChangeTextDocument::METHOD => {
                let Ok(p) =
                    n.extract::<lsp::DidChangeTextDocumentParams>(DidChangeTextDocument::METHOD)
                else {
                    return;
                };
                let Some(path) = uri_path(&p.text_document.uri) else {
                    return;
                };
                // Full synchronization: the last change holds the whole text.
                if let (Some(doc), Some(change)) = (
                    self.docs.get_mut(&path),
                    p.content_changes.into_iter().last(),
                ) {
                    doc.text = change.text;
                    self.changed(&path, Instant::now() + DEBOUNCE);
                }
            }
            DidCloseTextDocument::METHOD => {
                let Ok(p) =
                    n.extract::<lsp::DidCloseTextDocumentParams>(DidCloseTextDocument::METHOD)
                else {
                    return;
                };
                if let Some(path) = uri_path(&p.text_document.uri) {
                    self.docs.remove(&path);
                    // The recipes that use it read the file on disk again.
                    self.changed(&path, Instant::now());
                    self.check_due();
                }
            }
            _ => {}
        }
    }

    /// `path` changed: check it, and every open document that reads it, at `at`.
    fn changed(&mut self, path: &Path, at: Instant) {
        for (p, doc) in &mut self.docs {
            let reads = doc
                .analysis
                .as_ref()
                .is_some_and(|a| a.deps().iter().any(|d| d == path));
            if p == path || reads {
                doc.due = Some(doc.due.map_or(at, |d| d.max(at)));
            }
        }
    }

    fn overlay(&self) -> HashMap<PathBuf, String> {
        self.docs
            .iter()
            .map(|(p, d)| (p.clone(), d.text.clone()))
            .collect()
    }

    /// Check the documents whose time has come, and publish.
    fn check_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .docs
            .iter()
            .filter(|(_, d)| d.due.is_some_and(|t| t <= now))
            .map(|(p, _)| p.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        self.check(&due);
    }

    /// Check `paths` now and publish every file's diagnostics.
    fn check(&mut self, paths: &[PathBuf]) {
        let overlay = self.overlay();
        for p in paths {
            let a = Analysis::run(p, overlay.clone());
            if let Some(doc) = self.docs.get_mut(p) {
                doc.diagnostics = if is_kiln_document(&doc.text) {
                    a.published()
                } else {
                    Vec::new()
                };
                doc.analysis = Some(a);
                doc.due = None;
            }
        }
        self.publish(paths);
    }

    /// Publish the diagnostics of every file: the union of what the open documents' checks
    /// say about it (a model file hears from itself and from the open recipes that use it).
    fn publish(&mut self, checked: &[PathBuf]) {
        let mut by_file: HashMap<PathBuf, Vec<lsp::Diagnostic>> = HashMap::new();
        for doc in self.docs.values() {
            for (file, d) in doc.diagnostics.iter().cloned() {
                let list = by_file.entry(file).or_default();
                let first = |d: &lsp::Diagnostic| {
                    (
                        d.range,
                        d.code.clone(),
                        d.message.lines().next().map(str::to_string),
                    )
                };
                if !list.iter().any(|x| first(x) == first(&d)) {
                    list.push(d);
                }
            }
        }
        let mut files: HashSet<PathBuf> = by_file.keys().cloned().collect();
        files.extend(self.published.drain());
        files.extend(checked.iter().cloned());
        for file in files {
            let diags = by_file.remove(&file).unwrap_or_default();
            let uri = match self.docs.get(&file) {
                Some(d) => d.uri.clone(),
                None => match path_uri(&file) {
                    Some(u) => u,
                    None => continue,
                },
            };
            if !diags.is_empty() {
                self.published.insert(file);
            }
            self.notify::<lsp::notification::PublishDiagnostics>(lsp::PublishDiagnosticsParams {
                uri,
                diagnostics: diags,
                version: None,
            });
        }
    }

    /// The up-to-date check of the document at `uri` (checked now when a change is pending).
    fn analysis(&mut self, uri: &lsp::Uri) -> Option<&Analysis> {
        let path = uri_path(uri)?;
        let doc = self.docs.get(&path)?;
        if doc.due.is_some() || doc.analysis.is_none() {
            self.check(std::slice::from_ref(&path));
        }
        self.docs.get(&path)?.analysis.as_ref()
    }

    fn request(&mut self, req: Request) -> Response {
        use lsp::request::{Completion, DocumentSymbolRequest, GotoDefinition, HoverRequest};
        let id = req.id.clone();
        let result = match req.method.as_str() {
            HoverRequest::METHOD => {
                req.extract::<lsp::HoverParams>(HoverRequest::METHOD)
                    .map(|(_, p)| {
                        let at = p.text_document_position_params;
                        let a = self.analysis(&at.text_document.uri);
                        serde_json::to_value(a.and_then(|a| hover::hover(a, at.position)))
                    })
            }
            Completion::METHOD => req
                .extract::<lsp::CompletionParams>(Completion::METHOD)
                .map(|(_, p)| {
                    let at = p.text_document_position;
                    let text = uri_path(&at.text_document.uri)
                        .and_then(|path| self.docs.get(&path))
                        .map(|d| d.text.clone());
                    serde_json::to_value(text.map(|t| {
                        lsp::CompletionResponse::Array(complete::complete(&t, at.position))
                    }))
                }),
            GotoDefinition::METHOD => req
                .extract::<lsp::GotoDefinitionParams>(GotoDefinition::METHOD)
                .map(|(_, p)| {
                    let at = p.text_document_position_params;
                    let a = self.analysis(&at.text_document.uri);
                    serde_json::to_value(
                        a.and_then(|a| navigate::definition(a, &at.text_document.uri, at.position)),
                    )
                }),
            DocumentSymbolRequest::METHOD => req
                .extract::<lsp::DocumentSymbolParams>(DocumentSymbolRequest::METHOD)
                .map(|(_, p)| {
                    let a = self.analysis(&p.text_document.uri);
                    serde_json::to_value(a.map(navigate::symbols))
                }),
            "kiln/panic" if self.panic_hook => panic!("kiln/panic was requested"),
            _ => {
                return Response::new_err(
                    id,
                    ErrorCode::MethodNotFound as i32,
                    format!("kiln lsp does not handle {}", req.method),
                )
            }
        };
        match result {
            Ok(Ok(v)) => Response::new_ok(id, v),
            Ok(Err(e)) => Response::new_err(id, ErrorCode::InternalError as i32, e.to_string()),
            Err(e) => Response::new_err(id, ErrorCode::InvalidParams as i32, e.to_string()),
        }
    }
}
