//! kiln: a declarative model compiler.
//!
//! The pipeline, one module a stage: [`spec`] (YAML documents, schemas, validation) and
//! [`diag`] (diagnostics); [`cli`] wires them to the `kiln` command.

pub mod cli;
pub mod diag;
pub mod spec;
pub mod util;
