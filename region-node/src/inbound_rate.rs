//! How fast one connection may send: the publish rate it is told (`maxInboundRate`),
//! and a looser bound on every frame that tells a flood from a burst.
//!
//! Two token buckets per connection. Publishes draw on the *rate* bucket: an empty
//! one refuses the publish (NACK 42911) and the connection carries on. Every inbound
//! frame, publish or not, also draws on the *flood* bucket, which refills at three
//! times the rate and holds enough for a reconnect's storm (every channel
//! re-attached, the queue of publishes resent) plus three seconds of that tripled
//! rate. Only a client that keeps sending well past what it was told empties it;
//! it is then disconnected (DISCONNECTED 42910, Ably's generic rate limit) rather
//! than NACKed for ever.
//!
//! No clock of its own: callers pass the time, so the decisions are unit tested.

use tokio::time::Instant;

use crate::config::LimitsConfig;

/// How many times the publish rate a connection may sustain before it counts as a
/// flood.
const FLOOD_FACTOR: f64 = 3.0;

/// How long a connection may keep up more than `FLOOD_FACTOR` times the rate
/// (beyond its reconnect allowance) before it is disconnected.
const FLOOD_SECONDS: f64 = 3.0;

/// A token bucket: `capacity` tokens at most, refilled at `per_second`. It starts
/// full, so a new connection may burst at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, capacity: f64, now: Instant) -> Self {
        Self {
            per_second,
            capacity,
            tokens: capacity,
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn refill(&mut self, now: Instant) {
        // `saturating_duration_since`: a caller's earlier `now` adds nothing.
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
    }
}

/// What an inbound frame may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allowed,
    /// A publish over the rate: refuse it, keep the connection.
    OverRate,
    /// The connection keeps flooding: disconnect it.
    Flooding,
}

/// Both buckets of one connection.
#[derive(Debug, Clone)]
pub struct InboundGuard {
    rate: u32,
    publishes: TokenBucket,
    frames: TokenBucket,
}

impl InboundGuard {
    pub fn new(limits: &LimitsConfig, now: Instant) -> Self {
        let rate = f64::from(limits.max_inbound_rate);
        let burst = f64::from(limits.max_inbound_burst);
        // A reconnecting client re-attaches every channel and resends its queue at
        // once; that must never look like a flood.
        let reconnect = limits.max_channels_per_connection as f64 + burst;
        let flood_budget = reconnect + FLOOD_FACTOR * rate * FLOOD_SECONDS;
        Self {
            rate: limits.max_inbound_rate,
            publishes: TokenBucket::new(rate, burst, now),
            frames: TokenBucket::new(FLOOD_FACTOR * rate, flood_budget, now),
        }
    }

    /// The publish rate announced to the client.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// A publish arrived.
    pub fn publish(&mut self, now: Instant) -> Verdict {
        match self.frame(now) {
            Verdict::Allowed if !self.publishes.try_take(now) => Verdict::OverRate,
            verdict => verdict,
        }
    }

    /// Any other frame arrived (including WebSocket pings and pongs): it only counts
    /// towards a flood.
    pub fn frame(&mut self, now: Instant) -> Verdict {
        if self.frames.try_take(now) {
            Verdict::Allowed
        } else {
            Verdict::Flooding
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    fn limits(rate: u32, burst: u32, channels: usize) -> LimitsConfig {
        LimitsConfig {
            max_inbound_rate: rate,
            max_inbound_burst: burst,
            max_channels_per_connection: channels,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn a_full_bucket_grants_its_burst_then_one_token_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));

        let later = start + Duration::from_millis(100);
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2.0, start);
        let much_later = start + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| bucket.try_take(much_later)).count(), 2);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(10.0, 1.0, start);
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start - Duration::from_secs(1)));
        assert!(!bucket.try_take(start));
    }

    #[test]
    fn publishes_past_the_burst_are_over_rate_until_the_bucket_refills() {
        let start = Instant::now();
        let mut guard = InboundGuard::new(&limits(5, 2, 10), start);
        assert_eq!(guard.publish(start), Verdict::Allowed);
        assert_eq!(guard.publish(start), Verdict::Allowed);
        assert_eq!(guard.publish(start), Verdict::OverRate);

        // One token every 200 ms at 5 a second.
        let next = start + Duration::from_millis(200);
        assert_eq!(guard.publish(next), Verdict::Allowed);
        assert_eq!(guard.publish(next), Verdict::OverRate);
    }

    #[test]
    fn other_frames_never_draw_on_the_publish_rate() {
        let start = Instant::now();
        let mut guard = InboundGuard::new(&limits(5, 1, 10), start);
        assert!((0..20).all(|_| guard.frame(start) == Verdict::Allowed));
        assert_eq!(guard.publish(start), Verdict::Allowed);
    }

    #[test]
    fn a_reconnect_storm_is_not_a_flood() {
        let start = Instant::now();
        let mut guard = InboundGuard::new(&limits(5, 5, 100), start);
        // Every channel re-attached and the burst resent, all at once.
        assert!((0..100).all(|_| guard.frame(start) == Verdict::Allowed));
        assert!((0..5).all(|_| guard.publish(start) == Verdict::Allowed));
    }

    #[test]
    fn a_client_at_the_tripled_rate_is_never_a_flood() {
        let start = Instant::now();
        let mut guard = InboundGuard::new(&limits(10, 1, 1), start);
        let step = Duration::from_secs_f64(1.0 / 30.0);
        let flooding = (0..30 * 60)
            .map(|i| guard.publish(start + step * i))
            .any(|verdict| verdict == Verdict::Flooding);
        assert!(!flooding, "30 frames a second against a rate of 10");
    }

    #[test]
    fn a_sustained_flood_is_detected_within_its_budget() {
        let start = Instant::now();
        let mut guard = InboundGuard::new(&limits(5, 5, 3), start);
        // Budget: 3 channels + 5 burst + 3 x 5/s x 3 s = 53 frames at once.
        let verdicts: Vec<_> = (0..60).map(|_| guard.publish(start)).collect();
        assert_eq!(verdicts[..5], [Verdict::Allowed; 5]);
        assert_eq!(verdicts[5..53], [Verdict::OverRate; 48]);
        assert_eq!(verdicts[53], Verdict::Flooding);
    }
}
