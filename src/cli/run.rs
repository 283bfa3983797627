//! `kiln train`, `kiln eval`, `kiln generate`.

use super::{color, exit, Which};
use crate::ir::Graph;
use crate::runtime::{DeviceKind, Runtime};
use crate::spec::LoadedRecipe;
use crate::tasks::uint16::StreamMetrics;
use crate::train::{self, Data, GrammarReport, RunOptions, Summary, TaskReport};
use std::path::{Path, PathBuf};

const RESOLVED: &str = "recipe.resolved.yaml";

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
}

pub fn train_cmd(a: &TrainArgs) -> i32 {
    let (recipe, set, out, resume) = (a.recipe, a.set, a.out.clone(), &a.resume);
    if let Err(e) = crate::os::interrupt::install() {
        eprintln!("error: cannot install the Ctrl-C handler: {e}");
        return exit::INTERNAL;
    }
    let what = std::env::args().collect::<Vec<_>>().join(" ");
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
    // Refuse what cannot fit before anything is written.
    if !a.ignore_memory {
        if let Err(e) = train::memory::training(&graph, &doc.spec).check("training") {
            eprintln!("error: {e}");
            return exit::TOO_LARGE;
        }
    }
    // One writer per run directory, held until this process ends.
    let (dir, _lock) = if resume.is_some() {
        let lock = match lock_dir(&dir, &what) {
            Ok(l) => l,
            Err(code) => return code,
        };
        // A finished run: its stored result, unchanged.
        if let Some(summary) = read_summary(&dir) {
            eprintln!(
                "kiln: `{}` has finished; its stored result (nothing was run or changed):",
                dir.display()
            );
            print_summary(&name, &graph, &summary, &dir);
            return exit::OK;
        }
        (dir, lock)
    } else {
        let dir = out.unwrap_or_else(|| {
            let name = doc.spec.name.clone().unwrap_or_else(|| "run".into());
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(format!("{name}-{secs}"))
        });
        let lock = match lock_dir(&dir, &what) {
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

/// Take the run directory's lock (creating the directory); a busy directory is an error
/// naming its holder.
fn lock_dir(dir: &Path, what: &str) -> Result<crate::os::lock::DirLock, i32> {
    use crate::os::lock::{DirLock, LockError, Mode};
    DirLock::acquire(dir, Mode::Exclusive, what).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            LockError::Busy { .. } => exit::BUSY,
            LockError::Io { .. } => exit::UNUSABLE,
        }
    })
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

fn print_soft_attention(m: &TaskReport) {
    println!("the same model with its hard attention evaluated soft (softmax weights):");
    print_metrics(m);
}

fn print_metrics(m: &TaskReport) {
    match m {
        TaskReport::Grammar(g) => print_grammar(g),
        TaskReport::Uint16(u) => print_stream(u),
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

pub fn eval_cmd(
    run: &Path,
    which: Which,
    prompt: Option<&str>,
    set: &[String],
    ignore_memory: bool,
) -> i32 {
    if let Some(bad) = set.iter().find(|s| !s.starts_with("decode.")) {
        eprintln!("error: `--set {bad}`: `kiln generate` changes only `decode.*` settings; retrain to change anything else");
        return 2;
    }
    let (doc, graph) = match compile(&run.join(RESOLVED), set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let load = |dir: &Path| match which {
        Which::Best => {
            let path = dir.join("best.safetensors");
            crate::runtime::load_weights(&path)
                .map_err(|e| e.to_string() + train::checkpoint::checkpoint_help(&path))
        }
        Which::Last => train::load_checkpoint(&dir.join("checkpoint.safetensors"))
            .map(|(w, _, _)| w)
            .map_err(|e| e.to_string()),
    };
    // An ensemble run: one graph of all members, each with its own weights.
    let model = match &doc.spec.ensemble {
        None => load(run).map(|w| (graph, w)),
        Some(e) => train::ensemble_model(&graph, run, &e.seeds, load),
    };
    let (graph, weights) = match model {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let rt = match Runtime::with_values(graph.clone(), DeviceKind::Cpu.device(false), &weights) {
        Ok(rt) => rt,
        Err(e) => {
            // The weights do not belong to this model: the file cannot be used.
            eprintln!("error: {e}");
            return exit::UNUSABLE;
        }
    };
    let data = match Data::new(&doc.spec.task, doc.spec.train.seed) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let Some(p) = prompt else {
        print_metrics(&data.report(&rt));
        let mut rt = rt;
        if let Some(m) = train::soft_attention_report(&data, &mut rt) {
            print_soft_attention(&m);
        }
        return 0;
    };
    let d = &doc.spec.decode;
    let (ids, settings, show): Prompt = match &data {
        Data::Grammar(g) => {
            let symbols = symbols(g.language);
            let mut ids = vec![i64::from(crate::tasks::grammar::SOS)];
            for tok in p.split_whitespace() {
                match symbols.iter().position(|s| *s == tok) {
                    Some(i) if i >= 3 => ids.push(i as i64),
                    Some(_) => {
                        eprintln!(
                            "error: `{tok}` is a special token; a prompt holds only the language's symbols ({}); kiln starts it with <sos> itself, and <eos> and <pad> are the model's to produce",
                            crate::diag::one_of(&symbols[3..])
                        );
                        return exit::UNUSABLE;
                    }
                    None => {
                        eprintln!(
                            "error: `{tok}` is not a symbol of this language; use {}",
                            crate::diag::one_of(&symbols[3..])
                        );
                        return 2;
                    }
                }
            }
            let show = move |t: i64| symbols.get(t as usize).copied().unwrap_or("?").to_string();
            (ids, g.settings(d), Box::new(show))
        }
        Data::Stream(s) => {
            let mut ids = Vec::new();
            for tok in p.split_whitespace() {
                match tok.parse::<u32>() {
                    Ok(v) if (v as usize) < s.vocab => ids.push(i64::from(v)),
                    _ => {
                        eprintln!(
                            "error: `{tok}` is not a value of this stream; use integers below {}",
                            s.vocab
                        );
                        return 2;
                    }
                }
            }
            if ids.is_empty() {
                eprintln!("error: the prompt is empty; give values separated by spaces, e.g. --prompt \"3 1 4\"");
                return 2;
            }
            let eos = d.eos_token_id.map(i64::from);
            let settings = crate::decode::Settings {
                d: d.clone(),
                eos,
                pad: d.pad_token_id.map(i64::from).or(eos).unwrap_or(0),
                default_max_length: (ids.len() + 16).min(s.context.max(ids.len())),
                source_len: 0,
            };
            (ids, settings, Box::new(|t: i64| t.to_string()))
        }
        Data::Forecast(_) => {
            eprintln!("error: a forecasting model has nothing to generate from a prompt; `kiln eval RUN` prints its test errors");
            return 2;
        }
        Data::Seq2seq(s) => {
            use crate::tasks::seq2seq::{source, BOS, EOS, FIRST, PAD};
            let n = s.settings(d).source_len;
            let k = s.vocab() - FIRST;
            let mut w = Vec::new();
            for tok in p.split_whitespace() {
                match tok.parse::<i64>() {
                    Ok(v) if (0..k).contains(&v) => w.push(FIRST + v),
                    _ => {
                        eprintln!(
                            "error: `{tok}` is not a symbol of this task; use integers 0 to {}",
                            k - 1
                        );
                        return 2;
                    }
                }
            }
            if w.is_empty() || w.len() > n {
                eprintln!("error: give a source of 1 to {n} symbols separated by spaces, e.g. --prompt \"3 1 4\"");
                return 2;
            }
            let mut ids = source(&w, n);
            ids.push(BOS);
            let show = |t: i64| match t {
                PAD => "<pad>".to_string(),
                BOS => "<bos>".to_string(),
                EOS => "<eos>".to_string(),
                t => (t - FIRST).to_string(),
            };
            (ids, s.settings(d), Box::new(show))
        }
    };
    if let Err(e) = check_generation(&ids, &settings, rt.max_positions()) {
        eprintln!("error: {e}");
        return exit::UNUSABLE;
    }
    if !ignore_memory {
        let d = &settings.d;
        let batch = u64::from(d.num_beams.max(1)) * u64::from(d.num_return_sequences.max(1));
        let seq = settings.max_length(ids.len()) as u64;
        if let Err(e) = train::memory::generation(rt.graph(), batch, seq).check("generation") {
            eprintln!("error: {e}");
            return exit::TOO_LARGE;
        }
    }
    if let Some(m) = rt.max_positions() {
        // Positions the decoder reads (an encoder-decoder's source is not among them).
        let want = settings.max_length(ids.len()) - settings.source_len;
        if want > m + 1 {
            eprintln!(
                "error: the model reads at most {m} positions, so it can generate sequences of at most {} tokens (prompt included), but {want} were asked for; lower `decode.max_length` / `decode.max_new_tokens` or shorten the prompt",
                m + 1
            );
            return 2;
        }
    }
    let mut lm = crate::decode::ModelLm::new(&rt, d.use_cache);
    let out = crate::decode::generate(&mut lm, &[ids], &settings);
    let beams = !matches!(
        d.strategy,
        crate::spec::recipe::Strategy::Greedy | crate::spec::recipe::Strategy::Sample
    );
    for g in &out[0] {
        // A finished sequence ends at its EOS (batched sequences are padded after it); an
        // encoder-decoder's output starts after its source.
        let start = settings.source_len;
        let end = settings
            .eos
            .and_then(|e| {
                g.tokens
                    .iter()
                    .skip(start + 1)
                    .position(|&t| t == e)
                    .map(|i| i + start + 2)
            })
            .unwrap_or(g.tokens.len());
        let text: Vec<String> = g.tokens[start..end].iter().map(|&t| show(t)).collect();
        if beams {
            println!("{}\t(score {:.4})", text.join(" "), g.score);
        } else {
            println!("{}", text.join(" "));
        }
    }
    0
}

/// Refuse a generation that could only echo the prompt or could never end: a prompt that
/// already fills `max_length`, one longer than the model's positions, or a minimum length
/// that the length limit leaves no room for.
fn check_generation(
    ids: &[i64],
    s: &crate::decode::Settings,
    positions: Option<usize>,
) -> Result<(), String> {
    // In decoder tokens: an encoder-decoder's source is not counted (as Hugging Face does).
    let prompt = ids.len() - s.source_len;
    let max = s.max_length(ids.len()) - s.source_len;
    if let Some(m) = positions {
        if prompt > m {
            return Err(format!(
                "the prompt has {prompt} tokens, but the model reads at most {m} positions; shorten the prompt"
            ));
        }
    }
    if prompt >= max {
        return Err(format!(
            "the prompt has {prompt} tokens and generation stops at {max} (prompt included), so nothing would be generated; raise `decode.max_length` or set `decode.max_new_tokens`"
        ));
    }
    let d = &s.d;
    let min = (d.min_length as usize).max(prompt + d.min_new_tokens as usize);
    if s.eos.is_some() && min >= max {
        return Err(format!(
            "EOS may only be generated from length {min} on (`decode.min_length` {}, `decode.min_new_tokens` {}), but generation stops at length {max}, so no sequence could end; lower them or raise `decode.max_length` / `decode.max_new_tokens`",
            d.min_length, d.min_new_tokens
        ));
    }
    Ok(())
}

/// A prompt's ids, its decoding settings, and how to print a token.
type Prompt = (
    Vec<i64>,
    crate::decode::Settings,
    Box<dyn Fn(i64) -> String>,
);

fn symbols(lang: crate::spec::recipe::Language) -> Vec<&'static str> {
    use crate::spec::recipe::Language;
    match lang {
        Language::Dyck | Language::CsDyck => vec!["<sos>", "<eos>", "<pad>", "(", ")", "[", "]"],
        Language::ANbNcN => vec!["<sos>", "<eos>", "<pad>", "a", "b", "c"],
        _ => vec!["<sos>", "<eos>", "<pad>", "a", "b"],
    }
}

pub fn analyze_cmd(file: &Path, lags: usize, json: bool) -> i32 {
    use crate::tasks::uint16;
    let stream = match uint16::Stream::open(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if stream.is_empty() {
        eprintln!("error: `{}` holds no values", file.display());
        return 2;
    }
    let a = uint16::analyze(&stream, lags);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&a).expect("analysis serializes")
        );
        return 0;
    }
    println!(
        "{}: {} values, {} distinct, min {}, max {}",
        file.display(),
        a.values,
        a.distinct,
        a.min,
        a.max
    );
    println!("most frequent (value: share):");
    for (v, p) in &a.top {
        println!(
            "  {v:>6}: {p:.4}  {}",
            "#".repeat((p * 50.0).round() as usize)
        );
    }
    println!(
        "entropy {:.4} bits (uniform over the values present: {:.4}); the unigram baseline's top-1 is {:.4}",
        a.entropy_bits,
        a.max_entropy_bits,
        a.top.first().map_or(0.0, |t| t.1)
    );
    match a.conditional_entropy_bits {
        Some(h) => println!("conditional entropy H(x[t] | x[t-1]) {h:.4} bits"),
        None => println!("conditional entropy: not computed (more than 4096 distinct values)"),
    }
    println!(
        "autocorrelation over the first {} values (|r| > {:.4} is significant):",
        a.prefix, a.autocorrelation_threshold
    );
    for (lag, r) in a.autocorrelation.iter().enumerate() {
        let mark = if r.abs() > a.autocorrelation_threshold {
            " *"
        } else {
            ""
        };
        println!("  lag {:>3}: {r:+.4}{mark}", lag + 1);
    }
    println!("periodogram peaks (period: share of power):");
    for (period, share) in &a.peaks {
        println!("  {period:>10.2}: {share:.4}");
    }
    println!("verdict: {}", a.verdict);
    0
}

pub fn generate_data_cmd(
    kind: crate::tasks::uint16::Generator,
    values: usize,
    seed: u64,
    out: &Path,
) -> i32 {
    let bytes = crate::tasks::uint16::to_bytes(&crate::tasks::uint16::generate(kind, values, seed));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create `{}`: {e}", dir.display());
            return 2;
        }
    }
    match crate::util::write_atomic(out, &bytes) {
        Ok(()) => {
            eprintln!("wrote {values} values to {}", out.display());
            0
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", out.display());
            2
        }
    }
}

/// One curriculum's schedule, step by step.
struct Schedule {
    /// Column name in CSV, file suffix of the PNG.
    name: &'static str,
    title: String,
    y: &'static str,
    values: Vec<f64>,
    note: Option<&'static str>,
}

/// `kiln curriculum plot`: the sequence-length and the frequency curriculum of a recipe.
pub fn curriculum_cmd(recipe: &Path, set: &[String], csv: bool, png: Option<&Path>) -> i32 {
    let (doc, _) = match compile(recipe, set) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let t = &doc.spec.train;
    let (len, freq) = (&t.curriculum, &t.frequency_curriculum);
    if len.is_none() && freq.is_none() {
        eprintln!(
            "error: `{}` has no curriculum; add e.g. `curriculum: {{start: 8, steps: 200}}` or `frequency_curriculum: {{start: 0.1, steps: 200}}` under `train`",
            recipe.display()
        );
        return 2;
    }
    // An epoch-based curriculum needs the task's steps per epoch.
    let per_epoch = match len.as_ref().and_then(|c| c.epochs) {
        None => 1,
        Some(_) => match crate::train::Data::new(&doc.spec.task, t.seed) {
            Ok(d) => d.per_epoch(d.batch_size(t.batch_size as usize)),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        },
    };
    let own = len
        .as_ref()
        .map_or(0, |c| c.span(per_epoch) + 1)
        .max(freq.as_ref().map_or(0, |f| f.warmup + f.steps + 1));
    let total = t.steps.unwrap_or(own).max(1);
    let full = doc.spec.task.max_seq();
    let mut schedules = Vec::new();
    if let Some(c) = len {
        schedules.push(Schedule {
            name: "length",
            title: format!(
                "sequence-length curriculum: {:?} growth over {} steps",
                c.growth,
                c.span(per_epoch)
            )
            .to_lowercase(),
            y: "input tokens per sequence",
            values: (0..total)
                .map(|s| c.length(s, full, per_epoch) as f64)
                .collect(),
            note: None,
        });
    }
    if let Some(f) = freq {
        schedules.push(Schedule {
            name: "cutoff",
            title: format!(
                "frequency curriculum: {:?} growth over {} steps after {} warm-up, {} mask",
                f.growth,
                f.steps,
                f.warmup,
                if f.slope.is_some() { "soft" } else { "hard" }
            )
            .to_lowercase(),
            y: "cutoff (fraction of the band; 1 = unmasked)",
            values: (0..total)
                .map(|s| f.cutoff(s as f64).unwrap_or(1.0))
                .collect(),
            note: f.adaptive.as_ref().map(|_| {
                "adaptive: slowed down while the validation loss stalls, so a run's cutoffs \
                 can lag this schedule; they are logged as `freq_cutoff` in metrics.jsonl"
            }),
        });
    }
    if let Some(path) = png {
        for sc in &schedules {
            let file = if schedules.len() == 1 {
                path.to_path_buf()
            } else {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                path.with_file_name(format!("{stem}-{}.png", sc.name))
            };
            let series = [crate::plot::Series {
                name: sc.name.into(),
                points: sc
                    .values
                    .iter()
                    .enumerate()
                    .map(|(s, &v)| (s as f64, v))
                    .collect(),
            }];
            let chart = crate::plot::Chart {
                title: &sc.title,
                x: "step",
                y: sc.y,
                series: &series,
                dots: false,
            };
            if let Err(e) = crate::plot::line_chart(&file, &chart) {
                eprintln!("error: {e}");
                return 1;
            }
            eprintln!("wrote {}", file.display());
        }
    }
    if csv {
        let names: Vec<&str> = schedules.iter().map(|s| s.name).collect();
        println!("step,{}", names.join(","));
        for s in 0..total as usize {
            if s == 0 || schedules.iter().any(|sc| sc.values[s - 1] != sc.values[s]) {
                let row: Vec<String> = schedules
                    .iter()
                    .map(|sc| format!("{}", sc.values[s]))
                    .collect();
                println!("{s},{}", row.join(","));
            }
        }
        return 0;
    }
    for sc in &schedules {
        print_ascii_chart(sc, total);
    }
    0
}

/// A schedule drawn with `*` in a 64 × 12 character grid.
fn print_ascii_chart(sc: &Schedule, total: u64) {
    let (w, h) = (64usize, 12usize);
    let lo = sc.values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sc.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-9);
    let mut grid = vec![vec![' '; w]; h];
    for (x, col) in (0..w).map(|x| (x, x * (total as usize - 1) / (w - 1))) {
        let y = ((sc.values[col] - lo) / span * (h - 1) as f64).round() as usize;
        grid[h - 1 - y][x] = '*';
    }
    println!("{} ({} by step)", sc.title, sc.y);
    let label = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:>6}")
        } else {
            format!("{v:>6.3}")
        }
    };
    for (r, row) in grid.iter().enumerate() {
        let l = match r {
            0 => label(hi),
            r if r == h - 1 => label(lo),
            _ => " ".repeat(6),
        };
        println!("{l} |{}", row.iter().collect::<String>().trim_end());
    }
    println!("       +{}", "-".repeat(w));
    println!("        0{:>width$}", total - 1, width = w - 1);
    if let Some(n) = sc.note {
        println!("note: {n}");
    }
    println!();
}
