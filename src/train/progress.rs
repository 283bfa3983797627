//! Progress of a run on stderr.

/// Progress of a run on stderr: an indicatif bar (loss, throughput, ETA) on a terminal,
/// plain lines at each evaluation otherwise.
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    started: std::time::Instant,
    first_step: u64,
    total: u64,
}

impl Progress {
    pub(super) fn new(enabled: bool, step: u64, total: u64) -> Self {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:20} {pos}/{len} {msg} {per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_position(step);
            bar.reset_eta();
            bar
        });
        Progress {
            lines: enabled && bar.is_none(),
            bar,
            started: std::time::Instant::now(),
            first_step: step,
            total,
        }
    }

    pub(super) fn step(&self, step: u64, loss: f64, val: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            let val = if val.is_finite() {
                format!("{val:.4}")
            } else {
                "-".into()
            };
            bar.set_message(format!("loss {loss:.4} val {val}"));
        }
    }

    pub(super) fn eval(&self, step: u64, loss: f64, val: f64, lr: f64) {
        if self.lines {
            let rate =
                (step - self.first_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "step {step:>6}/{}  loss {loss:.4}  val {val:.4}  lr {lr:.2e}  {rate:.1} steps/s",
                self.total
            );
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
