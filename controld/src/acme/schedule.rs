//! When to renew and when to try again: pure functions of times, tested with fixed clocks.

use std::time::{Duration, SystemTime};

/// A Retry-After further out than this is taken as this: a confused CA must not park a
/// certificate for months.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// When a certificate valid from `not_before` to `not_after` is due for renewal: when a third of
/// its lifetime remains.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_after.checked_sub(lifetime / 3).unwrap_or(not_before)
}

/// A point in the CA's suggested renewal window (ARI), picked with `random` in [0, 1): spread so
/// that many clients do not come at once.
pub fn in_window(start: SystemTime, end: SystemTime, random: f64) -> SystemTime {
    let width = end.duration_since(start).unwrap_or_default();
    start + width.mul_f64(random.clamp(0.0, 1.0))
}

/// How long to wait after `failures` failed attempts in a row (≥ 1): `initial` doubled per
/// failure up to `max`, then "equal jitter": half of it fixed, the other half scaled by
/// `random` in [0, 1), so that many certificates failing together do not retry together.
pub fn backoff(failures: u32, initial: Duration, max: Duration, random: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = initial
        .checked_mul(1u32 << exponent)
        .unwrap_or(max)
        .min(max);
    full / 2 + (full / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// The next attempt after a failure at `now`: after the back-off, and never before the CA's
/// Retry-After (bounded by [`MAX_RETRY_AFTER`]).
pub fn next_attempt(
    now: SystemTime,
    backoff: Duration,
    retry_after: Option<SystemTime>,
) -> SystemTime {
    let after_backoff = now + backoff;
    match retry_after {
        Some(t) => after_backoff.max(t.min(now + MAX_RETRY_AFTER)),
        None => after_backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_when_a_third_of_the_lifetime_remains() {
        let start = UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renewal_time(start, start + 90 * DAY), start + 60 * DAY);
        // An inverted validity never panics.
        assert_eq!(renewal_time(start, start - DAY), start - DAY);
    }

    #[test]
    fn ari_window_point_stays_inside_the_window() {
        let start = UNIX_EPOCH + DAY;
        assert_eq!(in_window(start, start + DAY, 0.0), start);
        assert_eq!(in_window(start, start + DAY, 0.5), start + DAY / 2);
        assert!(in_window(start, start + DAY, 0.999) < start + DAY);
        assert_eq!(in_window(start, start - DAY, 0.5), start);
    }

    #[test]
    fn backoff_doubles_is_jittered_and_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(60), s(3600), 0.0), s(30));
        assert_eq!(backoff(1, s(60), s(3600), 0.999_999).as_secs(), 59);
        assert_eq!(backoff(2, s(60), s(3600), 0.0), s(60));
        assert_eq!(backoff(3, s(60), s(3600), 0.0), s(120));
        assert_eq!(backoff(10, s(60), s(3600), 0.0), s(1800));
        assert_eq!(backoff(u32::MAX, s(60), s(3600), 0.0), s(1800));
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let now = UNIX_EPOCH + DAY;
        let b = Duration::from_secs(60);
        assert_eq!(next_attempt(now, b, None), now + b);
        assert_eq!(next_attempt(now, b, Some(now + DAY)), now + DAY);
        assert_eq!(next_attempt(now, b, Some(now)), now + b);
        assert_eq!(
            next_attempt(now, b, Some(now + 1000 * DAY)),
            now + MAX_RETRY_AFTER
        );
    }
}
