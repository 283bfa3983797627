//! `kiln train`, and the printed summary and metrics of a run.

use super::{color, exit};
use crate::ir::Graph;
use crate::runtime::DeviceKind;
use crate::spec::LoadedRecipe;
use crate::tasks::uint16::StreamMetrics;
use crate::train::{self, GrammarReport, RunOptions, Summary, TaskReport};
use std::path::{Path, PathBuf};

pub(super) const RESOLVED: &str = "recipe.resolved.yaml";

/// Compile a recipe (see [`crate::compile::recipe`]); print diagnostics on failure and
/// return the exit status.
pub(super) fn compile(path: &Path, set: &[String]) -> Result<(LoadedRecipe, Graph), i32> {
    crate::compile::recipe(path, set, color()).map_err(|e| {
        eprint!("{e}");
        if matches!(e, crate::compile::CompileError::Internal(_)) {
            eprintln!();
        }
        e.exit_code()
    })
}

/// What `kiln train` was asked.
pub struct TrainArgs<'a> {
    /// The recipe (not with `resume`).
    pub recipe: Option<&'a Path>,
    /// Overrides.
    pub set: &'a [String],
    /// The run directory of a new run.
    pub out: Option<PathBuf>,
    /// The run directory to resume.
    pub resume: Option<PathBuf>,
    /// Where to train.
    pub device: DeviceKind,
    /// Mixed precision.
    pub matmul_dtype: Option<burn::tensor::FloatDType>,
    /// Skip the memory estimate's check.
    pub ignore_memory: bool,
    /// Steps between reads of the statistics (`None`: the device's default).
    pub read_every: Option<u64>,
    /// Pad token inputs to a multiple of this many positions (`None`: the device's default).
    pub pad_to: Option<usize>,
}

pub fn train_cmd(a: &TrainArgs) -> i32 {
    let (recipe, set, out, resume) = (a.recipe, a.set, a.out.clone(), &a.resume);
    if let Err(e) = crate::os::interrupt::install() {
        eprintln!("error: cannot install the Ctrl-C handler: {e}");
        return exit::INTERNAL;
    }
    let (dir, recipe_path) = match (resume, recipe) {
        (Some(dir), _) => {
            if !holds_run(dir) {
                eprintln!(
                    "error: `{}` has no checkpoint to resume from (checkpoint.safetensors)",
                    dir.display()
                );
                return exit::UNUSABLE;
            }
            (dir.clone(), dir.join(RESOLVED))
        }
        (None, Some(r)) => (PathBuf::new(), r.to_path_buf()),
        (None, None) => unreachable!("clap requires a recipe without --resume"),
    };
    let set = if resume.is_some() { &[][..] } else { set };
    let (doc, graph) = match compile(&recipe_path, set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let name = doc.spec.name.clone().unwrap_or_else(|| "recipe".into());
    // Refuse what cannot fit before anything is written, at the length the run pads to.
    // An ensemble's checkpoints are its members' (`member-<seed>/`), which all pad alike.
    let ckpt = |d: PathBuf| train::stored_state(&d.join("checkpoint.safetensors"));
    let first_member = doc.spec.ensemble.as_ref().and_then(|e| e.seeds.first());
    let stored = resume.as_ref().and_then(|_| {
        ckpt(dir.clone())
            .or_else(|| first_member.and_then(|s| ckpt(dir.join(format!("member-{s}")))))
    });
    let pad_to = a.pad_to.unwrap_or_else(|| {
        train::default_pad_to(a.device != DeviceKind::Cpu, stored.and_then(|s| s.pad_to))
    });
    let too_large = || {
        let est = train::memory::training(&graph, &doc.spec, pad_to);
        let e = est.check("training").err().filter(|_| !a.ignore_memory)?;
        eprintln!("error: {e}");
        Some(exit::TOO_LARGE)
    };
    // One writer per run directory, held until this process ends.
    let (dir, _lock) = if resume.is_some() {
        let lock = match super::lock_dir(&dir, crate::os::lock::Mode::Exclusive) {
            Ok(l) => l,
            Err(code) => return code,
        };
        // A finished run: its stored result, unchanged (nothing is run, so nothing need fit).
        if let Some(summary) = read_summary(&dir) {
            eprintln!(
                "kiln: `{}` has finished; its stored result (nothing was run or changed):",
                dir.display()
            );
            print_summary(&name, &graph, &summary, &dir);
            return exit::OK;
        }
        if let Some(code) = too_large() {
            return code;
        }
        (dir, lock)
    } else {
        if let Some(code) = too_large() {
            return code;
        }
        let dir = out.unwrap_or_else(|| {
            let name = doc.spec.name.clone().unwrap_or_else(|| "run".into());
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(format!("{name}-{secs}"))
        });
        let lock = match super::lock_dir(&dir, crate::os::lock::Mode::Exclusive) {
            Ok(l) => l,
            Err(code) => return code,
        };
        if holds_run(&dir) {
            eprintln!("error: `{}` already holds a run; continue it with `kiln train --resume {}` or choose another --out", dir.display(), dir.display());
            return exit::UNUSABLE;
        }
        if let Err(e) = write_resolved(&dir, &doc, &graph) {
            eprintln!(
                "error: cannot write the run directory `{}`: {e}",
                dir.display()
            );
            return exit::UNUSABLE;
        }
        (dir, lock)
    };
    if doc.spec.sweep.is_some() {
        eprintln!("kiln: this recipe has a `sweep` section; `kiln train` trains the recipe as written, `kiln sweep` runs the trials");
    }
    eprintln!(
        "kiln: training `{name}` ({}, {} parameters) in {}",
        graph.name,
        graph.param_count(),
        dir.display()
    );
    let opts = RunOptions {
        dir: dir.clone(),
        progress: true,
        device: a.device,
        matmul_dtype: a.matmul_dtype,
        texts: run_texts(&dir),
        // A read costs nothing on the CPU; on a GPU it makes the host wait for the device.
        read_every: a
            .read_every
            .unwrap_or(if a.device == DeviceKind::Cpu { 1 } else { 25 }),
        pad_to: a.pad_to,
    };
    let result = match &doc.spec.ensemble {
        None => train::train(&doc.spec, graph.clone(), &opts),
        Some(e) => train::train_ensemble(&doc.spec, &graph, &e.seeds, &opts),
    };
    match result {
        Ok(summary) => {
            let text = serde_json::to_string_pretty(&summary).expect("summary serializes");
            let path = dir.join("summary.json");
            if let Err(e) = crate::util::write_atomic(&path, text.as_bytes()) {
                eprintln!("error: cannot write `{}`: {e}", path.display());
                return exit::UNUSABLE;
            }
            print_summary(&name, &graph, &summary, &dir);
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// The run's texts for TensorBoard: the resolved recipe and the graph, as the run directory
/// holds them (files that do not read are left out).
fn run_texts(dir: &Path) -> Vec<(String, String)> {
    [("recipe", RESOLVED, "yaml"), ("graph", "graph.txt", "text")]
        .into_iter()
        .filter_map(|(tag, file, lang)| {
            let text = std::fs::read_to_string(dir.join(file)).ok()?;
            Some((tag.to_string(), crate::tensorboard::code_block(lang, &text)))
        })
        .collect()
}

/// A finished run's summary.json, when it holds one that reads.
fn read_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `dir` holds a run to resume: a checkpoint, or an ensemble's member directories.
fn holds_run(dir: &Path) -> bool {
    dir.join("checkpoint.safetensors").exists()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("member-"))
        })
}

fn write_resolved(dir: &Path, doc: &LoadedRecipe, graph: &Graph) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let spec = doc.resolved();
    // JSON is YAML: the resolved recipe loads with the ordinary loader on --resume.
    let mut text = String::from(
        "# The recipe of this run after overrides, its model inlined (JSON is valid YAML).\n",
    );
    text.push_str(&serde_json::to_string_pretty(&spec).expect("recipe serializes"));
    text.push('\n');
    crate::util::write_atomic(&dir.join(RESOLVED), text.as_bytes())?;
    crate::util::write_atomic(
        &dir.join("graph.txt"),
        crate::ir::print::to_text(graph).as_bytes(),
    )
}

fn print_summary(name: &str, graph: &Graph, s: &Summary, dir: &Path) {
    println!(
        "{name}: {} ({} parameters), {} steps in {:.1} s; {}",
        graph.name,
        graph.param_count(),
        s.steps,
        s.seconds,
        s.stopped
    );
    println!(
        "final train loss {:.4}, validation loss {:.4} (best {:.4})",
        s.final_loss, s.val_loss, s.best_val_loss
    );
    if let Some(m) = &s.metrics {
        print_metrics(m);
    }
    if let Some(h) = &s.evaluations {
        print_history(h);
    }
    if let Some(e) = &s.ensemble {
        print_ensemble(e, s);
    }
    if let Some(m) = &s.soft_attention_metrics {
        print_soft_attention(m);
    }
    println!("run directory: {}", dir.display());
}

/// The ensemble's metrics beside its members' mean ± std.
fn print_ensemble(e: &train::EnsembleSummary, s: &Summary) {
    let json = |x: &Summary| serde_json::to_value(x).expect("summary serializes");
    let task = s.metrics.as_ref().map_or("", |m| match m {
        TaskReport::Grammar(_) => "grammar",
        TaskReport::Uint16(_) => "uint16",
        TaskReport::Seq2seq(_) => "seq2seq",
        TaskReport::Forecast(_) => "forecast",
        TaskReport::Text(_) => "text",
    });
    let whole = json(s);
    let members: Vec<serde_json::Value> = e.members.iter().map(json).collect();
    let what = if task == "forecast" {
        "point forecasts"
    } else {
        "probabilities"
    };
    println!(
        "ensemble of {} (seeds {:?}): average of the members' {what}",
        e.seeds.len(),
        e.seeds
    );
    println!(
        "{:<20} {:>22} {:>10}",
        "metric", "members (mean ± std)", "ensemble"
    );
    for m in crate::sweep::metrics_of(task) {
        let vals: Vec<f64> = members
            .iter()
            .filter_map(|v| v.pointer(m.pointer).and_then(serde_json::Value::as_f64))
            .collect();
        let (mean, std) = crate::sweep::mean_std(&vals);
        let ens = whole.pointer(m.pointer).and_then(serde_json::Value::as_f64);
        // Members that left the metric undefined are not averaged in as zeros.
        let members_cell = match vals.len() {
            0 => "-".to_string(),
            k if k < members.len() => format!("{mean:.4} ± {std:.4} ({k} of {})", members.len()),
            _ => format!("{mean:.4} ± {std:.4}"),
        };
        println!(
            "{:<20} {:>22} {:>10}",
            m.name,
            members_cell,
            ens.map_or("-".into(), |x| format!("{x:.4}"))
        );
    }
}

pub(super) fn print_soft_attention(m: &TaskReport) {
    println!("the same model with its hard attention evaluated soft (softmax weights):");
    print_metrics(m);
}

pub(super) fn print_metrics(m: &TaskReport) {
    match m {
        TaskReport::Grammar(g) => print_grammar(g),
        TaskReport::Uint16(u) => print_stream(u),
        TaskReport::Text(t) => print_text(t),
        TaskReport::Forecast(r) => {
            println!(
                "test: {} windows (standardized units: the training part's mean and deviation per channel)",
                r.windows
            );
            println!("{:<16} {:>8} {:>8}", "forecast", "MSE", "MAE");
            for (name, e) in [
                ("model", r.model),
                ("last value", r.last_value),
                ("seasonal naive", r.seasonal_naive),
            ] {
                println!("{name:<16} {:>8.4} {:>8.4}", e.mse, e.mae);
            }
            let best = r.last_value.mse.min(r.seasonal_naive.mse);
            println!(
                "{}",
                if r.model.mse < best {
                    "the model beats both baselines (MSE)"
                } else {
                    "the model does NOT beat the better baseline (MSE)"
                }
            );
        }
        TaskReport::Seq2seq(r) => {
            println!(
                "test: {} pairs; exact match (greedy decoding) {:.4}; token accuracy (teacher-forced) {:.4} (chance {:.4})",
                r.n, r.exact_match, r.token_accuracy, r.chance_token_accuracy
            );
        }
    }
}

fn print_grammar(m: &GrammarReport) {
    // A rate over zero sequences is undefined: "-", never 0.
    let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    println!(
        "{:<12} {:>9} {:>8} {:>8} {:>10} {:>12}",
        "prompts", "finished", "R1", "R2", "R2-compl.", "grammatical"
    );
    for (label, x) in [("ID", &m.id), ("OOD", &m.ood)] {
        println!(
            "{:<12} {:>9} {:>8} {:>8} {:>10} {:>12}",
            format!("{label} ({})", x.n),
            f(x.finished),
            f(x.rule1),
            f(x.rule2),
            f(x.rule2_completion),
            f(x.grammatical)
        );
    }
    println!(
        "{:<12} {:>9} {:>8.3} {:>8} {:>10.3} {:>12}",
        "chance (OOD)", "", m.chance_ood_r1, "", m.chance_ood_r2_completion, ""
    );
    println!("(R1, R2 and grammatical are fractions of the finished sequences; R2 on OOD prompts is violated by the prompt itself)");
    explain_unfinished(m);
}

/// Below `print_grammar`'s table: why a rate is "-" (no completion finished, so it is 0/0) or
/// rests on very few completions (under 10, and under half the prompts), with the counts,
/// the budget, and what would finish more.
fn explain_unfinished(m: &GrammarReport) {
    const FEW: usize = 10;
    let sets = [("ID", &m.id), ("OOD", &m.ood)];
    let undefined = sets.iter().any(|(_, x)| x.has_undefined());
    let few: Vec<&str> = sets
        .iter()
        .filter(|(_, x)| x.finished_n > 0 && x.finished_n < FEW && 2 * x.finished_n < x.n)
        .map(|(l, _)| *l)
        .collect();
    if !undefined && few.is_empty() {
        return;
    }
    if undefined {
        println!("\"-\" is undefined: a fraction of zero finished completions (0/0), not 0.");
    }
    if !few.is_empty() {
        println!(
            "note: the {} rates rest on fewer than {FEW} finished completions.",
            few.join(" and ")
        );
    }
    let budget = if m.decode_max_length > 0 {
        format!("{} tokens", m.decode_max_length)
    } else {
        "the length limit".to_string()
    };
    println!(
        "{} of {} ID and {} of {} OOD prompts finished: a completion is finished if it emits EOS within {budget} (SOS and prompt included; task.max_length).",
        m.id.finished_n, m.id.n, m.ood.finished_n, m.ood.n
    );
    println!("These metrics decode greedily, as the reference does: a completion ends only where EOS is the most probable next token. Where word lengths are spread uniformly up to task.max_length (baN, bbaN), the end of a word is unlikely at any one length short of the longest, so even a well-trained model seldom finishes within the budget; an undertrained one may never emit EOS.");
    println!("No recipe setting lengthens this budget alone (task.max_length is also the longest training word), and the recipe's `decode` section applies to `kiln generate`, not to these metrics: to see how the model completes a prompt with a longer budget or with sampling, run `kiln generate RUN_DIR --prompt \"...\" --set decode.max_new_tokens=N` or `--set decode.strategy=sample`.");
}

fn print_stream(m: &StreamMetrics) {
    println!(
        "test: {} predictions in {} windows, loss {:.4} nats",
        m.predictions, m.windows, m.loss
    );
    println!(
        "{:<8} {:>8} {:>19} {:>8} {:>8}  verdict",
        "", "model", "95% CI", "chance", "unigram"
    );
    for a in &m.top {
        println!(
            "{:<8} {:>8.4} {:>19} {:>8.4} {:>8.4}  {}",
            format!("top-{}", a.k),
            a.model,
            format!("[{:.4}, {:.4}]", a.ci95.0, a.ci95.1),
            a.chance,
            a.unigram,
            if a.beats_baselines {
                "above chance and unigram"
            } else {
                "NOT above both baselines"
            }
        );
    }
    println!("(unigram: always the k values most frequent in the training part; the interval treats predictions as independent, which positions of one window are not)");
}

fn print_text(m: &crate::tasks::text::metrics::TextMetrics) {
    println!(
        "test: {} predictions in {} windows",
        m.predictions, m.windows
    );
    let per = format!("bits/{}", m.unit);
    println!(
        "{:<22} {:>11} {:>10} {:>11}",
        "", "nats/token", per, "perplexity"
    );
    let ngram = format!("Kneser-Ney {}-gram", m.ngram_order);
    for (name, s) in [
        ("model", &m.model),
        (ngram.as_str(), &m.ngram),
        ("unigram", &m.unigram),
    ] {
        let bits = s.bits_per_unit.map_or("-".into(), |b| format!("{b:.4}"));
        println!(
            "{name:<22} {:>11.4} {bits:>10} {:>11.3}",
            s.nats_per_token, s.perplexity
        );
    }
    println!(
        "model − n-gram: {:+.4} nats/token, 95% CI [{:+.4}, {:+.4}] over the test windows: {}",
        m.vs_ngram,
        m.vs_ngram_ci95.0,
        m.vs_ngram_ci95.1,
        if m.beats_ngram {
            "the model beats the n-gram"
        } else {
            "the model does NOT beat the n-gram"
        }
    );
    println!(
        "(baselines fitted on the training part: the n-gram on its first {} tokens; same targets and in-window histories as the model)",
        m.ngram_train_tokens
    );
}

/// A grammar task's metrics over the run's evaluations: at the lowest validation loss, and
/// each metric's maximum over the evaluations (the rule-extrapolation paper's numbers).
pub(super) fn print_history(h: &train::history::History) {
    let cols = [
        ("ID R1", "/id/rule1"),
        ("ID gram.", "/id/grammatical"),
        ("OOD fin.", "/ood/finished"),
        ("OOD R1", "/ood/rule1"),
        ("OOD R2-compl.", "/ood/rule2_completion"),
    ];
    let cell = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .map_or("-".to_string(), |x| format!("{x:.3}"))
    };
    println!(
        "over {} evaluations (the rule-extrapolation paper reports each rule metric's maximum):",
        h.evaluations
    );
    let head: Vec<String> = cols.iter().map(|(n, _)| format!("{n:>15}")).collect();
    println!("{:<34}{}", "", head.join(""));
    let at = &h.at_min_val_loss;
    for (label, v) in [
        (format!("at min. val. loss (step {})", at.step), &at.metrics),
        ("max over evaluations".to_string(), &h.max_over_evaluations),
    ] {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, p)| format!("{:>15}", cell(v, p)))
            .collect();
        println!("{label:<34}{}", cells.join(""));
    }
}
