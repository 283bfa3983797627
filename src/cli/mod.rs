//! The `kiln` command line.

mod bench;
pub mod exit;
mod run;
mod sweep;
mod sweep_table;

use crate::diag::{self, render_json, render_text, Code, Diagnostic, SourceMap};
use crate::spec::{self, schema, Document};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

const EXAMPLES: &str = "\
Examples:
  kiln validate recipes/default.yaml
  kiln validate models/*.yaml recipes/*.yaml --format json
  kiln validate recipes/default.yaml --set train.optimizer.lr=3e-4 --set model.vars.d_model=128
  kiln schema --out schemas/
  kiln completions bash > /etc/bash_completion.d/kiln";

/// kiln: a declarative model compiler. Describe a sequence model and an experiment in YAML;
/// kiln validates them against its schemas with precise diagnostics.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check model and recipe files against the schemas and report every problem at once.
    ///
    /// Exit status: 0 when every file is valid, 1 when one is invalid, 2 when one cannot be
    /// read as YAML (missing file, not UTF-8, syntax error).
    #[command(
        after_help = "Examples:\n  kiln validate recipes/default.yaml\n  kiln validate models/*.yaml --format json\n  kiln validate recipes/default.yaml --set train.steps=100"
    )]
    Validate {
        /// Files to check (`kind: model` or `kind: recipe`).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Override a value before validation, e.g. `train.optimizer.lr=3e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Output format of the diagnostics.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write the JSON Schemas of model and recipe files (for editors and other validators).
    #[command(
        after_help = "Examples:\n  kiln schema --out schemas/\n  kiln schema --check schemas/"
    )]
    Schema {
        /// Folder to write `model.schema.json` and `recipe.schema.json` into; without it the
        /// recipe schema is printed.
        #[arg(long, value_name = "DIR", conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Compare the schemas in DIR with the generated ones; exit 1 when they differ.
        #[arg(long, value_name = "DIR")]
        check: Option<PathBuf>,
    },
    /// Lower a model or recipe to the graph IR, optimize it, and print it.
    ///
    /// Prints the graph (text, Graphviz DOT or JSON), the parameter count, an estimate of the
    /// activation memory per example, whether the model is causal, and what each pass changed.
    #[command(
        after_help = "Examples:\n  kiln graph recipes/default.yaml\n  kiln graph recipes/default.yaml --no-opt\n  kiln graph models/gfnet-causal.yaml --vocab 7 --seq 64 --passes spectral,dce\n  kiln graph recipes/default.yaml --format dot | dot -Tsvg > graph.svg"
    )]
    Graph {
        /// A model or recipe file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Override a value first, e.g. `model.vars.heads=8` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Show the graph as lowered, without optimization passes.
        #[arg(long)]
        no_opt: bool,
        /// Comma-separated passes to run (default: all: gqa,spectral,cse,dce).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "PASS,...",
            conflicts_with = "no_opt"
        )]
        passes: Option<Vec<String>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
        /// Vocabulary size for a model file without `vocab` (recipes take it from the task).
        #[arg(long)]
        vocab: Option<u64>,
        /// Sequence length for the memory estimate and length checks (recipes: the task's).
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Train a recipe's model on its task, then print the task's metrics.
    ///
    /// Writes a run directory: the resolved recipe (after overrides), the optimized graph,
    /// metrics.jsonl, checkpoint.safetensors (weights, optimizer state, step, data position),
    /// best.safetensors and summary.json. `--resume RUN_DIR` continues an interrupted run.
    #[command(
        after_help = "Examples:\n  kiln train recipes/default.yaml\n  kiln train recipes/default.yaml --set train.steps=100 --out runs/short\n  kiln train --resume runs/short"
    )]
    Train {
        /// The recipe (not needed with --resume).
        #[arg(value_name = "RECIPE", required_unless_present = "resume")]
        recipe: Option<PathBuf>,
        /// Override a value first (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Run directory (default: runs/<recipe name>-<unix time>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Continue the run in this directory from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["recipe", "out", "set"])]
        resume: Option<PathBuf>,
        /// Device: `cpu` (Burn's flex backend), `gpu` in a build with the `gpu` feature, or
        /// `cuda` in a build with the `cuda` feature.
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
        /// Precision: `f32`, or mixed `bf16`/`f16` (matrix products in half precision,
        /// parameters, norms, softmax and loss in f32).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Run even when the memory estimate exceeds the memory available (exit status 4
        /// otherwise).
        #[arg(long)]
        ignore_memory_check: bool,
    },
    /// Measure a recipe's training steps/s and tokens/s, and cached generation tokens/s, on a
    /// device; prints JSON. Runs no evaluation and writes nothing.
    #[command(
        after_help = "Examples:\n  kiln bench recipes/uint16-prng.yaml --set task.context=128\n  kiln bench recipes/default.yaml --device gpu --precision bf16 --steps 50"
    )]
    Bench {
        /// The recipe.
        recipe: PathBuf,
        /// Override a value first (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Device: `cpu`, `gpu` in a build with the `gpu` feature, or `cuda` in one with `cuda`.
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
        /// Precision: `f32`, or mixed `bf16`/`f16`.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Untimed training steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed training steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Tokens generated per sequence (greedy, KV cache); 0 skips generation.
        #[arg(long, default_value_t = 256)]
        gen_tokens: usize,
        /// Sequences generated at once.
        #[arg(long, default_value_t = 4)]
        gen_batch: usize,
        /// Also time every op of the timed steps' forward passes (wall time per step, by op
        /// kind): where the time goes. Meaningful on the CPU, whose ops run eagerly.
        #[arg(long)]
        profile: bool,
        /// Run without kiln's fused CPU kernels (plain Burn ops): the reference the fused
        /// kernels are measured against.
        #[arg(long)]
        unfused: bool,
    },
    /// Recompute a run's task metrics from its best or last checkpoint.
    #[command(after_help = "Example:\n  kiln eval runs/default-1763856000 --checkpoint best")]
    Eval {
        /// The run directory.
        run: PathBuf,
        /// Which weights: `last` (checkpoint.safetensors) or `best` (best validation loss).
        #[arg(long, default_value = "last")]
        checkpoint: Which,
    },
    /// Complete a prompt with a trained model, as the recipe's `decode` section says
    /// (greedy, sampling, beam search, diverse beam search, beam sampling; Hugging Face
    /// GenerationConfig semantics).
    #[command(
        after_help = "Examples:\n  kiln generate runs/default-1763856000 --prompt \"a a a b\"\n  kiln generate runs/dyck --prompt \"( [ ] \"\n  kiln generate runs/dyck --prompt \"(\" --set decode.strategy=beam --set decode.num_beams=4 --set decode.num_return_sequences=2\n  kiln generate runs/prng --prompt \"1 8\" --set decode.strategy=sample --set decode.top_p=0.9 --set decode.seed=7"
    )]
    Generate {
        /// The run directory.
        run: PathBuf,
        /// The prompt: the language's symbols separated by spaces (a b c, or ( ) [ ]), or a
        /// stream's values (3 1 4).
        #[arg(long)]
        prompt: String,
        /// Which weights.
        #[arg(long, default_value = "last")]
        checkpoint: Which,
        /// Override a decoding setting of the run's recipe, e.g. `decode.strategy=beam`
        /// (repeatable; checked like the recipe itself).
        #[arg(long = "set", value_name = "decode.KEY=VALUE")]
        set: Vec<String>,
        /// Run even when the memory estimate exceeds the memory available (exit status 4
        /// otherwise).
        #[arg(long)]
        ignore_memory_check: bool,
    },
    /// Inspect or make data files (uint16 streams).
    #[command(subcommand)]
    Data(DataCommand),
    /// Show a recipe's curricula (`train.curriculum`, `train.frequency_curriculum`).
    #[command(subcommand)]
    Curriculum(CurriculumCommand),
    /// Run one trial of a recipe's sweep into a shared sweep directory: the cluster contract.
    ///
    /// The trial index comes from `--trial`, else `SLURM_ARRAY_TASK_ID` (Slurm job arrays),
    /// else `JOB_COMPLETION_INDEX` (Kubernetes Indexed Jobs). A trial already recorded as
    /// finished is skipped; one with a checkpoint resumes.
    #[command(
        after_help = "Examples:\n  kiln run recipes/sweep-anbn.yaml --trial 3 --out sweeps/anbn\n  SLURM_ARRAY_TASK_ID=3 kiln run recipes/sweep-anbn.yaml --out /shared/sweeps/anbn"
    )]
    Run {
        /// The recipe with a `sweep` section.
        recipe: PathBuf,
        /// The trial index (see `kiln sweep plan`).
        #[arg(long)]
        trial: Option<usize>,
        /// Override a value of every trial (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// The sweep directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Run even when the memory estimate exceeds the memory available (exit status 4
        /// otherwise).
        #[arg(long)]
        ignore_memory_check: bool,
    },
    /// Run a recipe's sweep: every trial validated first, then run as `kiln train`
    /// processes (`--jobs` at a time) into one directory with an append-only results store.
    /// Running it again skips finished trials and resumes unfinished ones from their
    /// checkpoints.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  kiln sweep plan recipes/sweep-anbn.yaml\n  kiln sweep recipes/sweep-anbn.yaml --jobs 2 --out sweeps/anbn\n  kiln sweep report sweeps/anbn --format csv"
    )]
    Sweep {
        #[command(subcommand)]
        cmd: Option<SweepCommand>,
        /// The recipe with a `sweep` section.
        #[arg(value_name = "RECIPE")]
        recipe: Option<PathBuf>,
        /// Override a value of every trial (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Sweep directory (default: sweeps/<recipe name>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Trials run at once (each a process; 1 per core is a good start).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Run even when the memory estimate exceeds the memory available (exit status 4
        /// otherwise).
        #[arg(long)]
        ignore_memory_check: bool,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  kiln completions bash > ~/.local/share/bash-completion/completions/kiln"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `kiln curriculum ...`.
#[derive(Debug, Subcommand)]
enum CurriculumCommand {
    /// Plot the training-sequence length and the frequency cutoff against the step, in the
    /// terminal (or as CSV rows `step,length,cutoff` at every step where one changes).
    #[command(
        after_help = "Examples:\n  kiln curriculum plot recipes/anbn-gfnet-frequency.yaml\n  kiln curriculum plot recipes/default.yaml --set \"train.curriculum={start: 8, steps: 300, growth: cosine}\" --csv"
    )]
    Plot {
        /// The recipe.
        recipe: PathBuf,
        /// Override a value first (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Print CSV instead of a plot.
        #[arg(long)]
        csv: bool,
        /// Also draw the schedule into this PNG file (FILE-length.png and FILE-cutoff.png when
        /// the recipe has both curricula).
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
}

/// `kiln data ...`.
#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Show whether a uint16 stream is predictable at all: value histogram, entropy,
    /// conditional entropy given the previous value, autocorrelation and periodogram peaks.
    ///
    /// The histogram and entropies stream over the whole (memory-mapped) file; the
    /// autocorrelation and the periodogram use its first 2^20 values.
    #[command(
        after_help = "Examples:\n  kiln data analyze data/biased-die.u16\n  kiln data analyze big.u16 --lags 32 --format json"
    )]
    Analyze {
        /// A binary file of little-endian uint16 values.
        file: PathBuf,
        /// Autocorrelation lags to show.
        #[arg(long, default_value_t = 10)]
        lags: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write a test stream: a biased die and a short-period PRNG (both learnable), or a fair
    /// die (not learnable).
    #[command(
        after_help = "Example:\n  kiln data generate prng --values 100000 --out data/prng.u16"
    )]
    Generate {
        /// What to generate.
        #[arg(value_enum)]
        kind: crate::tasks::uint16::Generator,
        /// Number of values.
        #[arg(long, default_value_t = 100_000)]
        values: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (written atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `kiln sweep ...`.
#[derive(Debug, Subcommand)]
enum SweepCommand {
    /// List the trials with their stable indices, after validating every one.
    Plan {
        /// The recipe.
        recipe: PathBuf,
        /// Override a value of every trial (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
    /// Print a cluster job that runs every trial as `kiln run RECIPE --out DIR`: a Slurm job
    /// array (`--slurm`) or a Kubernetes Indexed Job (`--k8s`), each task taking its trial
    /// index from the scheduler.
    #[command(
        after_help = "Examples:\n  kiln sweep emit recipes/sweep-anbn.yaml --slurm --out /shared/sweeps/anbn > sweep.sbatch\n  kiln sweep emit recipes/sweep-anbn.yaml --k8s --out /results/anbn --image registry/kiln:0.1 > job.yaml"
    )]
    Emit {
        /// The recipe.
        recipe: PathBuf,
        /// Override a value of every trial (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// A Slurm job-array script.
        #[arg(long, conflicts_with = "k8s", required_unless_present = "k8s")]
        slurm: bool,
        /// A Kubernetes Indexed Job manifest.
        #[arg(long)]
        k8s: bool,
        /// The shared results directory every task writes into (read by `kiln sweep report`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Container image with kiln (Kubernetes).
        #[arg(long, default_value = "kiln:latest")]
        image: String,
        /// PersistentVolumeClaim mounted at the results directory (Kubernetes).
        #[arg(long, default_value = "kiln-results")]
        pvc: String,
        /// Tasks running at once (Kubernetes parallelism, Slurm array throttle).
        #[arg(long, default_value_t = 4)]
        parallelism: usize,
        /// CPU cores per task.
        #[arg(long, default_value_t = 2)]
        cpus: usize,
    },
    /// Summarise a sweep directory: mean ± std over seeds per point, reference levels beside
    /// the metrics, and the best point.
    Report {
        /// The sweep directory.
        dir: PathBuf,
        /// Table format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
        format: ReportFormat,
        /// The metric that picks the best point (default: best_val_loss).
        #[arg(long)]
        metric: Option<String>,
        /// Also draw PNG charts into DIR/plots: loss curves per trial and each metric
        /// against every numeric swept key.
        #[arg(long)]
        plots: bool,
        /// Show the results of configurations that are not in the current plan (the store
        /// keeps every result; a changed recipe's trials are new trials).
        #[arg(long, conflicts_with = "prune")]
        stale: bool,
        /// Remove the results (and run directories) of configurations that are not in the
        /// current plan.
        #[arg(long)]
        prune: bool,
    },
}

/// Report table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A Markdown table.
    Markdown,
    /// Comma-separated values.
    Csv,
    /// JSON rows.
    Json,
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CPU (Burn flex).
    Cpu,
    /// The best Vulkan device, a discrete GPU first (Burn's Vulkan runtime; `--features gpu`).
    #[cfg(feature = "gpu")]
    Gpu,
    /// The first CUDA GPU (Burn's CUDA runtime; build with `--features cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
    /// The best wgpu device on any graphics API, WGSL kernels (`--features wgpu`).
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl DeviceArg {
    /// The runtime's device kind.
    pub fn kind(self) -> crate::runtime::DeviceKind {
        match self {
            DeviceArg::Cpu => crate::runtime::DeviceKind::Cpu,
            #[cfg(feature = "gpu")]
            DeviceArg::Gpu => crate::runtime::DeviceKind::Gpu,
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => crate::runtime::DeviceKind::Cuda,
            #[cfg(feature = "wgpu")]
            DeviceArg::Wgpu => crate::runtime::DeviceKind::Wgpu,
        }
    }
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Mixed: matrix products in bfloat16.
    Bf16,
    /// Mixed: matrix products in float16.
    F16,
}

impl Precision {
    /// The dtype of matrix products, `None` for f32.
    pub fn matmul_dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(burn::tensor::FloatDType::BF16),
            Precision::F16 => Some(burn::tensor::FloatDType::F16),
        }
    }
}

/// Which weights of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The last checkpoint.
    Last,
    /// The weights with the best validation loss.
    Best,
}

/// Graph output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// One line per op.
    Text,
    /// Graphviz DOT.
    Dot,
    /// JSON with the nodes and a summary.
    Json,
}

/// Diagnostic output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable, with source snippets.
    Text,
    /// A JSON object per file with its diagnostics.
    Json,
}

/// Run the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 2,
            };
        }
    };
    let device = match &cli.command {
        Command::Train { device, .. } | Command::Bench { device, .. } => Some(device.kind()),
        _ => None,
    };
    if let Some(Err(e)) = device.map(|d| d.probe()) {
        eprintln!("error: the device cannot be used: {e}");
        eprintln!(
            "  help: `--device cpu` runs on the CPU; README \"GPU\" lists what a GPU run needs"
        );
        return 1;
    }
    match cli.command {
        Command::Validate { files, set, format } => validate(&files, &set, format),
        Command::Graph {
            file,
            set,
            no_opt,
            passes,
            format,
            vocab,
            seq,
        } => graph_cmd(&file, &set, no_opt, passes, format, vocab, seq),
        Command::Train {
            recipe,
            set,
            out,
            resume,
            device,
            precision,
            ignore_memory_check,
        } => crate::cli::run::train_cmd(&crate::cli::run::TrainArgs {
            recipe: recipe.as_deref(),
            set: &set,
            out,
            resume,
            device: device.kind(),
            matmul_dtype: precision.matmul_dtype(),
            ignore_memory: ignore_memory_check,
        }),
        Command::Bench {
            recipe,
            set,
            device,
            precision,
            warmup,
            steps,
            gen_tokens,
            gen_batch,
            profile,
            unfused,
        } => bench::bench_cmd(&bench::BenchArgs {
            recipe: &recipe,
            set: &set,
            device: device.kind(),
            matmul_dtype: precision.matmul_dtype(),
            warmup,
            steps,
            gen_tokens,
            gen_batch,
            profile,
            unfused,
        }),
        Command::Eval { run, checkpoint } => {
            crate::cli::run::eval_cmd(&run, checkpoint, None, &[], false)
        }
        Command::Generate {
            run,
            prompt,
            checkpoint,
            set,
            ignore_memory_check,
        } => crate::cli::run::eval_cmd(&run, checkpoint, Some(&prompt), &set, ignore_memory_check),
        Command::Curriculum(CurriculumCommand::Plot {
            recipe,
            set,
            csv,
            png,
        }) => crate::cli::run::curriculum_cmd(&recipe, &set, csv, png.as_deref()),
        Command::Data(DataCommand::Analyze { file, lags, format }) => {
            crate::cli::run::analyze_cmd(&file, lags, format == Format::Json)
        }
        Command::Data(DataCommand::Generate {
            kind,
            values,
            seed,
            out,
        }) => crate::cli::run::generate_data_cmd(kind, values, seed, &out),
        Command::Sweep {
            cmd: Some(SweepCommand::Plan { recipe, set }),
            ..
        } => crate::cli::sweep::plan_cmd(&recipe, &set).map_or_else(|c| c, |_| 0),
        Command::Run {
            recipe,
            trial,
            set,
            out,
            ignore_memory_check,
        } => crate::cli::sweep::run_one_cmd(&recipe, trial, &set, &out, ignore_memory_check),
        Command::Sweep {
            cmd:
                Some(SweepCommand::Emit {
                    recipe,
                    set,
                    slurm,
                    k8s: _,
                    out,
                    image,
                    pvc,
                    parallelism,
                    cpus,
                }),
            ..
        } => crate::cli::sweep::emit_cmd(
            &recipe,
            &set,
            slurm,
            &crate::cli::sweep::EmitOptions {
                out,
                image,
                pvc,
                parallelism,
                cpus,
            },
        ),
        Command::Sweep {
            cmd:
                Some(SweepCommand::Report {
                    dir,
                    format,
                    metric,
                    plots,
                    stale,
                    prune,
                }),
            ..
        } => {
            use crate::cli::sweep::ReportScope;
            let scope = match (stale, prune) {
                (_, true) => ReportScope::Prune,
                (true, _) => ReportScope::Stale,
                _ => ReportScope::Current,
            };
            crate::cli::sweep::report_cmd(&dir, format, metric.as_deref(), plots, scope)
        }
        Command::Sweep {
            cmd: None,
            recipe,
            set,
            out,
            jobs,
            ignore_memory_check,
        } => match recipe {
            Some(r) => crate::cli::sweep::run_cmd(&r, &set, out, jobs, ignore_memory_check),
            None => {
                eprintln!(
                    "error: give a recipe (`kiln sweep RECIPE`) or a subcommand (plan, report)"
                );
                2
            }
        },
        Command::Schema { out, check } => schema_cmd(out.as_deref(), check.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            0
        }
    }
}

pub(crate) fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn validate(files: &[PathBuf], set: &[String], format: Format) -> i32 {
    let mut status = 0;
    let mut json_files = Vec::new();
    for file in files {
        let mut sources = SourceMap::new();
        let result =
            spec::load(file, set, &mut sources).and_then(|doc| match crate::lower::lower_document(
                &doc, None, None,
            ) {
                Ok(graph) => Ok((doc, graph)),
                Err(diags) => Err(spec::LoadError { diags }),
            });
        // A recipe's training memory: in the summary, and a warning when it cannot fit here.
        let mut memory = None;
        let (diags, file_status, summary) = match &result {
            Ok((doc, graph)) => {
                let mut summary = describe(doc);
                if let Document::Recipe(r) = doc {
                    let est = crate::train::memory::training(graph, &r.spec);
                    summary.push_str(&format!(
                        ", training needs {}",
                        crate::os::memory::human(est.total())
                    ));
                    memory = Some((est.total(), est.check("training").err()));
                }
                (Vec::new(), 0, summary)
            }
            Err(e) => (
                e.diags.clone(),
                if e.unreadable() { 2 } else { 1 },
                String::new(),
            ),
        };
        status = status.max(file_status);
        match format {
            Format::Text => {
                if !diags.is_empty() {
                    eprint!("{}", render_text(&diags, &sources, color()));
                    let n = diags.iter().filter(|d| d.is_error()).count();
                    eprintln!(
                        "{}: {n} error{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    );
                } else {
                    println!("{}: ok ({summary})", file.display());
                    if let Some((_, Some(w))) = &memory {
                        eprintln!("warning: {}: {w}", file.display());
                    }
                }
            }
            Format::Json => {
                let mut entry = serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": file_status == 0,
                    "diagnostics": render_json(&diags, &sources),
                });
                if let Some((bytes, warning)) = &memory {
                    entry["training_memory_bytes"] = (*bytes).into();
                    entry["memory_warning"] = warning.clone().into();
                }
                json_files.push(entry);
            }
        }
    }
    if format == Format::Json {
        let out = serde_json::json!({ "files": json_files });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("json serializes")
        );
    }
    status
}

fn describe(doc: &Document) -> String {
    match doc {
        Document::Model(m) => format!(
            "model{}, {} top-level layers",
            m.spec
                .name
                .as_ref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default(),
            m.spec.layers.len()
        ),
        Document::Recipe(r) => format!(
            "recipe{}, model {}",
            r.spec
                .name
                .as_ref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default(),
            r.model_path
                .as_ref()
                .map_or_else(|| "inline".to_string(), |p| format!("`{}`", p.display()))
        ),
    }
}

fn schema_cmd(out: Option<&Path>, check: Option<&Path>) -> i32 {
    let schemas = schema::all();
    if let Some(dir) = check {
        let mut stale = Vec::new();
        for (name, s) in &schemas {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(schema::to_text(s).as_str()) {
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            println!("schemas in {} are up to date", dir.display());
            return 0;
        }
        eprintln!(
            "stale schemas: {}\nrun `kiln schema --out {}` and commit the result",
            stale.join(", "),
            dir.display()
        );
        return 1;
    }
    let Some(dir) = out else {
        let (_, recipe) = schemas
            .iter()
            .find(|(n, _)| *n == "recipe.schema.json")
            .expect("recipe schema exists");
        print!("{}", schema::to_text(recipe));
        return 0;
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        report_io(&format!("cannot create `{}`: {e}", dir.display()));
        return 2;
    }
    for (name, s) in &schemas {
        let path = dir.join(name);
        if let Err(e) = crate::util::write_atomic(&path, schema::to_text(s).as_bytes()) {
            report_io(&format!("cannot write `{}`: {e}", path.display()));
            return 2;
        }
        println!("wrote {}", path.display());
    }
    0
}

fn report_io(msg: &str) {
    let d = Diagnostic::error(Code::Io, None, msg);
    let mut diags = vec![d];
    diag::sort(&mut diags);
    let _ = std::io::stderr().write_all(render_text(&diags, &SourceMap::new(), color()).as_bytes());
}

#[allow(clippy::too_many_arguments)]
fn graph_cmd(
    file: &Path,
    set: &[String],
    no_opt: bool,
    passes: Option<Vec<String>>,
    format: GraphFormat,
    vocab: Option<u64>,
    seq: Option<u64>,
) -> i32 {
    let mut sources = SourceMap::new();
    let doc = match spec::load(file, set, &mut sources) {
        Ok(doc) => doc,
        Err(e) => {
            eprint!("{}", render_text(&e.diags, &sources, color()));
            return if e.unreadable() { 2 } else { 1 };
        }
    };
    let mut graph = match crate::lower::lower_document(&doc, vocab, seq) {
        Ok(g) => g,
        Err(diags) => {
            eprint!("{}", render_text(&diags, &sources, color()));
            return 1;
        }
    };
    let selected = match (no_opt, passes) {
        (true, _) => Vec::new(),
        (false, None) => crate::passes::ALL.iter().collect(),
        (false, Some(names)) => match crate::passes::by_name(&names) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    let changes = match crate::passes::optimize(&mut graph, &selected, cfg!(debug_assertions)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("internal error: {e}");
            return 3;
        }
    };
    let seq = match &doc {
        Document::Recipe(r) => r.spec.task.max_seq(),
        Document::Model(_) => seq.unwrap_or(128),
    };
    let params = graph.param_count();
    let act = graph.activation_bytes(seq);
    let causal = crate::lower::is_causal(&graph);
    let summary = vec![
        format!(
            "{}: {} parameters, {} ops",
            graph.name,
            group_digits(params),
            graph.g.node_count()
        ),
        format!(
            "activation memory ≈ {} per example at seq {seq} (f32, all intermediate values)",
            human_bytes(act)
        ),
        format!(
            "causal: {}",
            if causal {
                "yes"
            } else {
                "no (a position can see later positions)"
            }
        ),
        format!(
            "passes: {}",
            if selected.is_empty() {
                "none".to_string()
            } else {
                selected
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    ];
    match format {
        GraphFormat::Text => {
            print!("{}", crate::ir::print::to_text(&graph));
            for line in &summary {
                println!("# {line}");
            }
            for c in &changes {
                println!("# {}: {}", c.pass, c.what);
            }
        }
        GraphFormat::Dot => {
            print!("{}", crate::ir::print::to_dot(&graph));
            for line in &summary {
                eprintln!("# {line}");
            }
        }
        GraphFormat::Json => {
            let v = serde_json::json!({
                "graph": crate::ir::print::to_json(&graph),
                "params": params,
                "activation_bytes_per_example": act,
                "seq": seq,
                "causal": causal,
                "changes": changes.iter().map(|c| serde_json::json!({"pass": c.pass, "change": c.what})).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("json serializes")
            );
        }
    }
    0
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}
