//! The tables of `kiln sweep report` (Markdown, CSV, JSON) and the best configuration.

use super::{exit, ReportFormat};
use crate::sweep::{Report, Row, Stat};

/// ` ± std`, or nothing where fewer than two trials define the metric (a standard deviation
/// of one value is undefined, not 0).
fn spread(v: &Stat) -> String {
    if v.n >= 2 {
        format!(" ± {:.4}", v.std)
    } else {
        String::new()
    }
}

/// A metric's cell: `mean ± std` (the mean alone from one trial), `-` where no trial defines
/// it, and how many finished trials left it undefined.
fn cell(v: &Stat) -> String {
    let mut c = match v.mean {
        Some(m) => format!("{m:.4}{}", spread(v)),
        None => "-".to_string(),
    };
    if v.undefined > 0 {
        c.push_str(&format!(" ({} undefined)", v.undefined));
    }
    if let Some(x) = v.reference {
        c.push_str(&format!(" ({x:.4})"));
    }
    c
}

/// A row's trial count: finished, and what else happened to its trials.
fn count(r: &Row) -> String {
    let mut extra = Vec::new();
    for (k, what) in [
        (r.failed, "failed"),
        (r.interrupted, "interrupted"),
        (r.pending, "not run"),
    ] {
        if k > 0 {
            extra.push(format!("{k} {what}"));
        }
    }
    if extra.is_empty() {
        r.n.to_string()
    } else {
        format!("{} ({})", r.n, extra.join(", "))
    }
}

/// Print the report in `format`, then (on stderr) the best configuration by `metric` and
/// those not significantly different from it. Returns the exit status.
pub fn print(rep: &Report, format: ReportFormat, metric: Option<&str>) -> i32 {
    let (rows, metrics) = (&rep.rows, &rep.metrics);
    let pick = metric.unwrap_or("best_val_loss");
    let Some(mi) = metrics.iter().position(|m| m.name == pick) else {
        let names: Vec<&str> = metrics.iter().map(|m| m.name).collect();
        eprintln!(
            "error: no metric `{pick}`; choose one of {}",
            names.join(", ")
        );
        return exit::UNUSABLE;
    };
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("rows serialize")
        ),
        ReportFormat::Csv => {
            let mut head = vec![
                "point".to_string(),
                "config".into(),
                "n".into(),
                "failed".into(),
            ];
            for m in metrics {
                for col in ["n", "undefined", "mean", "std", "ci95_low", "ci95_high"] {
                    head.push(format!("{}_{col}", m.name));
                }
                if m.reference.is_some() {
                    head.push(format!("{}_reference", m.name));
                }
            }
            println!("{}", head.join(","));
            for r in rows {
                let mut cells = vec![
                    format!("\"{}\"", r.point.replace('"', "\"\"")),
                    r.config.clone(),
                    r.n.to_string(),
                    r.failed.to_string(),
                ];
                for v in &r.values {
                    cells.push(v.n.to_string());
                    cells.push(v.undefined.to_string());
                    cells.push(v.mean.map_or(String::new(), |m| m.to_string()));
                    cells.push(if v.mean.is_some() && v.n >= 2 {
                        v.std.to_string()
                    } else {
                        String::new()
                    });
                    let (lo, hi) = v.ci95.map_or((String::new(), String::new()), |c| {
                        (c.0.to_string(), c.1.to_string())
                    });
                    cells.push(lo);
                    cells.push(hi);
                    if let Some(x) = v.reference {
                        cells.push(format!("{x}"));
                    }
                }
                println!("{}", cells.join(","));
            }
        }
        ReportFormat::Markdown => {
            let mut head = vec!["point".to_string(), "n".into()];
            head.extend(metrics.iter().map(|m| {
                if m.reference.is_some() {
                    format!("{} (reference)", m.name)
                } else {
                    m.name.to_string()
                }
            }));
            println!("| {} |", head.join(" | "));
            println!("|{}", "---|".repeat(head.len()));
            for r in rows {
                let mut cells = vec![r.point.clone(), count(r)];
                cells.extend(r.values.iter().map(cell));
                println!("| {} |", cells.join(" | "));
            }
            if rows
                .iter()
                .any(|r| r.values.iter().any(|v| v.undefined > 0))
            {
                println!("(undefined: the trial's metric has no value, e.g. a rule metric over no finished sequence; means are over the trials that define it)");
            }
        }
    }
    best(rows, rep, mi, pick);
    exit::OK
}

/// The best configuration by metric `mi`, and which others overlap it.
fn best(rows: &[Row], rep: &Report, mi: usize, pick: &str) {
    let m = &rep.metrics[mi];
    let mut scored: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, r.values[mi].mean?)))
        .collect();
    scored.sort_by(|(_, x), (_, y)| {
        if m.lower {
            x.total_cmp(y)
        } else {
            y.total_cmp(x)
        }
    });
    let Some(&(best, mean)) = scored.first() else {
        eprintln!("no configuration defines {pick}");
        return;
    };
    let b = &best.values[mi];
    let ci = b
        .ci95
        .map(|c| format!(", 95% CI [{:.4}, {:.4}]", c.0, c.1))
        .unwrap_or_default();
    eprintln!(
        "best by {pick}: {} ({mean:.4}{}{ci}, n = {})",
        best.point,
        spread(b),
        b.n
    );
    for (other, omean) in &scored[1..] {
        let o = &other.values[mi];
        if b.overlaps(o) {
            eprintln!(
                "  not significantly different from {} ({omean:.4}{}): {} overlap",
                other.point,
                spread(o),
                if b.ci95.is_some() && o.ci95.is_some() {
                    "the 95% intervals"
                } else {
                    "the ±1 std ranges (fewer than 2 seeds)"
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(n: usize) -> Stat {
        Stat {
            name: "loss".into(),
            n,
            undefined: 0,
            mean: Some(1.5),
            std: 0.0,
            ci95: None,
            reference: None,
        }
    }

    #[test]
    fn one_trial_shows_no_spread() {
        // Before: "1.5000 ± 0.0000", as if one seed had measured no variation.
        assert_eq!(cell(&stat(1)), "1.5000");
        assert_eq!(cell(&stat(2)), "1.5000 ± 0.0000");
    }
}
