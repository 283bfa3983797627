//! A recipe as it runs: its model inlined and its data files named by absolute paths, so that
//! a run directory's copy (`recipe.resolved.yaml`) and a sweep trial's content key describe
//! exactly what was trained, wherever they are read from.

use super::recipe::{ModelRef, RecipeSpec, Task};
use super::LoadedRecipe;
use std::path::{Path, PathBuf};

impl LoadedRecipe {
    /// Data paths are relative to the recipe file: make them absolute (lexically normalized)
    /// against the current directory and `recipe`'s folder.
    pub fn absolutize_data(&mut self, recipe: &Path) {
        let data = match &mut self.spec.task {
            Task::Uint16 { path, .. } => Some(path),
            Task::Forecast(f) => Some(&mut f.path),
            _ => None,
        };
        let dir = recipe.parent().unwrap_or(Path::new(""));
        let cwd = std::env::current_dir().unwrap_or_default();
        let absolute = |data: &mut String| {
            *data = crate::util::normalize_path(&cwd.join(dir).join(&*data))
                .to_string_lossy()
                .into_owned();
        };
        if let Some(data) = data {
            absolute(data);
        }
        if let Task::Text(t) = &mut self.spec.task {
            absolute(&mut t.path);
            if !matches!(t.tokenizer.as_str(), "char" | "byte") {
                absolute(&mut t.tokenizer);
            }
        }
    }

    /// The data files the task reads.
    pub fn data_files(&self) -> Vec<PathBuf> {
        match &self.spec.task {
            Task::Uint16 { path, .. } => vec![PathBuf::from(path)],
            Task::Forecast(f) => vec![PathBuf::from(&f.path)],
            Task::Text(t) => crate::tasks::text::cache::task_files(t),
            _ => Vec::new(),
        }
    }

    /// The recipe with its model inlined (after overrides): everything a run depends on.
    pub fn resolved(&self) -> RecipeSpec {
        let mut spec = self.spec.clone();
        spec.model = ModelRef::Inline(Box::new(self.model.spec.clone()));
        spec
    }
}
