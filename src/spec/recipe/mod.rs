//! `kind: recipe` documents: a model, a task, and how to train and decode it.

mod decode;
mod sweep;
mod task;
mod train;

pub use decode::*;
pub use sweep::*;
pub use task::*;
pub use train::*;

use super::model::ModelSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `kind` of a recipe document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipeKind {
    /// An experiment recipe.
    Recipe,
}

/// A kiln recipe: which model to train on which task, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kiln recipe")]
pub struct RecipeSpec {
    /// Document kind; always `recipe`.
    pub kind: RecipeKind,
    /// Short name used in reports and run directories.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text describing the experiment.
    #[serde(default)]
    pub description: Option<String>,
    /// The model: a path to a `kind: model` file (relative to this recipe), or the model
    /// written inline.
    pub model: ModelRef,
    /// The task: data, loss and metrics.
    pub task: Task,
    /// Training settings.
    pub train: Train,
    /// How to generate sequences from the trained model.
    #[serde(default)]
    pub decode: Decode,
    /// Accept a model that lets position t see later positions although the task predicts the
    /// next token. kiln rejects such models unless this is `true`.
    #[serde(default)]
    pub allow_noncausal: bool,
    /// Trials that vary this recipe, run by `kiln sweep` (`kiln train` trains the recipe as
    /// written).
    #[serde(default)]
    pub sweep: Option<Sweep>,
    /// Train one model per seed and evaluate the average of their probabilities, reported
    /// beside the members' mean.
    #[serde(default)]
    pub ensemble: Option<Ensemble>,
}

/// An ensemble of identically configured models that differ in their seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    /// One member per seed (`train.seed`); at least two, all different.
    #[schemars(length(min = 2, max = 64))]
    pub seeds: Vec<u64>,
}

/// A model file path or an inline model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelRef {
    /// Path of a `kind: model` file, relative to the recipe.
    Path(String),
    /// The model itself.
    Inline(Box<ModelSpec>),
}
