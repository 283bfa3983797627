//! Tasks: data and metrics. The rule-extrapolation grammars and next-value prediction on
//! uint16 streams.

pub mod grammar;
pub mod uint16;
