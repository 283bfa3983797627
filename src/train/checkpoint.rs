//! Checkpoints: one safetensors file of weights `w/<name>`, AdamW moments `m/<name>` and
//! `v/<name>`, and the training state as JSON metadata, written atomically, with a checksum of
//! every tensor and of the state (see [`crate::runtime::to_safetensors_with`]) verified on
//! every load.

use super::TrainError;
use crate::runtime::{from_safetensors, Runtime, Weights};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Resumable training state besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Optimizer steps done.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Position (in sequences) within the epoch's order.
    pub pos: usize,
    /// Best validation loss so far (`f64::MAX` before the first evaluation: JSON has no infinity).
    pub best_val: f64,
    /// Evaluations since the best one.
    pub since_best: u32,
    /// Clock of the frequency curriculum (steps, slowed down while the validation loss
    /// stalls; see [`crate::spec::recipe::FrequencyCurriculum`]).
    #[serde(default)]
    pub freq_clock: f64,
    /// The training loss of the last step done (so that a resumed run that has nothing left
    /// to do reports it, instead of a loss it never computed).
    #[serde(default)]
    pub last_loss: Option<f64>,
    /// The validation loss of the last evaluation.
    #[serde(default)]
    pub last_val_loss: Option<f64>,
    /// Why training stopped before its last step (early stopping); a resumed run with a
    /// reason trains no further.
    #[serde(default)]
    pub stopped: Option<String>,
    /// The multiple of positions token inputs were padded to when the checkpoint was written
    /// ([`crate::runtime::Runtime::pad_to`]); a resumed run pads the same way (`None`: a
    /// checkpoint from before padding existed, which never padded on the CPU).
    #[serde(default)]
    pub pad_to: Option<usize>,
}

impl State {
    pub(crate) fn fresh() -> Self {
        State {
            step: 0,
            epoch: 0,
            pos: 0,
            best_val: f64::MAX,
            since_best: 0,
            freq_clock: 0.0,
            last_loss: None,
            last_val_loss: None,
            stopped: None,
            pad_to: None,
        }
    }
}

/// AdamW moments of every parameter, flat.
pub struct Moments {
    pub(crate) m: Vec<Tensor<1>>,
    pub(crate) v: Vec<Tensor<1>>,
}

/// Write a checkpoint atomically. Weights that are not finite are refused (the previous
/// checkpoint stays, and the error says which step it holds).
pub(crate) fn save_checkpoint(
    path: &Path,
    rt: &Runtime,
    mom: &Moments,
    state: &State,
) -> Result<(), TrainError> {
    let mut values = HashMap::new();
    for (i, name) in rt.names.iter().enumerate() {
        let shape = rt.shapes[i].clone();
        let w = rt.params[i].to_vec();
        if w.iter().any(|x| !x.is_finite()) {
            return Err(TrainError::NonFiniteWeight {
                name: name.clone(),
                step: state.step,
                kept: load_checkpoint(path).map_or(0, |(_, _, s)| s.step),
            });
        }
        values.insert(format!("w/{name}"), (w, shape.clone()));
        let flat = |t: &Tensor<1>| {
            t.to_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        values.insert(format!("m/{name}"), (flat(&mom.m[i]), shape.clone()));
        values.insert(format!("v/{name}"), (flat(&mom.v[i]), shape));
    }
    let meta = HashMap::from([(
        "kiln_state".to_string(),
        serde_json::to_string(state).expect("state serializes"),
    )]);
    let bytes = crate::runtime::to_safetensors_with(&values, Some(meta))
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    crate::util::write_atomic(path, &bytes).map_err(|e| {
        TrainError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write the checkpoint `{}`: {e}", path.display()),
        ))
    })?;
    Ok(())
}

type Loaded = (Weights, Weights, State);

/// Read and verify a checkpoint: (weights, moments, state).
pub fn load_checkpoint(path: &Path) -> Result<Loaded, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| {
        TrainError::Checkpoint(format!("cannot read checkpoint `{}`: {e}", path.display()))
    })?;
    let all = from_safetensors(&bytes).map_err(|e| {
        TrainError::Checkpoint(
            crate::runtime::weights_file::in_file(e, path).to_string() + checkpoint_help(path),
        )
    })?;
    let meta = crate::runtime::weights_file::metadata(&bytes).map_err(|e| {
        TrainError::Checkpoint(format!(
            "`{}` is not a kiln checkpoint: {e}",
            path.display()
        ))
    })?;
    let state: State = meta
        .get("kiln_state")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "`{}` is not a kiln checkpoint (no training state)",
                path.display()
            ))
        })?;
    let (mut w, mut m) = (HashMap::new(), HashMap::new());
    for (k, v) in all {
        if let Some(n) = k.strip_prefix("w/") {
            w.insert(n.to_string(), v);
        } else {
            m.insert(k, v);
        }
    }
    Ok((w, m, state))
}

/// The training state stored in the checkpoint at `path`, read from the file's header alone
/// (its tensors are not read); `None` when there is none to read ([`load_checkpoint`] says why
/// when the run loads it).
pub fn stored_state(path: &Path) -> Option<State> {
    let meta = crate::runtime::weights_file::file_metadata(path).ok()?;
    serde_json::from_str(meta.get("kiln_state")?).ok()
}

/// What to do about a damaged weights file: use the other one of the run.
pub fn checkpoint_help(path: &Path) -> &'static str {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("best.safetensors") => {
            "\n  help: the last checkpoint may still be good: `kiln eval RUN --checkpoint last`"
        }
        _ => "\n  help: the run cannot resume from it; its best weights may still be good (`kiln eval RUN --checkpoint best`), or start the run again",
    }
}
