//! The spec stage: YAML documents (`kind: model`, `kind: recipe`), their types, their JSON
//! Schemas, and loading with validation.

pub(crate) mod checks;
mod defaults;
pub mod load;
pub mod model;
mod overrides;
pub mod recipe;
mod resolved;
pub mod schema;
pub mod validate;
mod vars;
pub mod yaml;

pub use load::{load, DocKind, Document, LoadError, LoadedModel, LoadedRecipe};
pub use model::{Activation, Layer, ModelSpec};
pub use recipe::RecipeSpec;
