//! The ID token a session keeps, for the user's claims and for `id_token_hint` at logout.
//!
//! Kept as the bytes of its three parts, a quarter fewer than their base64url: the ID token
//! is most of the session cookie, and every byte of the cookie is paid again whenever a
//! session that is not in the cache is opened (base64, keystream, Poly1305; bench/README.md,
//! "The cost of a cache miss"). The claims are then read without a base64 step, and the
//! compact form is rebuilt only for a logout. A token whose parts are not canonical unpadded
//! base64url (which would not come back byte for byte) is kept as the text it came as.

use crate::secret::Secret;
use base64_simd::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub enum KeptIdToken {
    /// Header, payload and signature decoded, one after the other: the payload starts at
    /// `payload_at` and the signature at `signature_at`.
    Parts {
        bytes: Vec<u8>,
        payload_at: usize,
        signature_at: usize,
    },
    /// The compact form as it came (not three canonical base64url parts).
    Text(Secret),
}

impl fmt::Debug for KeptIdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeptIdToken([redacted])")
    }
}

/// `part` decoded, if it is canonical unpadded base64url: the decoder (the cookie's too)
/// refuses padding and non-zero spare bits, so what it decodes encodes back exactly.
fn canonical(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode_to_vec(part).ok()
}

impl KeptIdToken {
    /// Keeps a (verified) ID token in its compact serialization.
    pub fn new(compact: &str) -> KeptIdToken {
        let mut parts = compact.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return KeptIdToken::Text(Secret::new(compact));
        };
        match (canonical(h), canonical(p), canonical(s)) {
            (Some(header), Some(payload), Some(signature)) => {
                let payload_at = header.len();
                let signature_at = payload_at + payload.len();
                let mut bytes = header;
                bytes.extend_from_slice(&payload);
                bytes.extend_from_slice(&signature);
                KeptIdToken::Parts {
                    bytes,
                    payload_at,
                    signature_at,
                }
            }
            _ => KeptIdToken::Text(Secret::new(compact)),
        }
    }

    /// The token as the IdP sent it (for `id_token_hint`).
    pub fn compact(&self) -> Secret {
        match self {
            KeptIdToken::Text(text) => text.clone(),
            KeptIdToken::Parts {
                bytes,
                payload_at,
                signature_at,
            } => {
                let part = |from: usize, to: usize| {
                    URL_SAFE_NO_PAD.encode_to_string(bytes.get(from..to).unwrap_or_default())
                };
                Secret::new(format!(
                    "{}.{}.{}",
                    part(0, *payload_at),
                    part(*payload_at, *signature_at),
                    part(*signature_at, bytes.len())
                ))
            }
        }
    }

    /// The payload (the claims' JSON).
    pub fn payload(&self) -> Option<Cow<'_, [u8]>> {
        match self {
            KeptIdToken::Parts {
                bytes,
                payload_at,
                signature_at,
            } => bytes.get(*payload_at..*signature_at).map(Cow::Borrowed),
            KeptIdToken::Text(text) => text
                .expose()
                .split('.')
                .nth(1)
                .and_then(|p| URL_SAFE_NO_PAD.decode_to_vec(p).ok())
                .map(Cow::Owned),
        }
    }
}

/// The JSON form sessions had before (`"i": "<compact>"`).
impl<'de> Deserialize<'de> for KeptIdToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let compact = Cow::<'de, str>::deserialize(d)?;
        Ok(KeptIdToken::new(&compact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jws_is_kept_as_bytes_and_comes_back_exactly() {
        let compact = crate::oidc::id_token::test_signer::sign(
            &serde_json::json!({"sub": "alice", "name": "Alice"}),
        );
        let kept = KeptIdToken::new(&compact);
        let KeptIdToken::Parts { bytes, .. } = &kept else {
            panic!("kept as text")
        };
        assert!(bytes.len() * 4 <= compact.len() * 3 + 4, "a quarter fewer");
        assert_eq!(kept.compact().expose(), compact);
        let claims: serde_json::Value = serde_json::from_slice(&kept.payload().unwrap()).unwrap();
        assert_eq!(claims["name"], "Alice");
        assert_eq!(format!("{kept:?}"), "KeptIdToken([redacted])");
    }

    #[test]
    fn anything_else_is_kept_as_text() {
        // e31: a spare bit set (decodes leniently to what e30 does, but not back to e31); A=:
        // padding; e+0: not the url-safe alphabet; A alone: no whole byte.
        for odd in [
            "",
            "x",
            "a.b",
            "a.b.c.d",
            "e30.e31.AA",
            "e30.e30.A=",
            "e30.e+0.AA",
            "ä.e30.AA",
            "e30.e30.A",
        ] {
            let kept = KeptIdToken::new(odd);
            assert_eq!(kept, KeptIdToken::Text(Secret::new(odd)), "{odd:?}");
            assert_eq!(kept.compact().expose(), odd);
        }
        assert_eq!(
            KeptIdToken::new("e30.e30.A").payload().as_deref(),
            Some(&b"{}"[..]),
            "the text form's payload, decoded as before"
        );
        let parts = KeptIdToken::new("e30.e30.AA");
        assert!(matches!(parts, KeptIdToken::Parts { .. }));
        assert_eq!(parts.payload().as_deref(), Some(&b"{}"[..]));
        assert_eq!(parts.compact().expose(), "e30.e30.AA");
    }
}
