//! Tasks: data and metrics. So far the rule-extrapolation grammars (definitions and metrics,
//! without a model); training on them arrives with the runtime.

pub mod grammar;
