//! Timestamps from other parties, compared with ours. A peer chooses its timestamp, so the
//! difference is taken without overflow: `(now - ts).abs()` panics in debug builds and wraps in
//! release builds for a timestamp near `i64::MIN`, and the wrapped value passes a window check.

/// Whether `timestamp` is at most `window` from `now` (both in the same unit), either way. A
/// negative window admits nothing.
pub fn within(now: i64, timestamp: i64, window: i64) -> bool {
    u64::try_from(window).is_ok_and(|window| now.abs_diff(timestamp) <= window)
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn the_window_includes_its_bounds_on_both_sides() {
        assert!(within(1_000, 1_000, 0));
        assert!(within(1_000, 1_300, 300));
        assert!(within(1_000, 700, 300));
        assert!(!within(1_000, 1_301, 300));
        assert!(!within(1_000, 699, 300));
    }

    #[test]
    fn extreme_timestamps_are_outside_and_do_not_overflow() {
        let now = 1_800_000_000;
        for timestamp in [i64::MIN, i64::MIN + 1, i64::MAX, -now] {
            assert!(!within(now, timestamp, 300), "{timestamp}");
        }
        assert!(within(i64::MAX, i64::MAX, 0));
        assert!(!within(i64::MAX, i64::MIN, i64::MAX));
    }

    #[test]
    fn a_negative_window_admits_nothing() {
        assert!(!within(5, 5, -1));
    }
}
