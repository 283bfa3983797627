//! Ctrl-C (SIGINT) and SIGTERM stop kiln cleanly: the first signal only raises a flag, which
//! the training loop reads after each step (it then writes a checkpoint and exits with
//! 128 + the signal number: 130 or 143); a second signal exits at once, with the same code.
//!
//! Commands that write nothing worth saving (validate, eval, generate) do not install the
//! handlers and keep the default behaviour.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

struct Flags {
    raised: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Install the handlers (once per process; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags {
        raised: Arc::new(AtomicBool::new(false)),
        signal: Arc::new(AtomicUsize::new(0)),
    };
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it: the
            // second signal exits at once.
            flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flags.raised))?;
            flag::register_usize(sig, Arc::clone(&flags.signal), sig as usize)?;
            flag::register(sig, Arc::clone(&flags.raised))?;
        }
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// The signal received since [`install`], if any (its number: 2 for SIGINT, 15 for SIGTERM).
pub fn received() -> Option<i32> {
    let f = FLAGS.get()?;
    if !f.raised.load(Ordering::SeqCst) {
        return None;
    }
    // The number is stored by a handler that runs just before the flag's.
    match f.signal.load(Ordering::SeqCst) {
        0 => Some(2),
        s => Some(s as i32),
    }
}

/// The exit status after stopping for `signal` (the shell's convention: 128 + its number).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// A signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT (Ctrl-C)",
        15 => "SIGTERM",
        _ => "a signal",
    }
}
