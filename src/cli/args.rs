//! The command line's clap definitions: the commands, their subcommands and value enums.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// Serve the Language Server Protocol on stdin/stdout, for editors.
    ///
    /// Diagnostics as `kiln validate` gives them, as you type; hover with a layer's shape and
    /// parameters; completion from the schemas; go to definition; the layer tree as symbols.
    /// docs/reference/editors.md shows how to set up VS Code, Neovim and Helix.
    Lsp,
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
        device: crate::runtime::DeviceKind,
        /// Precision: `f32`, or mixed `bf16`/`f16` (matrix products in half precision,
        /// parameters, norms, softmax and loss in f32).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Run even when the memory estimate exceeds the memory available (exit status 4
        /// otherwise).
        #[arg(long)]
        ignore_memory_check: bool,
        /// Steps between reads of the loss and gradient norm back to the host (default: 1 on
        /// the CPU, where a read costs nothing; 25 on a GPU, which then does not wait for the
        /// host inside a step). Evaluations, checkpoints and the end always read; the metrics
        /// are the same whatever the value.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        read_every: Option<u64>,
        /// Pad token inputs on the right to a multiple of N positions, and drop the padded
        /// positions' outputs (default: 16 on a GPU, whose kernels then see shapes that
        /// vectorise; 1, no padding, on the CPU). Only a causal token model whose positions
        /// allow the padded length is padded; others run unpadded, with a note.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
        pad_to: Option<u64>,
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
        device: crate::runtime::DeviceKind,
        /// Precision: `f32`, or mixed `bf16`/`f16`.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Untimed training steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed training steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Tokens generated per sequence (greedy, KV cache); 0 skips generation. Default: 256,
        /// or as many as the model's positions allow when it reads fewer.
        #[arg(long)]
        gen_tokens: Option<usize>,
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
        /// The file CubeCL's compilation logger writes (a `cubecl.toml` with
        /// `[compilation.logger] level = "basic"` and `file = ...`, see docs/reference/gpu.md):
        /// each step then reports the kernels compiled while it ran.
        #[arg(long, value_name = "FILE")]
        compile_log: Option<PathBuf>,
        /// The generation's KV cache: `static` (buffers preallocated for the whole generation,
        /// the same shapes at every token) or `growing` (one position longer per token).
        /// Default: growing on the CPU, where it is cheaper; static on a GPU, where a new shape
        /// means new kernels. Both give the same tokens.
        #[arg(long, value_name = "KIND")]
        kv_cache: Option<KvCacheKind>,
        /// Pad token inputs on the right to a multiple of N positions where the model allows
        /// it (default: 16 on a GPU, 1 on the CPU; see `kiln train --pad-to`). The JSON's
        /// `train_padded_len` is the length the steps ran at.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
        pad_to: Option<u64>,
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
pub(super) enum CurriculumCommand {
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
pub(super) enum DataCommand {
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
pub(super) enum SweepCommand {
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

/// The layout of a generation's KV cache (`kiln bench --kv-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheKind {
    /// Preallocated for the whole generation, written in place: static shapes.
    Static,
    /// Grown by one position per token.
    Growing,
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
