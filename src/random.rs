//! The source of randomness, passed in so that protocol code stays testable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;

/// The host could not give us random bytes; we refuse to continue rather than use weak values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomUnavailable;

impl fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host's random source failed")
    }
}

pub trait Random {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable>;
}

/// `n` random bytes as unpadded base64url: state, nonce and PKCE verifier values.
pub fn token(rng: &mut dyn Random, n: usize) -> Result<String, RandomUnavailable> {
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A deterministic source for tests: a counter, never for production.
#[cfg(test)]
pub struct CountingRandom(pub u8);

#[cfg(test)]
impl Random for CountingRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        for b in buf.iter_mut() {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
pub struct BrokenRandom;

#[cfg(test)]
impl Random for BrokenRandom {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        Err(RandomUnavailable)
    }
}
