//! Running trials: each a `kiln train` process in its own run directory, at most `jobs` at a
//! time, recorded in the store as it ends.
//!
//! Children run in their own process groups (a terminal's Ctrl-C reaches only the sweep,
//! which forwards it once) and receive SIGTERM if the sweep dies (Linux), so a re-run never
//! races an orphaned trial. A signal stops the sweep cleanly: no new trial starts, the running
//! ones write their checkpoints and are recorded as interrupted, and the next run resumes
//! them.

use super::store::{self, Record, Status, Store};
use super::Trial;
use crate::cli::exit;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

/// What a sweep run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Trials that finished.
    pub ok: usize,
    /// Trials that failed.
    pub failed: usize,
    /// Trials stopped by a signal (their checkpoints kept).
    pub interrupted: usize,
    /// Trials skipped because another kiln process holds their directory.
    pub busy: usize,
    /// The signal that stopped the sweep, if one did.
    pub signal: Option<i32>,
}

/// Run the trials of `trials` whose key the store does not hold as finished, at most `jobs`
/// at a time, as `kiln train` processes of `exe` (a trial with a checkpoint resumes from it).
/// The caller holds the sweep directory's lock.
pub fn run(
    exe: &Path,
    recipe: &Path,
    base_sets: &[String],
    trials: &[Trial],
    dir: &Path,
    jobs: usize,
) -> std::io::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let stored = Store::load(dir)?;
    for p in &stored.problems {
        eprintln!("kiln sweep: warning: {p}");
    }
    let done = stored.done();
    let todo: Vec<&Trial> = trials
        .iter()
        .filter(|t| !done.contains(t.key.as_str()))
        .collect();
    let current: std::collections::HashSet<&str> = trials.iter().map(|t| t.key.as_str()).collect();
    let others = stored
        .records
        .iter()
        .filter(|r| !current.contains(r.trial.key.as_str()))
        .count();
    eprintln!(
        "kiln sweep: {} trials, {} already done, running {} with {} job(s) in {}",
        trials.len(),
        trials.len() - todo.len(),
        todo.len(),
        jobs,
        dir.display()
    );
    if others > 0 {
        eprintln!(
            "kiln sweep: the store also holds {others} result(s) of other configurations (an earlier plan); they are kept, not reported: `kiln sweep report {} --stale` shows them, `--prune` removes them",
            dir.display()
        );
    }
    let mut out = Outcome::default();
    let mut queue = todo.into_iter();
    // Each running trial, its start, and where this attempt's output starts in its log.
    let mut running: Vec<(&Trial, Child, Instant, u64)> = Vec::new();
    let mut finished = trials.len() - queue.len();
    loop {
        let signal = crate::os::interrupt::received();
        if signal.is_some() && out.signal.is_none() {
            out.signal = signal;
            for (_, child, _, _) in &running {
                forward(child, signal.unwrap_or(2));
            }
            eprintln!(
                "kiln sweep: stopping: {} running trial(s) write their checkpoints; no new trial starts",
                running.len()
            );
        }
        while out.signal.is_none() && running.len() < jobs.max(1) {
            let Some(t) = queue.next() else { break };
            let from = std::fs::metadata(store::log_path(dir, t)).map_or(0, |m| m.len());
            let child = spawn(exe, recipe, base_sets, t, dir)?;
            running.push((t, child, Instant::now(), from));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].1.try_wait()? else {
                i += 1;
                continue;
            };
            let (t, _, started, from) = running.remove(i);
            let seconds = started.elapsed().as_secs_f64();
            let code = status.code();
            if code == Some(exit::BUSY) {
                out.busy += 1;
                eprintln!(
                    "trial {} ({}) skipped: another kiln process holds `{}` (see {})",
                    t.index,
                    t.sets.join(" "),
                    t.dir(dir).display(),
                    store::log_path(dir, t).display()
                );
                continue;
            }
            let summary = std::fs::read_to_string(t.dir(dir).join("summary.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let interrupted = matches!(code, Some(exit::INTERRUPTED | exit::TERMINATED));
            let status = if interrupted {
                Status::Interrupted
            } else if status.success() && summary.is_some() {
                Status::Ok
            } else {
                Status::Failed
            };
            let error = (status != Status::Ok).then(|| last_error(dir, t, from, code));
            store::append(
                dir,
                &Record {
                    trial: t.clone(),
                    status,
                    error: error.clone(),
                    summary,
                    seconds,
                    kiln: env!("CARGO_PKG_VERSION").into(),
                },
            )?;
            finished += 1;
            match status {
                Status::Ok => out.ok += 1,
                Status::Failed => out.failed += 1,
                Status::Interrupted => out.interrupted += 1,
            }
            eprintln!(
                "[{finished}/{}] trial {} ({}) {} in {seconds:.1} s{}",
                trials.len(),
                t.index,
                t.sets.join(" "),
                match status {
                    Status::Ok => "done",
                    Status::Failed => "FAILED",
                    Status::Interrupted => "interrupted (checkpoint kept; resumes next time)",
                },
                error
                    .filter(|_| status == Status::Failed)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(out)
}

/// Start trial `t`: resume its run directory from its checkpoint, or train it afresh.
fn spawn(
    exe: &Path,
    recipe: &Path,
    base_sets: &[String],
    t: &Trial,
    dir: &Path,
) -> std::io::Result<Child> {
    let tdir = t.dir(dir);
    let mut cmd = Command::new(exe);
    if tdir.join("checkpoint.safetensors").exists() {
        cmd.args(["train", "--resume"]).arg(&tdir);
    } else {
        cmd.arg("train").arg(recipe).arg("--out").arg(&tdir);
        for s in base_sets.iter().chain(&t.sets) {
            cmd.arg("--set").arg(s);
        }
    }
    // The sweep checked every trial's memory before any started (or was told not to).
    cmd.arg("--ignore-memory-check");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store::log_path(dir, t))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The sweep died before prctl took effect.
                    if libc::getppid() != parent {
                        libc::raise(libc::SIGTERM);
                    }
                    Ok(())
                });
            }
        }
    }
    cmd.spawn()
}

/// Send `signal` to a running trial.
fn forward(child: &Child, signal: i32) {
    #[cfg(unix)]
    // SAFETY: kill only sends a signal to the child's process id, which it still holds (it
    // has not been waited for).
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    #[cfg(not(unix))]
    let _ = (child, signal);
}

/// The last error line of this attempt's output (from byte `from` of the trial's log), or what
/// its exit status says.
fn last_error(dir: &Path, t: &Trial, from: u64, code: Option<i32>) -> String {
    let log = std::fs::read(store::log_path(dir, t)).unwrap_or_default();
    let this = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
    this.lines()
        .rev()
        .find(|l| l.contains("error"))
        .map(str::to_string)
        .unwrap_or_else(|| match code {
            Some(c) => format!("the trial exited with status {c} without a summary"),
            None => "the trial was killed by a signal".to_string(),
        })
}
