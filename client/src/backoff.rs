//! [`Backoff`]: the waits between attempts, doubling from a minimum to a maximum, and
//! [`jitter`] to spread clients that lost the same broker. The WebSocket [`crate::Client`]
//! reconnects and the HTTP [`crate::Publisher`] retries by it, and so does the `rewind`
//! command through both.

use std::time::Duration;

/// Waits that double from `min` to `max`: `min`, `2·min`, `4·min`, … then `max` for ever.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`; no wait is longer than `max` (nor shorter than `min` when
    /// `min <= max`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min.min(max),
        }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the
    /// maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The longest wait, which also caps a wait the server asks for (`Retry-After`).
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Starts again at the minimum (after an attempt succeeded).
    pub fn reset(&mut self) {
        self.next = self.min.min(self.max);
    }

    /// The sum of the first `waits` waits from the start: how long `waits + 1` attempts
    /// that all fail at once take, jitter aside.
    pub fn total(&self, waits: u32) -> Duration {
        let mut from_start = Backoff::new(self.min, self.max);
        (0..waits).map(|_| from_start.next_wait()).sum()
    }
}

/// `d` scaled by a random factor in [0.5, 1.5), so clients that lost the same broker do
/// not all come back at once.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::getrandom(&mut b).is_ok() {
        u16::from_le_bytes(b) as f64 / 65536.0
    } else {
        0.5
    };
    d.mul_f64(0.5 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(100));
        assert_eq!(b.total(5), ms(1700));
        assert_eq!(Backoff::new(ms(900), ms(500)).next_wait(), ms(500));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j < Duration::from_millis(150),
                "{j:?}"
            );
        }
    }
}
