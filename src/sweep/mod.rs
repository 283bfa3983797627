//! Sweeps: trials expanded from a recipe's `sweep` section, run as `kiln train` processes,
//! recorded in an append-only store, resumed after an interruption, and reported with mean ±
//! std over seeds.
//!
//! A trial's identity is its content, not its index: the hash of its fully resolved recipe
//! (model inlined, data files identified by path, size and modification time, kiln's version;
//! see [`key`]). A trial whose recipe changed runs again, a trial another plan already ran is
//! not, and a report never averages runs of different configurations. The index only orders
//! the plan: the same recipe expands to the same trials in the same order (grid keys sorted,
//! the last varying fastest; then zip rows; then seeds), which cluster jobs rely on.

pub mod key;
pub mod plots;
pub mod report;
pub mod runner;
pub mod store;

pub use plots::plots;
pub use report::{mean_std, metrics_of, report, t975, Metric, Report, Row, Scope, Stat};
pub use runner::{run, Outcome};
pub use store::{Plan, Record, Status, Store};

use crate::spec::recipe::Sweep;
use serde::{Deserialize, Serialize};

/// One trial: the overrides that make it from the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Stable index.
    pub index: usize,
    /// `key=value` overrides (as `--set`), seed last.
    pub sets: Vec<String>,
    /// The point: the overrides without the seed (trials of one point differ by seed only).
    pub point: String,
    /// The seed, when the sweep lists seeds.
    pub seed: Option<u64>,
    /// The trial's identity: the hash of its resolved recipe (see [`key`]); empty in records
    /// written before kiln keyed trials by content.
    #[serde(default)]
    pub key: String,
    /// The hash of its configuration: the resolved recipe without the seed, shared by the
    /// trials (seeds) of one point, which a report averages over.
    #[serde(default)]
    pub config: String,
}

impl Trial {
    /// The trial's run directory inside the sweep directory `dir`.
    pub fn dir(&self, dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(self.dir_name())
    }

    /// `trial-<key>`; `trial-<index>` for a record written before content keys.
    pub fn dir_name(&self) -> String {
        if self.key.is_empty() {
            format!("trial-{:04}", self.index)
        } else {
            format!("trial-{}", self.key)
        }
    }
}

/// Expand a sweep into its trials.
pub fn plan(s: &Sweep) -> Result<Vec<Trial>, String> {
    let zip_len = s.zip.values().map(Vec::len).next().unwrap_or(1);
    if let Some((k, v)) = s.zip.iter().find(|(_, v)| v.len() != zip_len) {
        return Err(format!(
            "`sweep.zip` lists must have one length: `{k}` has {} values, the first list {zip_len}",
            v.len()
        ));
    }
    if let Some((k, _)) = s.grid.iter().chain(&s.zip).find(|(_, v)| v.is_empty()) {
        return Err(format!("`sweep` key `{k}` has no values"));
    }
    // Grid points: mixed-radix counting, last key fastest.
    let keys: Vec<(&String, &Vec<_>)> = s.grid.iter().collect();
    let n_grid: usize = keys.iter().map(|(_, v)| v.len()).product();
    let mut points: Vec<Vec<String>> = Vec::new();
    for g in 0..n_grid {
        let mut rest = g;
        let mut sets = vec![String::new(); keys.len()];
        for (i, (k, v)) in keys.iter().enumerate().rev() {
            sets[i] = format!("{k}={}", v[rest % v.len()]);
            rest /= v.len();
        }
        for z in 0..zip_len {
            let mut p = sets.clone();
            p.extend(s.zip.iter().map(|(k, v)| format!("{k}={}", v[z])));
            points.push(p);
        }
    }
    if let Some(r) = &s.random {
        let draws = random_draws(r)?;
        points = points
            .into_iter()
            .flat_map(|p| {
                draws.iter().map(move |d| {
                    let mut q = p.clone();
                    q.extend(d.iter().cloned());
                    q
                })
            })
            .collect();
    }
    if !s.when.is_empty() {
        points = conditional(s, points)?;
    }
    let seeds: Vec<Option<u64>> = if s.seeds.is_empty() {
        vec![None]
    } else {
        s.seeds.iter().copied().map(Some).collect()
    };
    let mut trials = Vec::new();
    for p in points {
        for &seed in &seeds {
            let mut sets = p.clone();
            if let Some(x) = seed {
                sets.push(format!("train.seed={x}"));
            }
            trials.push(Trial {
                index: trials.len(),
                sets,
                point: p.join(" "),
                seed,
                key: String::new(),
                config: String::new(),
            });
        }
    }
    Ok(trials)
}

/// The value that the `key=value` overrides `sets` give `key`.
pub(crate) fn set_value<'a>(sets: &'a [String], key: &str) -> Option<&'a str> {
    sets.iter().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Drop the settings whose `when` conditions fail, then the points that became duplicates
/// (the first of equal points keeps its place).
fn conditional(s: &Sweep, points: Vec<Vec<String>>) -> Result<Vec<Vec<String>>, String> {
    let swept: std::collections::BTreeSet<&str> = s
        .grid
        .keys()
        .chain(s.zip.keys())
        .chain(s.random.iter().flat_map(|r| r.params.keys()))
        .map(String::as_str)
        .collect();
    for (k, conds) in &s.when {
        for name in std::iter::once(k).chain(conds.keys()) {
            if !swept.contains(name.as_str()) {
                return Err(format!(
                    "`sweep.when` names `{name}`, which is not swept (by grid, zip or random)"
                ));
            }
        }
        if conds.is_empty() {
            return Err(format!("`sweep.when.{k}` lists no condition"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in points {
        let value = |key: &str| set_value(&p, key);
        let kept: Vec<String> = p
            .iter()
            .filter(|kv| {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                s.when.get(key).is_none_or(|conds| {
                    conds.iter().all(|(c, vals)| {
                        value(c).is_some_and(|v| vals.iter().any(|x| x.to_string() == v))
                    })
                })
            })
            .cloned()
            .collect();
        if seen.insert(kept.clone()) {
            out.push(kept);
        }
    }
    Ok(out)
}

/// The `count` draws of a random search, each a list of `key=value` overrides.
fn random_draws(r: &crate::spec::recipe::RandomSearch) -> Result<Vec<Vec<String>>, String> {
    use crate::spec::recipe::Distribution as D;
    for (k, d) in &r.params {
        let bad = match d {
            D::Uniform { low, high } => (low >= high).then(|| "needs low < high".to_string()),
            D::LogUniform { low, high } => {
                (*low <= 0.0 || low >= high).then(|| "needs 0 < low < high".to_string())
            }
            D::Int { low, high } => (low > high).then(|| "needs low ≤ high".to_string()),
            D::Choice { values } => values.is_empty().then(|| "has no values".to_string()),
        };
        if let Some(why) = bad {
            return Err(format!("`sweep.random.params.{k}` {why}"));
        }
    }
    Ok((0..u64::from(r.count))
        .map(|k| {
            let mut rng = crate::util::Rng::new(r.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            r.params
                .iter()
                .map(|(key, d)| {
                    let v = match d {
                        D::Uniform { low, high } => {
                            format!("{:?}", low + (high - low) * rng.uniform())
                        }
                        D::LogUniform { low, high } => {
                            format!(
                                "{:?}",
                                (low.ln() + (high.ln() - low.ln()) * rng.uniform()).exp()
                            )
                        }
                        D::Int { low, high } => {
                            let span = (high - low) as u64 + 1;
                            (low + (rng.next_u64() % span) as i64).to_string()
                        }
                        D::Choice { values } => {
                            values[(rng.next_u64() % values.len() as u64) as usize].to_string()
                        }
                    };
                    format!("{key}={v}")
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::recipe::SweepValue as V;

    #[test]
    fn grid_zip_and_seeds_expand_in_a_stable_order() {
        let s = Sweep {
            grid: [
                ("b".to_string(), vec![V::Int(1), V::Int(2)]),
                (
                    "a".to_string(),
                    vec![V::Str("x".into()), V::Str("y".into())],
                ),
            ]
            .into_iter()
            .collect(),
            zip: [
                ("z1".to_string(), vec![V::Float(0.5), V::Float(1.5)]),
                ("z2".to_string(), vec![V::Bool(true), V::Bool(false)]),
            ]
            .into_iter()
            .collect(),
            random: None,
            seeds: vec![7, 8],
            when: Default::default(),
        };
        let t = plan(&s).unwrap();
        assert_eq!(t.len(), 2 * 2 * 2 * 2);
        assert_eq!(
            t[0].sets,
            ["a=x", "b=1", "z1=0.5", "z2=true", "train.seed=7"]
        );
        assert_eq!(
            t[1].sets,
            ["a=x", "b=1", "z1=0.5", "z2=true", "train.seed=8"]
        );
        assert_eq!(t[2].sets[2..4], ["z1=1.5", "z2=false"]);
        assert_eq!(t[4].sets[..2], ["a=x", "b=2"]);
        assert_eq!(t[8].sets[..2], ["a=y", "b=1"]);
        assert!(t.iter().enumerate().all(|(i, x)| x.index == i));
        assert_eq!(t[0].point, t[1].point);
        assert_eq!(plan(&s).unwrap(), t, "deterministic");
        let bad = Sweep {
            zip: [
                ("p".to_string(), vec![V::Int(1)]),
                ("q".to_string(), vec![V::Int(1), V::Int(2)]),
            ]
            .into_iter()
            .collect(),
            ..s
        };
        assert!(plan(&bad).unwrap_err().contains("one length"));
    }

    #[test]
    fn conditional_parameters_apply_only_where_their_condition_holds() {
        let s = Sweep {
            grid: [
                (
                    "model".to_string(),
                    vec![V::Str("t.yaml".into()), V::Str("lstm.yaml".into())],
                ),
                ("model.vars.heads".to_string(), vec![V::Int(2), V::Int(4)]),
            ]
            .into_iter()
            .collect(),
            when: [(
                "model.vars.heads".to_string(),
                [("model".to_string(), vec![V::Str("t.yaml".into())])]
                    .into_iter()
                    .collect(),
            )]
            .into_iter()
            .collect(),
            seeds: vec![0, 1],
            ..Sweep::default()
        };
        let t = plan(&s).unwrap();
        let sets: Vec<Vec<String>> = t.iter().step_by(2).map(|x| x.sets.clone()).collect();
        assert_eq!(
            sets,
            [
                vec!["model=t.yaml", "model.vars.heads=2", "train.seed=0"],
                vec!["model=t.yaml", "model.vars.heads=4", "train.seed=0"],
                vec!["model=lstm.yaml", "train.seed=0"],
            ]
        );
        assert_eq!(
            t.len(),
            6,
            "the LSTM point runs once per seed, not once per heads value"
        );
        let mut bad = s.clone();
        bad.when.insert(
            "train.lr".into(),
            [("model".to_string(), vec![V::Int(1)])]
                .into_iter()
                .collect(),
        );
        assert!(plan(&bad)
            .unwrap_err()
            .contains("`train.lr`, which is not swept"));
    }

    #[test]
    fn random_draws_stay_in_range_and_are_reproducible() {
        use crate::spec::recipe::{Distribution as D, RandomSearch};
        let s = Sweep {
            grid: [("g".to_string(), vec![V::Int(1), V::Int(2)])]
                .into_iter()
                .collect(),
            zip: Default::default(),
            random: Some(RandomSearch {
                count: 50,
                seed: 3,
                params: [
                    (
                        "lr".to_string(),
                        D::LogUniform {
                            low: 1e-4,
                            high: 1e-2,
                        },
                    ),
                    ("d".to_string(), D::Int { low: 2, high: 4 }),
                    (
                        "m".to_string(),
                        D::Choice {
                            values: vec![V::Str("a".into()), V::Str("b".into())],
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }),
            seeds: vec![],
            when: Default::default(),
        };
        let t = plan(&s).unwrap();
        assert_eq!(t.len(), 2 * 50);
        assert_eq!(plan(&s).unwrap(), t);
        // Draw k is the same under every grid point.
        assert_eq!(t[0].sets[1..], t[50].sets[1..]);
        let val = |x: &Trial, k: &str| {
            x.sets
                .iter()
                .find_map(|s| s.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let mut ds = std::collections::BTreeSet::new();
        for x in &t {
            let lr: f64 = val(x, "lr").parse().unwrap();
            assert!((1e-4..1e-2).contains(&lr));
            let d: i64 = val(x, "d").parse().unwrap();
            ds.insert(d);
            assert!(["a", "b"].contains(&val(x, "m").as_str()));
        }
        assert_eq!(ds.into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        let mut bad = s.clone();
        bad.random.as_mut().unwrap().params.insert(
            "x".into(),
            D::LogUniform {
                low: 0.0,
                high: 1.0,
            },
        );
        assert!(plan(&bad).unwrap_err().contains("0 < low < high"));
    }
}
