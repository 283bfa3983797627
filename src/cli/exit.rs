//! The exit status of every `kiln` command: one table, documented in the README ("Exit
//! status"), that `train`, `eval`, `generate`, `sweep`, `run` and the others follow.

/// Success.
pub const OK: i32 = 0;
/// The input is invalid (the diagnostics say where), or the work ran and failed: a training
/// loss that became NaN, a sweep with failed trials.
pub const FAILED: i32 = 1;
/// A file or directory cannot be used: missing, unreadable, not YAML, damaged (a checkpoint
/// that fails its checksum), not writable (read-only, disk full); or the command line is wrong.
pub const UNUSABLE: i32 = 2;
/// A bug in kiln (an internal check failed); please report it.
pub const INTERNAL: i32 = 3;
/// The work does not fit in the memory this machine has (the estimate is printed);
/// `--ignore-memory-check` runs it anyway.
pub const TOO_LARGE: i32 = 4;
/// Another kiln process holds the run or sweep directory (it is named); nothing was written.
pub const BUSY: i32 = 5;
/// Stopped by Ctrl-C (SIGINT) after writing a checkpoint (128 + 2).
pub const INTERRUPTED: i32 = 130;
/// Stopped by SIGTERM after writing a checkpoint (128 + 15).
pub const TERMINATED: i32 = 143;
