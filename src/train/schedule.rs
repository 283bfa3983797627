//! Learning-rate schedules: the factor applied to the optimizer's peak `lr` at each step.

use crate::spec::recipe::Schedule;

/// Learning rate at optimizer step `step` (0-based) of a run of `total` steps.
pub fn lr_at(schedule: &Schedule, peak: f64, step: u64, total: u64) -> f64 {
    let t = step as f64;
    let total = total.max(1) as f64;
    match schedule {
        Schedule::Constant {} => peak,
        Schedule::WarmupCosine {
            warmup_steps,
            min_lr,
        } => {
            let w = *warmup_steps as f64;
            if t < w {
                peak * t / w
            } else {
                let progress = ((t - w) / (total - w).max(1.0)).min(1.0);
                min_lr + 0.5 * (peak - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
        Schedule::InverseSqrt {
            warmup_steps,
            timescale,
        } => {
            // Hugging Face get_inverse_sqrt_schedule: lambda(t) = t/W for t < W, else
            // 1/sqrt((t + timescale - W) / timescale); t counts from 0 at the first step.
            let w = *warmup_steps as f64;
            let ts = timescale.map_or(w, |v| v as f64);
            if t < w {
                peak * t / w
            } else {
                peak / ((t + ts - w) / ts).sqrt()
            }
        }
        Schedule::OneCycle {
            pct_start,
            div_factor,
            final_div_factor,
        } => {
            // PyTorch OneCycleLR with cosine annealing (three_phase = false).
            let initial = peak / div_factor;
            let min = initial / final_div_factor;
            let up_end = (pct_start * total - 1.0).max(0.0);
            let down_end = total - 1.0;
            let cos = |start: f64, end: f64, pct: f64| {
                end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
            };
            if t <= up_end {
                let pct = if up_end > 0.0 { t / up_end } else { 1.0 };
                cos(initial, peak, pct)
            } else {
                let pct = ((t - up_end) / (down_end - up_end).max(1.0)).min(1.0);
                cos(peak, min, pct)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_sqrt_matches_hugging_face() {
        let s = Schedule::InverseSqrt {
            warmup_steps: 1000,
            timescale: None,
        };
        assert_eq!(lr_at(&s, 2e-3, 0, 10_000), 0.0);
        assert!((lr_at(&s, 2e-3, 500, 10_000) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 2e-3, 1000, 10_000) - 2e-3).abs() < 1e-12);
        // sqrt(W / t) after warm-up.
        assert!((lr_at(&s, 2e-3, 4000, 10_000) - 2e-3 * (1000.0f64 / 4000.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn warmup_cosine_reaches_peak_and_min() {
        let s = Schedule::WarmupCosine {
            warmup_steps: 10,
            min_lr: 1e-4,
        };
        assert!((lr_at(&s, 1e-3, 5, 110) - 0.5e-3).abs() < 1e-12);
        assert!((lr_at(&s, 1e-3, 10, 110) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 1e-3, 110, 110) - 1e-4).abs() < 1e-12);
        assert!((lr_at(&s, 1e-3, 60, 110) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
    }

    #[test]
    fn one_cycle_matches_pytorch_endpoints() {
        let s = Schedule::OneCycle {
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        };
        assert!((lr_at(&s, 1.0, 0, 100) - 0.04).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 29, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 99, 100) - 0.04 / 1e4).abs() < 1e-12);
    }
}
