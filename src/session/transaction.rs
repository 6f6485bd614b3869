//! The login transaction: what the callback needs to finish a login, kept in its own sealed,
//! short-lived cookie named after the flow (`<session>.tx.<flow>`), so several tabs can log in
//! at once without overwriting each other.

use super::cookie::Jar;
use super::seal::KeyRing;
use crate::oidc::pkce::PkceVerifier;
use crate::random::{token, Random, RandomUnavailable};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The part of `state` that names the cookie: enough to tell concurrent flows apart.
const FLOW_ID_LEN: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
pub struct LoginTransaction {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub verifier: PkceVerifier,
    /// Where the browser goes after login: a checked relative path or the configured URL.
    #[serde(rename = "r")]
    pub return_to: String,
    /// The exact redirect_uri sent to the authorization endpoint; the token request repeats it.
    #[serde(rename = "u")]
    pub redirect_uri: String,
    #[serde(rename = "t")]
    pub created: u64,
    /// Started with `prompt=none` (a silent login): an IdP error such as `login_required`
    /// goes back to `return_to` for the SPA to handle, not to an error page.
    #[serde(rename = "p", default, skip_serializing_if = "std::ops::Not::not")]
    pub silent: bool,
    /// The `acr_values` asked for (a step-up): the ID token's `acr` must be one of them, else
    /// the login fails rather than loop back to a page that asks again.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionError {
    /// No cookie for this state: expired, deleted after use, or another browser's login.
    Missing,
    /// The cookie did not open or decode.
    Invalid,
    /// The cookie opened but holds another state (forged callback).
    StateMismatch,
    Expired,
}

impl LoginTransaction {
    pub fn begin(
        rng: &mut dyn Random,
        return_to: String,
        redirect_uri: String,
        now: u64,
    ) -> Result<Self, RandomUnavailable> {
        Ok(LoginTransaction {
            state: token(rng, 32)?,
            nonce: token(rng, 32)?,
            verifier: PkceVerifier::generate(rng)?,
            return_to,
            redirect_uri,
            created: now,
            silent: false,
            acr_values: None,
        })
    }

    pub fn cookie_name(session_name: &str, state: &str) -> String {
        let flow: String = state.chars().take(FLOW_ID_LEN).collect();
        format!("{session_name}.tx.{flow}")
    }

    /// The `(cookie name, sealed value)` for this transaction.
    pub fn seal(
        &self,
        keys: &KeyRing,
        session_name: &str,
        rng: &mut dyn Random,
    ) -> Result<(String, String), super::seal::SealError> {
        let name = Self::cookie_name(session_name, &self.state);
        let json = serde_json::to_vec(self).map_err(|_| super::seal::SealError::Cipher)?;
        let value = keys.seal(&name, &json, rng)?;
        Ok((name, value))
    }

    /// Finds and opens the transaction for the `state` the IdP sent back.
    pub fn open(
        keys: &KeyRing,
        session_name: &str,
        jar: &Jar,
        state: &str,
        now: u64,
        max_age: u64,
    ) -> Result<Self, TransactionError> {
        let name = Self::cookie_name(session_name, state);
        let sealed = jar.find(&name).ok_or(TransactionError::Missing)?;
        let json = keys
            .open(&name, sealed)
            .map_err(|_| TransactionError::Invalid)?;
        let tx: LoginTransaction =
            serde_json::from_slice(&json).map_err(|_| TransactionError::Invalid)?;
        if !bool::from(tx.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(TransactionError::StateMismatch);
        }
        if now > tx.created.saturating_add(max_age) || tx.created > now.saturating_add(60) {
            return Err(TransactionError::Expired);
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{KEY_A, KEY_B};
    use crate::random::CountingRandom;
    use crate::session::cookie::tests::jar;

    const S: &str = "__Host-bff-session";

    fn ring(k: &str) -> KeyRing {
        KeyRing::from_base64_list(k).unwrap()
    }

    fn sealed_tx(now: u64) -> (LoginTransaction, String) {
        let mut rng = CountingRandom(1);
        let tx =
            LoginTransaction::begin(&mut rng, "/app".into(), "https://a/cb".into(), now).unwrap();
        let (name, value) = tx.seal(&ring(KEY_A), S, &mut rng).unwrap();
        (tx, format!("other=1; {name}={value}"))
    }

    #[test]
    fn round_trip_through_the_cookie_header() {
        let (tx, header) = sealed_tx(1000);
        let back =
            LoginTransaction::open(&ring(KEY_A), S, &jar(&header), &tx.state, 1100, 600).unwrap();
        assert_eq!(back.nonce, tx.nonce);
        assert_eq!(back.return_to, "/app");
        assert_eq!(back.redirect_uri, "https://a/cb");
        assert_eq!(back.verifier, tx.verifier);
        assert_ne!(tx.state, tx.nonce);
    }

    #[test]
    fn cookie_name_is_per_flow() {
        let name = LoginTransaction::cookie_name(S, "abcdefghijklmnopqrstuvwxyz");
        assert_eq!(name, "__Host-bff-session.tx.abcdefghijklmnop");
    }

    #[test]
    fn rejections() {
        let (tx, header) = sealed_tx(1000);
        let k = ring(KEY_A);
        assert_eq!(
            LoginTransaction::open(&k, S, &Jar::default(), &tx.state, 1000, 600).unwrap_err(),
            TransactionError::Missing
        );
        assert_eq!(
            LoginTransaction::open(&k, S, &jar(&header), "forged-state-value", 1000, 600)
                .unwrap_err(),
            TransactionError::Missing
        );
        // Same flow id (first 16 chars), different state: the cookie opens but the state differs.
        let mut forged = tx.state.clone();
        forged.push('x');
        assert_eq!(
            LoginTransaction::open(&k, S, &jar(&header), &forged, 1000, 600).unwrap_err(),
            TransactionError::StateMismatch
        );
        assert_eq!(
            LoginTransaction::open(&k, S, &jar(&header), &tx.state, 1601, 600).unwrap_err(),
            TransactionError::Expired
        );
        assert_eq!(
            LoginTransaction::open(&ring(KEY_B), S, &jar(&header), &tx.state, 1000, 600)
                .unwrap_err(),
            TransactionError::Invalid
        );
        let name = LoginTransaction::cookie_name(S, &tx.state);
        let garbage = format!("{name}=v1.abc.garbage");
        assert_eq!(
            LoginTransaction::open(&k, S, &jar(&garbage), &tx.state, 1000, 600).unwrap_err(),
            TransactionError::Invalid
        );
    }
}
