//! Renewing a session's access token before it expires: the refresh-token grant itself
//! ([`grant`]), making it once per session across every worker of the Envoy process
//! ([`single_flight`]), and, with a store, across every replica ([`in_store`]).

pub mod grant;
pub mod in_store;
pub mod single_flight;

pub use single_flight::{Claim, Outcome, RefreshId};
