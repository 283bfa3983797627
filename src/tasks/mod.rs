//! Tasks: data and metrics. The rule-extrapolation grammars and next-value prediction on
//! uint16 streams, forecasting, seq2seq and real text; [`split_lengths`] cuts every stream.

pub mod forecast;
pub mod grammar;
pub mod seq2seq;
pub mod text;
pub mod uint16;

/// The lengths `(train, validation, test)` of a series of `n` steps cut in time order: the
/// last ⌊n · test_fraction⌋ steps for testing, the ⌊n · val_fraction⌋ before them for
/// validation and the rest for training (as the forecasting literature's `int(n · f)`). Every
/// task that cuts a stream uses it, so two tasks never cut the same file differently.
pub fn split_lengths(n: usize, val_fraction: f64, test_fraction: f64) -> (usize, usize, usize) {
    let test = (n as f64 * test_fraction).floor() as usize;
    let val = (n as f64 * val_fraction).floor() as usize;
    (n.saturating_sub(test + val), val, test)
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_round_down_and_the_training_part_takes_the_rest() {
        assert_eq!(super::split_lengths(144, 0.1, 0.2), (102, 14, 28));
        assert_eq!(super::split_lengths(10, 0.0, 0.0), (10, 0, 0));
        assert_eq!(super::split_lengths(3, 0.5, 0.5), (1, 1, 1));
    }
}
