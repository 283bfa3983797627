//! A recipe's `sweep` section: grid, zip, random search, conditions and seeds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sweep: every combination of the `grid` values, times the `zip` rows, times the `seeds`.
/// Keys are dotted paths as in `--set` (`train.optimizer.lr`, `model.vars.depth`, `model`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Cartesian product: each key takes each of its values with every value of the others.
    #[serde(default)]
    pub grid: std::collections::BTreeMap<String, Vec<SweepValue>>,
    /// Values that vary together: the i-th trial row takes the i-th value of every key (all
    /// lists of one length).
    #[serde(default)]
    pub zip: std::collections::BTreeMap<String, Vec<SweepValue>>,
    /// Random search: `count` draws of the listed keys, each combined with every grid × zip
    /// point.
    #[serde(default)]
    pub random: Option<RandomSearch>,
    /// Seeds (`train.seed`) replicating every point; leave it out for the recipe's seed.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Conditional parameters: `key: {other: [values]}` sets the swept `key` only in trials
    /// where every listed other swept key has one of the listed values (e.g. attention heads
    /// only for the Transformer). Points that then coincide run once.
    #[serde(default)]
    pub when:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<SweepValue>>>,
}

/// Random search over distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomSearch {
    /// Number of draws.
    #[schemars(range(min = 1, max = 100000))]
    pub count: u32,
    /// Seed of the draws (draw k is the same whatever the other settings).
    #[serde(default)]
    pub seed: u64,
    /// The distribution of each key.
    pub params: std::collections::BTreeMap<String, Distribution>,
}

/// A distribution of random search. `type` selects which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Uniform on [low, high).
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Log-uniform on [low, high) (both > 0), e.g. learning rates.
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// A uniform integer in [low, high].
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound (included).
        high: i64,
    },
    /// One of the values, uniformly.
    Choice {
        /// The values.
        values: Vec<SweepValue>,
    },
}

/// One value of a swept key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SweepValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A string (e.g. a model file path, an enum value).
    Str(String),
}

impl std::fmt::Display for SweepValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepValue::Bool(b) => write!(f, "{b}"),
            SweepValue::Int(i) => write!(f, "{i}"),
            SweepValue::Float(x) => write!(f, "{x:?}"),
            SweepValue::Str(s) => write!(f, "{s}"),
        }
    }
}
