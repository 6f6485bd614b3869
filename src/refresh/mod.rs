//! Renewing a session's access token before it expires: the refresh-token grant itself
//! ([`grant`]), and making it once per session across every worker of the Envoy process
//! ([`single_flight`]).

pub mod grant;
pub mod single_flight;

pub use single_flight::{Claim, Outcome, RefreshId};
