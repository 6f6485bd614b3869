//! Proof Key for Code Exchange, S256 only (RFC 7636).

use crate::random::{token, Random, RandomUnavailable};
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The secret half, kept in the sealed login transaction. Not `Clone`: it is used once.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PkceVerifier(Secret);

impl PkceVerifier {
    /// 32 random bytes give the 43-character verifier RFC 7636 §4.1 recommends.
    pub fn generate(rng: &mut dyn Random) -> Result<Self, RandomUnavailable> {
        Ok(PkceVerifier(Secret::new(token(rng, 32)?)))
    }

    /// `BASE64URL(SHA256(ASCII(code_verifier)))`, RFC 7636 §4.2.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.expose().as_bytes()))
    }

    pub fn secret(&self) -> &Secret {
        &self.0
    }

    #[cfg(test)]
    pub fn from_str_for_test(s: &str) -> Self {
        PkceVerifier(Secret::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::CountingRandom;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = PkceVerifier::from_str_for_test("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn generated_verifiers_have_the_recommended_shape() {
        let v = PkceVerifier::generate(&mut CountingRandom(7)).unwrap();
        let s = v.secret().expose();
        assert_eq!(s.len(), 43);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(format!("{v:?}"), "PkceVerifier([redacted])");
    }
}
