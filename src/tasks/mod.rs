//! Tasks: data and metrics. The rule-extrapolation grammars and next-value prediction on
//! uint16 streams.

pub mod forecast;
pub mod grammar;
pub mod seq2seq;
pub mod uint16;
