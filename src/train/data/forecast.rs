//! The data of a forecasting task.

use super::Batch;
use crate::runtime::Runtime;
use crate::spec::recipe::Task;
use crate::train::TrainError;
use std::path::Path;

/// The data of a forecasting task: the standardized series and its windows.
pub struct ForecastData {
    /// Values by step, then channel, standardized with the training part's statistics.
    values: Vec<Vec<f64>>,
    lookback: usize,
    horizon: usize,
    season: usize,
    /// First target steps of the training, validation and test windows.
    pub(super) starts: [Vec<usize>; 3],
    pub(super) order: Vec<usize>,
    pub(super) order_epoch: Option<u64>,
}

impl ForecastData {
    /// Read and cut the series (its path as given: the command line resolves it against the
    /// recipe's folder); `None` for another kind of task.
    pub fn open(task: &Task) -> Result<Option<Self>, TrainError> {
        use crate::tasks::forecast::{read_csv, stats, Parts};
        let Task::Forecast(f) = task else {
            return Ok(None);
        };
        let series = read_csv(Path::new(&f.path), &f.columns)?;
        let (l, h) = (f.lookback as usize, f.horizon as usize);
        let parts = Parts::new(series.values.len(), l, h, f.val_fraction, f.test_fraction)?;
        let st = stats(&series.values, parts.train);
        let values = series
            .values
            .iter()
            .map(|r| r.iter().zip(&st).map(|(v, (m, s))| (v - m) / s).collect())
            .collect();
        Ok(Some(ForecastData {
            values,
            lookback: l,
            horizon: h,
            season: f.season as usize,
            starts: parts.starts(l, h),
            order: Vec::new(),
            order_epoch: None,
        }))
    }

    /// The window whose first target is step `t0`: lookback `[L][C]` and targets `[H][C]`.
    fn window(&self, t0: usize) -> (&[Vec<f64>], &[Vec<f64>]) {
        (
            &self.values[t0 - self.lookback..t0],
            &self.values[t0..t0 + self.horizon],
        )
    }

    pub(super) fn batch(&self, starts: &[usize]) -> Batch {
        let flat = |rows: &[Vec<f64>]| rows.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for &t0 in starts {
            let (a, b) = self.window(t0);
            x.extend(flat(a));
            y.extend(flat(b));
        }
        let (n, c) = (starts.len(), self.values[0].len());
        Batch::Series {
            x,
            y,
            x_dims: [n, self.lookback, c],
            y_dims: [n, self.horizon, c],
        }
    }

    /// The model's forecasts for the windows starting at `starts`, `[rows][H][C]` flat.
    fn forecast(&self, rt: &Runtime, starts: &[usize]) -> Vec<f32> {
        let Batch::Series { x, x_dims, .. } = self.batch(starts) else {
            unreachable!("series batch")
        };
        predict(rt, x, x_dims)
    }

    /// Mean squared error of the model over the windows at `starts`.
    pub(super) fn mse(&self, rt: &Runtime, starts: &[usize], bs: usize) -> f64 {
        let mut e = crate::tasks::forecast::ErrorSum::default();
        for chunk in starts.chunks(bs.max(1)) {
            let Batch::Series { x, y, x_dims, .. } = self.batch(chunk) else {
                unreachable!("series batch")
            };
            for (p, t) in predict(rt, x, x_dims).iter().zip(&y) {
                e.add(f64::from(*p), f64::from(*t));
            }
        }
        e.finish().mse
    }

    /// Test errors of the model and of the baselines.
    pub fn report(&self, rt: &Runtime) -> crate::tasks::forecast::ForecastReport {
        use crate::tasks::forecast::{last_value, seasonal_naive, ErrorSum, ForecastReport};
        let test = &self.starts[2];
        let (mut model, mut last, mut seasonal) = (
            ErrorSum::default(),
            ErrorSum::default(),
            ErrorSum::default(),
        );
        for chunk in test.chunks(256) {
            let pred = self.forecast(rt, chunk);
            let per = self.horizon * self.values[0].len();
            for (i, &t0) in chunk.iter().enumerate() {
                let (x, y) = self.window(t0);
                let lv = last_value(x, self.horizon);
                let sn = seasonal_naive(x, self.horizon, self.season);
                for (h, row) in y.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        model.add(f64::from(pred[i * per + h * row.len() + c]), v);
                        last.add(lv[h][c], v);
                        seasonal.add(sn[h][c], v);
                    }
                }
            }
        }
        ForecastReport {
            windows: test.len(),
            model: model.finish(),
            last_value: last.finish(),
            seasonal_naive: seasonal.finish(),
        }
    }
}

/// A forecasting model's forecasts for inputs `x` of shape `x_dims`, flat.
fn predict(rt: &Runtime, x: Vec<f32>, x_dims: [usize; 3]) -> Vec<f32> {
    let device = rt.device.clone().without_autodiff();
    let t = burn::tensor::Tensor::<3>::from_data(burn::tensor::TensorData::new(x, x_dims), &device);
    let t = if rt.device.is_autodiff() {
        t.autodiff()
    } else {
        t
    };
    rt.forward_series(t, false)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 forecasts")
}
