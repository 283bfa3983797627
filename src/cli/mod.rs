//! The `kiln` command line.

mod args;
mod bench;
mod data;
pub mod exit;
mod generate;
mod generate_text;
mod inspect;
mod run;
mod sweep;
mod sweep_table;

pub use args::{Cli, Format, GraphFormat, Precision, ReportFormat, Which};
use args::{Command, CurriculumCommand, DataCommand, SweepCommand};
use clap::{CommandFactory, Parser};
use std::io::IsTerminal;

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
        Command::Train { device, .. } | Command::Bench { device, .. } => Some(*device),
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
        Command::Validate { files, set, format } => inspect::validate(&files, &set, format),
        Command::Graph {
            file,
            set,
            no_opt,
            passes,
            format,
            vocab,
            seq,
        } => inspect::graph_cmd(&file, &set, no_opt, passes, format, vocab, seq),
        Command::Train {
            recipe,
            set,
            out,
            resume,
            device,
            precision,
            ignore_memory_check,
            read_every,
            pad_to,
        } => crate::cli::run::train_cmd(&crate::cli::run::TrainArgs {
            recipe: recipe.as_deref(),
            set: &set,
            out,
            resume,
            device,
            matmul_dtype: precision.matmul_dtype(),
            ignore_memory: ignore_memory_check,
            read_every,
            pad_to: pad_to.map(|p| p as usize),
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
            compile_log,
            kv_cache,
            pad_to,
        } => bench::bench_cmd(&bench::BenchArgs {
            recipe: &recipe,
            set: &set,
            device,
            matmul_dtype: precision.matmul_dtype(),
            warmup,
            steps,
            gen_tokens,
            gen_batch,
            profile,
            unfused,
            compile_log: compile_log.as_deref(),
            static_kv_cache: kv_cache.map(|k| k == args::KvCacheKind::Static),
            pad_to: pad_to.map(|p| p as usize),
        }),
        Command::Eval { run, checkpoint } => {
            crate::cli::generate::eval_cmd(&run, checkpoint, None, &[], false)
        }
        Command::Generate {
            run,
            prompt,
            checkpoint,
            set,
            ignore_memory_check,
        } => crate::cli::generate::eval_cmd(
            &run,
            checkpoint,
            Some(&prompt),
            &set,
            ignore_memory_check,
        ),
        Command::Curriculum(CurriculumCommand::Plot {
            recipe,
            set,
            csv,
            png,
        }) => crate::cli::data::curriculum_cmd(&recipe, &set, csv, png.as_deref()),
        Command::Data(DataCommand::Analyze { file, lags, format }) => {
            crate::cli::data::analyze_cmd(&file, lags, format == Format::Json)
        }
        Command::Data(DataCommand::Generate {
            kind,
            values,
            seed,
            out,
        }) => crate::cli::data::generate_data_cmd(kind, values, seed, &out),
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
        Command::Lsp => crate::lsp::main(),
        Command::Schema { out, check } => inspect::schema_cmd(out.as_deref(), check.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            0
        }
    }
}

pub(crate) fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Lock a run or sweep directory (creating it) for this command, whose command line names it
/// in a second writer's error; a busy directory is an error naming its holder (exit 5).
pub(crate) fn lock_dir(
    dir: &std::path::Path,
    mode: crate::os::lock::Mode,
) -> Result<crate::os::lock::DirLock, i32> {
    use crate::os::lock::{DirLock, LockError};
    let what = std::env::args().collect::<Vec<_>>().join(" ");
    DirLock::acquire(dir, mode, &what).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            LockError::Busy { .. } => exit::BUSY,
            LockError::Io { .. } => exit::UNUSABLE,
        }
    })
}
