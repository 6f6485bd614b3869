//! What every protocol step reads besides its own input: the configuration, the provider's
//! metadata and signing keys as this VM knows them, the time and the random source. One value
//! instead of the same five parameters threaded through every function.

use crate::config::Config;
use crate::oidc::discovery::Provider;
use crate::oidc::jwks::Jwks;
use crate::random::Random;

pub struct Ctx<'a> {
    pub config: &'a Config,
    /// `None` until discovery has answered (or never, with discovery off and no endpoints).
    pub provider: Option<&'a Provider>,
    /// `None` until the JWKS has been read.
    pub keys: Option<&'a Jwks>,
    /// Unix seconds.
    pub now: u64,
    pub rng: &'a mut dyn Random,
}
