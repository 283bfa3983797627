//! Time-series forecasting from a CSV file: reading and checking the file, chronological
//! splits, standardization with the training part's statistics, windows, and the last-value
//! and seasonal-naive baselines.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What can go wrong with a forecasting data file.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// The file could not be read or parsed as CSV.
    #[error("cannot read `{path}`: {msg}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// A named column is not in the header.
    #[error("`{path}` has no column `{name}`; its columns are {have}")]
    NoColumn {
        /// The file.
        path: PathBuf,
        /// The column asked for.
        name: String,
        /// The header.
        have: String,
    },
    /// A cell of a forecast column is not a number.
    #[error("`{path}` line {line}, column `{column}`: `{value}` is not a number")]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
        /// The cell.
        value: String,
    },
    /// The file has no numeric column to forecast.
    #[error("`{path}` has no numeric column to forecast")]
    NoNumeric {
        /// The file.
        path: PathBuf,
    },
    /// The series is too short for the splits and windows.
    #[error("{0}")]
    TooShort(String),
}

/// The series of a CSV file: `values[t][c]`.
#[derive(Debug, Clone)]
pub struct Series {
    /// Channel names.
    pub names: Vec<String>,
    /// Values by time step, then channel.
    pub values: Vec<Vec<f64>>,
}

/// Read the `columns` of `path`.
pub fn read_csv(path: &Path, columns: &[String]) -> Result<Series, ForecastError> {
    let err = |msg: String| ForecastError::Read {
        path: path.to_path_buf(),
        msg,
    };
    let mut rd = csv::Reader::from_path(path).map_err(|e| err(e.to_string()))?;
    let header: Vec<String> = rd
        .headers()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let rows: Vec<csv::StringRecord> = rd
        .records()
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    let picked: Vec<usize> = columns
        .iter()
        .map(|n| {
            header
                .iter()
                .position(|h| h == n)
                .ok_or_else(|| ForecastError::NoColumn {
                    path: path.to_path_buf(),
                    name: n.clone(),
                    have: crate::diag::one_of(
                        &header.iter().map(String::as_str).collect::<Vec<_>>(),
                    ),
                })
        })
        .collect::<Result<_, _>>()?;
    if picked.is_empty() || rows.is_empty() {
        return Err(ForecastError::NoNumeric {
            path: path.to_path_buf(),
        });
    }
    let mut values = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let mut row = Vec::with_capacity(picked.len());
        for &c in &picked {
            let cell = r.get(c).unwrap_or("").trim();
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => row.push(v),
                _ => {
                    return Err(ForecastError::NotANumber {
                        path: path.to_path_buf(),
                        line: i + 2,
                        column: header[c].clone(),
                        value: cell.to_string(),
                    })
                }
            }
        }
        values.push(row);
    }
    Ok(Series {
        names: picked.iter().map(|&c| header[c].clone()).collect(),
        values,
    })
}

/// Chronological parts of a series of `n` steps: targets of the training windows lie in
/// `0..train`, of validation windows in `train..train + val`, of test windows in the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts {
    /// Steps of the training part.
    pub train: usize,
    /// Steps of the validation part.
    pub val: usize,
    /// Steps of the test part.
    pub test: usize,
}

impl Parts {
    /// Cut `n` steps; every part must hold at least one window.
    pub fn new(
        n: usize,
        lookback: usize,
        horizon: usize,
        val_fraction: f64,
        test_fraction: f64,
    ) -> Result<Self, ForecastError> {
        let (train, val, test) = super::split_lengths(n, val_fraction, test_fraction);
        if train < lookback + horizon {
            return Err(ForecastError::TooShort(format!(
                "the training part has {train} steps of {n}, fewer than lookback + horizon = {}: lower `lookback`, `horizon` or the validation/test fractions",
                lookback + horizon
            )));
        }
        for (name, len) in [("validation", val), ("test", test)] {
            if len < horizon {
                return Err(ForecastError::TooShort(format!(
                    "the {name} part has {len} steps, fewer than the horizon {horizon}: raise its fraction or lower `horizon`"
                )));
            }
        }
        Ok(Parts { train, val, test })
    }

    /// First target steps of the windows of each part: (train, validation, test).
    pub fn starts(&self, lookback: usize, horizon: usize) -> [Vec<usize>; 3] {
        let span = |lo: usize, hi: usize| (lo.max(lookback)..=hi - horizon).collect::<Vec<_>>();
        [
            span(lookback, self.train),
            span(self.train, self.train + self.val),
            span(self.train + self.val, self.train + self.val + self.test),
        ]
    }
}

/// Mean and standard deviation of each channel over the first `n` steps (a zero deviation
/// becomes 1).
pub fn stats(values: &[Vec<f64>], n: usize) -> Vec<(f64, f64)> {
    let c = values[0].len();
    (0..c)
        .map(|j| {
            let m = values[..n].iter().map(|r| r[j]).sum::<f64>() / n as f64;
            let v = values[..n].iter().map(|r| (r[j] - m).powi(2)).sum::<f64>() / n as f64;
            (m, if v > 0.0 { v.sqrt() } else { 1.0 })
        })
        .collect()
}

/// Errors of a forecast against the truth.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
}

/// Accumulates squared and absolute errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct ErrorSum {
    sq: f64,
    abs: f64,
    n: usize,
}

impl ErrorSum {
    /// Add one forecast value against its truth.
    pub fn add(&mut self, pred: f64, truth: f64) {
        self.sq += (pred - truth).powi(2);
        self.abs += (pred - truth).abs();
        self.n += 1;
    }

    /// The means.
    pub fn finish(&self) -> Errors {
        let n = self.n.max(1) as f64;
        Errors {
            mse: self.sq / n,
            mae: self.abs / n,
        }
    }
}

/// The last-value forecast: every step repeats the last value of the lookback `x[L][C]`.
pub fn last_value(x: &[Vec<f64>], horizon: usize) -> Vec<Vec<f64>> {
    vec![x[x.len() - 1].clone(); horizon]
}

/// The seasonal-naive forecast with period m ≤ L: step h repeats the value one or more
/// whole periods before it, x[L − m + (h mod m)].
pub fn seasonal_naive(x: &[Vec<f64>], horizon: usize, m: usize) -> Vec<Vec<f64>> {
    let l = x.len();
    (0..horizon).map(|h| x[l - m + h % m].clone()).collect()
}

/// A model's test errors beside the baselines' (standardized units).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForecastReport {
    /// Test windows.
    pub windows: usize,
    /// The model.
    pub model: Errors,
    /// Repeating the last value.
    pub last_value: Errors,
    /// Repeating the last season.
    pub seasonal_naive: Errors,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_repeat_the_last_value_and_the_last_season() {
        let x: Vec<Vec<f64>> = (0..6).map(|t| vec![t as f64]).collect();
        assert_eq!(last_value(&x, 3), vec![vec![5.0]; 3]);
        // Period 4: steps 0..5 repeat x[2], x[3], x[4], x[5], x[2].
        let s: Vec<f64> = seasonal_naive(&x, 5, 4).into_iter().map(|r| r[0]).collect();
        assert_eq!(s, [2.0, 3.0, 4.0, 5.0, 2.0]);
    }

    #[test]
    fn parts_and_windows_are_chronological() {
        let p = Parts::new(100, 10, 5, 0.1, 0.2).unwrap();
        assert_eq!(
            p,
            Parts {
                train: 70,
                val: 10,
                test: 20
            }
        );
        let [tr, va, te] = p.starts(10, 5);
        assert_eq!((tr[0], *tr.last().unwrap()), (10, 65));
        assert_eq!((va[0], *va.last().unwrap()), (70, 75));
        assert_eq!((te[0], *te.last().unwrap()), (80, 95));
        assert!(Parts::new(20, 10, 5, 0.1, 0.2).is_err());
        assert!(
            Parts::new(100, 10, 15, 0.1, 0.1).is_err(),
            "a part shorter than the horizon"
        );
    }

    #[test]
    fn standardization_uses_the_training_part() {
        let v = vec![vec![1.0, 5.0], vec![3.0, 5.0], vec![100.0, 7.0]];
        let s = stats(&v, 2);
        assert_eq!(s, vec![(2.0, 1.0), (5.0, 1.0)]);
    }
}
