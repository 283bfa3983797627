//! Optimization passes and the pass manager.
//!
//! Each pass rewrites the graph in place and returns a line per change. The manager runs the
//! chosen passes in order, repeatedly, until none changes anything (a fixpoint), and can verify
//! the graph after every pass (the tests always do).

mod cse;
mod dce;
mod gqa;
mod spectral;

pub use spectral::DENSE_MAX;

use crate::ir::{verify::verify, Graph};

/// A named rewrite.
pub struct Pass {
    /// Name used by `--passes`.
    pub name: &'static str,
    /// What it does, for `--help` and the README.
    pub about: &'static str,
    run: fn(&mut Graph) -> Vec<String>,
}

/// Every pass, in the default order.
pub const ALL: &[Pass] = &[
    Pass {
        name: "gqa",
        about: "grouped-query attention reads shared K/V heads directly instead of repeating them",
        run: gqa::run,
    },
    Pass {
        name: "spectral",
        about: "fuse rfft → complex gate → irfft (and the causal padded form) into one spectral-filter op",
        run: spectral::run,
    },
    Pass {
        name: "cse",
        about: "merge identical pure ops on identical inputs (e.g. the RoPE and position tables of every layer)",
        run: cse::run,
    },
    Pass {
        name: "dce",
        about: "remove ops whose results never reach the output",
        run: dce::run,
    },
];

/// One change made by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The pass.
    pub pass: &'static str,
    /// What changed.
    pub what: String,
}

/// Look passes up by name; unknown names are reported with the known ones.
pub fn by_name(names: &[String]) -> Result<Vec<&'static Pass>, String> {
    names
        .iter()
        .map(|n| {
            ALL.iter().find(|p| p.name == n.trim()).ok_or_else(|| {
                let known: Vec<&str> = ALL.iter().map(|p| p.name).collect();
                let guess = crate::diag::did_you_mean(n, known.iter().copied())
                    .map(|g| format!(" (did you mean `{g}`?)"))
                    .unwrap_or_default();
                format!(
                    "unknown pass `{n}`{guess}; the passes are {}",
                    crate::diag::one_of(&known)
                )
            })
        })
        .collect()
}

/// Run `passes` to a fixpoint. With `check`, verify the graph after every pass and fail with
/// the verifier's complaints (a bug in a pass).
pub fn optimize(graph: &mut Graph, passes: &[&Pass], check: bool) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for _round in 0..32 {
        let mut changed = false;
        for p in passes {
            let c = (p.run)(graph);
            if check {
                verify(graph).map_err(|e| format!("after pass `{}`: {}", p.name, e.join("; ")))?;
            }
            changed |= !c.is_empty();
            changes.extend(c.into_iter().map(|what| Change { pass: p.name, what }));
        }
        if !changed {
            return Ok(changes);
        }
    }
    Err("the passes did not reach a fixpoint in 32 rounds".into())
}
