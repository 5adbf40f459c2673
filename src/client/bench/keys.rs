//! Which keys the load tool touches: uniform or zipfian draws over `--keys`, scattered
//! so that hot keys do not sit next to each other, and their names.

use super::*;

/// Draws key indices in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeySampler {
    Uniform { keys: u64 },
    Zipfian { zipf: Zipf, scatter: Scatter },
}

impl KeySampler {
    pub fn new(dist: KeyDist, keys: u64, theta: f64) -> Self {
        match dist {
            KeyDist::Uniform => KeySampler::Uniform { keys },
            KeyDist::Zipfian => KeySampler::Zipfian {
                zipf: Zipf::new(keys, theta),
                scatter: Scatter::new(keys),
            },
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeySampler::Uniform { keys } => rng.gen_range(0..*keys),
            KeySampler::Zipfian { zipf, scatter } => scatter.apply(zipf.sample(rng) - 1),
        }
    }
}

/// A bijection of `0..n` that spreads the hottest Zipf ranks over the key space
/// (`rank * P mod n` for a prime `P` coprime to `n`).
#[derive(Debug, Clone, Copy)]
pub struct Scatter {
    pub(super) n: u64,
    pub(super) mul: u64,
}

impl Scatter {
    /// A large prime (Knuth's multiplicative hashing constant).
    const PRIME: u64 = 2_654_435_761;

    pub fn new(n: u64) -> Self {
        // A prime is coprime to n unless it divides n; then fall back to the identity.
        let mul = if n.is_multiple_of(Self::PRIME) {
            1
        } else {
            Self::PRIME % n.max(1)
        };
        Scatter { n, mul: mul.max(1) }
    }

    pub fn apply(&self, rank: u64) -> u64 {
        ((u128::from(rank) * u128::from(self.mul)) % u128::from(self.n)) as u64
    }
}

/// Zipf distribution over ranks `1..=n` with exponent `theta` (P(k) ∝ k^-theta), drawn
/// by rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to generate
/// variates from monotone discrete distributions", 1996): O(1) memory and time.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    pub(super) n: u64,
    pub(super) theta: f64,
    pub(super) h_integral_x1: f64,
    pub(super) h_integral_n: f64,
    pub(super) s: f64,
}

impl Zipf {
    /// # Panics
    ///
    /// If `n` is 0 or `theta` is negative or not finite.
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one element");
        assert!(
            theta.is_finite() && theta >= 0.0,
            "Zipf exponent must be >= 0"
        );
        let mut z = Zipf {
            n,
            theta,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`; rank 1 is the most likely.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let r: f64 = rng.r#gen();
            let u = self.h_integral_n + r * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n as f64);
            let k_int = k as u64;
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k_int.clamp(1, self.n);
            }
        }
    }

    pub(super) fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    pub(super) fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.theta) * log_x) * log_x
    }

    pub(super) fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.theta)).max(-1.0);
        (log1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
pub(super) fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
pub(super) fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// Writes the name of key `n` (`key:` and ten digits) into `out`.
pub(super) fn key_name(n: u64, out: &mut [u8; KEY_NAME_LEN]) -> &str {
    out[..4].copy_from_slice(b"key:");
    let mut v = n;
    for i in (4..KEY_NAME_LEN).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    std::str::from_utf8(out).expect("ASCII")
}
