//! `kind: model` documents: a list of layers composed with blocks.

mod layer;

pub use layer::Layer;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `kind` of a model document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A model specification.
    Model,
}

/// A kiln model: an architecture written as a list of layers.
///
/// Numbers anywhere in a model may be written as `$name`, a reference to an entry of `vars`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kiln model")]
pub struct ModelSpec {
    /// Document kind; always `model`.
    pub kind: ModelKind,
    /// Short name used in reports and run directories.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text describing the model.
    #[serde(default)]
    pub description: Option<String>,
    /// Token vocabulary size. Leave it out in a model used by a recipe: the recipe's task
    /// supplies it (and a different value here is an error).
    #[serde(default)]
    #[schemars(range(min = 2, max = 1048576))]
    pub vocab: Option<u32>,
    /// Named values that numbers in the model refer to as `$name`, e.g. `d_model: 64` and then
    /// `dim: $d_model`. Override them from the command line with `--set vars.d_model=128`
    /// (or `--set model.vars.d_model=128` on a recipe).
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}))]
    pub vars: BTreeMap<String, VarValue>,
    /// The layers, applied in order to the token ids. The first layer is usually `embedding`
    /// and the last `head`. In an encoder-decoder model these are the decoder's layers.
    #[schemars(length(min = 1))]
    pub layers: Vec<Layer>,
    /// An encoder-decoder model's encoder: layers applied to the source token ids (usually
    /// `embedding` first), whose output the decoder's `cross_attention` layers read. The
    /// encoder need not be causal. Leave it out for a decoder-only model.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub encoder: Option<Vec<Layer>>,
}

/// The value of a variable: a number or a boolean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum VarValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
}

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit (exact, erf form).
    Gelu,
    /// x · sigmoid(x) (swish).
    Silu,
    /// Hyperbolic tangent.
    Tanh,
    /// ln(1 + eˣ).
    Softplus,
}

/// How `phase_attention` compares the phases of two positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhaseMode {
    /// Mean cosine of the phase differences.
    #[default]
    Cosine,
    /// Magnitude of the amplitude-weighted sum of e^{i·Δφ}, normalized to [0, 1].
    Complex,
}

/// Rotary position embedding (RoPE) of queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rope {
    /// Base of the rotation frequencies: pair i of a head of dimension d rotates by
    /// position · base^(−2i/d). kiln pairs dimension i with i + d/2 (the Hugging Face / Llama
    /// convention).
    #[serde(default = "default_rope_base")]
    #[schemars(range(min = 1.0, max = 1e12))]
    pub base: f64,
    /// YaRN context extension (Peng et al. 2023, as Hugging Face's `rope_type: yarn`): the
    /// frequencies of a model trained on `original_max_len` positions are interpolated by
    /// `factor` where their wavelength is long, kept where it is short, blended between, and
    /// cos/sin are scaled by 0.1·ln(factor) + 1. Leave it out for plain RoPE.
    #[serde(default)]
    pub yarn: Option<Yarn>,
}

/// YaRN scaling of rotary frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Yarn {
    /// Context extension factor s (new length / original length).
    #[schemars(range(min = 1.0, max = 1024.0))]
    pub factor: f64,
    /// Positions the frequencies were trained for.
    #[schemars(range(min = 1, max = 16777216))]
    pub original_max_len: u32,
    /// Dimensions that rotate more than this many times over the original length keep their
    /// frequency.
    #[serde(default = "default_beta_fast")]
    #[schemars(range(min = 0.0, max = 1e6))]
    pub beta_fast: f64,
    /// Dimensions that rotate fewer times than this are fully interpolated.
    #[serde(default = "default_beta_slow")]
    #[schemars(range(min = 0.0, max = 1e6))]
    pub beta_slow: f64,
}

fn default_beta_fast() -> f64 {
    32.0
}

fn default_beta_slow() -> f64 {
    1.0
}

fn default_rope_base() -> f64 {
    10000.0
}
