//! Ensembles: one member trained per seed, evaluated as one graph that averages the members'
//! probabilities.

use super::{io_at, load_checkpoint, train, Data, RunOptions, Summary, TaskReport, TrainError};
use crate::ir::Graph;
use crate::runtime::{Runtime, Weights};
use crate::spec::recipe::RecipeSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The members of an ensemble run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsembleSummary {
    /// The members' seeds.
    pub seeds: Vec<u64>,
    /// Their summaries, in seed order.
    pub members: Vec<Summary>,
}

/// An ensemble run's model: one graph of `seeds.len()` copies of `graph` (see
/// [`Graph::ensemble`]) and the weights of the members in `dir/member-<seed>/`, read by `load`
/// (last checkpoint or best weights) and renamed `member<i>.*`.
pub fn ensemble_model(
    graph: &Graph,
    dir: &Path,
    seeds: &[u64],
    load: impl Fn(&Path) -> Result<Weights, String>,
) -> Result<(Graph, Weights), String> {
    let mut weights = Weights::new();
    for (i, seed) in seeds.iter().enumerate() {
        let w = load(&dir.join(format!("member-{seed}")))?;
        weights.extend(w.into_iter().map(|(k, v)| (format!("member{i}.{k}"), v)));
    }
    Ok((Graph::ensemble(&vec![graph.clone(); seeds.len()])?, weights))
}

/// For a model with hard attention: the task report with its attention evaluated soft
/// (softmax weights); `None` for other models.
pub fn soft_attention_report(data: &Data, rt: &mut Runtime) -> Option<TaskReport> {
    rt.has_hard_attention().then(|| {
        rt.soft_attention = true;
        let m = data.report(rt);
        rt.soft_attention = false;
        m
    })
}

/// Train one member per seed in `opts.dir/member-<seed>` (a member with a summary is done
/// and kept; an interrupted one resumes from its checkpoint), then evaluate the ensemble: one
/// graph whose output is the log of the members' average probabilities, with their last
/// weights.
pub fn train_ensemble(
    recipe: &RecipeSpec,
    graph: &Graph,
    seeds: &[u64],
    opts: &RunOptions,
) -> Result<Summary, TrainError> {
    let mut members = Vec::with_capacity(seeds.len());
    for (k, &seed) in seeds.iter().enumerate() {
        let dir = opts.dir.join(format!("member-{seed}"));
        let done = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Summary>(&t).ok());
        let summary = match done {
            Some(s) => s,
            None => {
                if opts.progress {
                    eprintln!(
                        "kiln: ensemble member {}/{} (seed {seed}) in {}",
                        k + 1,
                        seeds.len(),
                        dir.display()
                    );
                }
                let mut r = recipe.clone();
                r.train.seed = seed;
                r.ensemble = None;
                let s = train(
                    &r,
                    graph.clone(),
                    &RunOptions {
                        dir: dir.clone(),
                        // The recipe and graph are the ensemble's, in its own events.
                        texts: Vec::new(),
                        ..opts.clone()
                    },
                )
                .map_err(|e| match e {
                    // The ensemble resumes as a whole, from its own directory.
                    TrainError::Interrupted {
                        signal,
                        step,
                        total,
                        ..
                    } => TrainError::Interrupted {
                        signal,
                        step,
                        total,
                        dir: opts.dir.clone(),
                    },
                    e => e,
                })?;
                let text = serde_json::to_string_pretty(&s).expect("summary serializes");
                let path = dir.join("summary.json");
                crate::util::write_atomic(&path, text.as_bytes()).map_err(io_at(&path))?;
                s
            }
        };
        members.push(summary);
    }
    let started = std::time::Instant::now();
    let (eg, weights) = ensemble_model(graph, &opts.dir, seeds, |d| {
        load_checkpoint(&d.join("checkpoint.safetensors"))
            .map(|(w, _, _)| w)
            .map_err(|e| e.to_string())
    })
    .map_err(TrainError::Checkpoint)?;
    let mut rt = Runtime::with_values(eg, opts.device.device(false), &weights)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    rt.matmul_dtype = opts.matmul_dtype;
    let data = Data::new(&recipe.task, recipe.train.seed)?;
    let bs = data.batch_size(recipe.train.batch_size as usize);
    let val_loss = data.val_loss(&rt, bs.max(64));
    let metrics = data.report(&rt);
    // The ensemble's own events: its texts, and its validation loss and metrics at its
    // members' last step (their curves are in their directories).
    let step = members.iter().map(|m| m.steps).max().unwrap_or(0);
    let mut events = super::events::Events::open(&opts.dir, step, &opts.texts);
    events.scalars(step, &[("val/loss".into(), val_loss)]);
    events.json(
        step,
        "metrics",
        &serde_json::to_value(&metrics).expect("report serializes"),
    );
    let n = members.len() as f64;
    Ok(Summary {
        steps: members.iter().map(|m| m.steps).sum(),
        final_loss: members.iter().map(|m| m.final_loss).sum::<f64>() / n,
        val_loss,
        best_val_loss: val_loss,
        stopped: format!("ensemble of {} members", members.len()),
        metrics: Some(metrics),
        soft_attention_metrics: None,
        evaluations: None,
        seconds: members.iter().map(|m| m.seconds).sum::<f64>() + started.elapsed().as_secs_f64(),
        ensemble: Some(EnsembleSummary {
            seeds: seeds.to_vec(),
            members,
        }),
    })
}
