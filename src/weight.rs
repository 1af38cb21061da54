//! The balancing weight's bounds: one copy for `--weight`, `weight =` in the file and the
//! `w` TXT key of announcements.

/// The smallest weight.
pub const WEIGHT_MIN: u32 = 1;

/// The weight of a service given none (`--weight`, `weight`, a record without `w`).
pub const WEIGHT_DEFAULT: u32 = 1;

/// The largest weight a node may publish.
pub const WEIGHT_MAX: u32 = 10_000;

/// A weight outside [`WEIGHT_MIN`]..=[`WEIGHT_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("weight must be {WEIGHT_MIN}-{WEIGHT_MAX}")]
pub struct WeightError;

/// `weight` itself if it is within bounds.
pub fn check_weight(weight: u32) -> Result<u32, WeightError> {
    if (WEIGHT_MIN..=WEIGHT_MAX).contains(&weight) {
        Ok(weight)
    } else {
        Err(WeightError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(check_weight(1), Ok(1));
        assert_eq!(check_weight(10_000), Ok(10_000));
        assert_eq!(check_weight(0), Err(WeightError));
        assert_eq!(check_weight(10_001), Err(WeightError));
        assert_eq!(WeightError.to_string(), "weight must be 1-10000");
    }
}
