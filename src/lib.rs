//! kiln: a declarative model compiler.
//!
//! The pipeline, one module a stage: [`spec`] (YAML documents, schemas, validation) and
//! [`diag`] (diagnostics); [`cli`] wires them to the `kiln` command.

// Diagnostics are the error type of the front end; they are built once per problem, so their
// size (about 140 bytes) does not matter, and boxing them everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod compile;
pub mod decode;
pub mod diag;
pub mod ir;
pub mod lower;
pub mod lsp;
pub mod ops;
pub mod os;
pub mod passes;
pub mod plot;
pub mod runtime;
pub mod spec;
pub mod sweep;
pub mod tasks;
pub mod tensorboard;
pub mod train;
pub mod util;
