//! Adaptive election timeout: Jacobson/Karels RTT estimation (as in TCP's RFC 6298).
//!
//! Round-trip samples come from the transport's own heartbeat pings, never from
//! AppendEntries (whose round trip includes a disk write on the follower). From the
//! estimate, `timeout = (rtt + 4 · deviation) · safety_factor`, clamped to
//! `[min, max]`; each election round then draws its timeout at random between that value
//! and the upper clamp, so nodes whose estimates agree still do not time out together.

use std::time::Duration;

/// Tunables (the design's defaults).
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveConfig {
    pub alpha: f64,
    pub beta: f64,
    pub safety_factor: f64,
    pub min: Duration,
    pub max: Duration,
    pub initial: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> AdaptiveConfig {
        AdaptiveConfig {
            alpha: 0.125,
            beta: 0.25,
            safety_factor: 2.0,
            min: Duration::from_millis(150),
            max: Duration::from_millis(300),
            initial: Duration::from_millis(200),
        }
    }
}

/// RTT estimator and the election timeout derived from it.
#[derive(Debug, Clone)]
pub struct AdaptiveTimeout {
    config: AdaptiveConfig,
    estimated_rtt_s: Option<f64>,
    rtt_dev_s: f64,
    samples: u64,
}

impl AdaptiveTimeout {
    pub fn new(config: AdaptiveConfig) -> AdaptiveTimeout {
        assert!(config.min <= config.initial && config.initial <= config.max);
        AdaptiveTimeout {
            config,
            estimated_rtt_s: None,
            rtt_dev_s: 0.0,
            samples: 0,
        }
    }

    /// Feeds one round-trip sample.
    pub fn record_rtt(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        self.samples += 1;
        match self.estimated_rtt_s {
            None => {
                self.estimated_rtt_s = Some(r);
                self.rtt_dev_s = r / 2.0;
            }
            Some(est) => {
                self.rtt_dev_s =
                    (1.0 - self.config.beta) * self.rtt_dev_s + self.config.beta * (est - r).abs();
                self.estimated_rtt_s =
                    Some((1.0 - self.config.alpha) * est + self.config.alpha * r);
            }
        }
    }

    /// The current timeout (before randomization).
    pub fn timeout(&self) -> Duration {
        match self.estimated_rtt_s {
            None => self.config.initial,
            Some(est) => {
                let t = (est + 4.0 * self.rtt_dev_s) * self.config.safety_factor;
                Duration::from_secs_f64(t).clamp(self.config.min, self.config.max)
            }
        }
    }

    /// A timeout drawn uniformly from `[timeout(), max]` using `random` in `[0, 1)`.
    pub fn randomized(&self, random: f64) -> Duration {
        let lo = self.timeout().as_secs_f64();
        let hi = self.config.max.as_secs_f64();
        Duration::from_secs_f64(lo + (hi - lo) * random.clamp(0.0, 1.0))
    }

    /// Smoothed RTT estimate, if any sample arrived.
    pub fn estimated_rtt(&self) -> Option<Duration> {
        self.estimated_rtt_s.map(Duration::from_secs_f64)
    }

    /// Smoothed RTT deviation.
    pub fn rtt_deviation(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_dev_s)
    }

    /// Samples seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn starts_at_the_initial_timeout_and_clamps() {
        let mut a = AdaptiveTimeout::new(AdaptiveConfig::default());
        assert_eq!(a.timeout(), ms(200));
        for _ in 0..50 {
            a.record_rtt(Duration::from_micros(100));
        }
        assert_eq!(a.timeout(), ms(150), "a fast network hits the lower clamp");
        for _ in 0..50 {
            a.record_rtt(ms(400));
        }
        assert_eq!(a.timeout(), ms(300), "a slow network hits the upper clamp");
    }

    #[test]
    fn follows_jacobson_karels() {
        let mut a = AdaptiveTimeout::new(AdaptiveConfig::default());
        a.record_rtt(ms(40));
        // First sample: rtt = 40, dev = 20 → (40 + 80) · 2 = 240 ms.
        assert_eq!(a.timeout(), ms(240));
        a.record_rtt(ms(40));
        // dev = 0.75·20 + 0.25·0 = 15; rtt = 40 → (40 + 60) · 2 = 200 ms.
        assert_eq!(a.timeout(), ms(200));
        assert_eq!(a.estimated_rtt(), Some(ms(40)));
        let r = a.randomized(0.5);
        assert_eq!(r, ms(250));
    }
}
