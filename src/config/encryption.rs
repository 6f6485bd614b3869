//! `id_token_encryption`: encrypted ID tokens (OIDC Core §10.2), as registered at the IdP.

use super::{Problems, RawSecret};
use crate::oidc::jwe::{
    ContentEncryption, DecryptionKey, IdTokenEncryption, KeyManagement, PrivateKey,
};
use crate::oidc::signing_key::SigningKey;
use serde::Deserialize;
use std::rc::Rc;

/// Where the decryption key is read from, unless a key entry says otherwise.
pub const DEFAULT_ID_TOKEN_KEY_ENV: &str = "BFF_ID_TOKEN_KEY";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdTokenEncryption {
    alg: Option<String>,
    enc: Option<String>,
    keys: Option<Vec<RawDecryptionKey>>,
}

/// A key: `env` or `value` like any secret, and the `kid` it is published under.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecryptionKey {
    env: Option<String>,
    value: Option<String>,
    kid: Option<String>,
}

const FIELD: &str = "id_token_encryption";

pub(super) fn check(
    p: &mut Problems,
    raw: Option<RawIdTokenEncryption>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Rc<IdTokenEncryption>> {
    let raw = raw?;
    let alg = match raw.alg.as_deref() {
        Some(name) => KeyManagement::from_name(name).or_else(|| {
            p.add(
                &format!("{FIELD}.alg"),
                format!(
                    "{name:?} is not one of {}",
                    names(KeyManagement::ALL.map(|a| a.name()))
                ),
            );
            None
        }),
        None => {
            p.add(
                &format!("{FIELD}.alg"),
                format!(
                    "is required: the id_token_encrypted_response_alg registered at the IdP ({})",
                    names(KeyManagement::ALL.map(|a| a.name()))
                ),
            );
            None
        }
    };
    // OIDC Dynamic Client Registration §2: A128CBC-HS256 when only the alg is registered.
    let enc = match raw.enc.as_deref() {
        None => Some(ContentEncryption::A128CbcHs256),
        Some(name) => ContentEncryption::from_name(name).or_else(|| {
            p.add(
                &format!("{FIELD}.enc"),
                format!(
                    "{name:?} is not one of {}",
                    names(ContentEncryption::ALL.map(|e| e.name()))
                ),
            );
            None
        }),
    };
    let raw_keys = raw
        .keys
        .unwrap_or_else(|| vec![RawDecryptionKey::default()]);
    if raw_keys.is_empty() {
        p.add(&format!("{FIELD}.keys"), "needs at least one key");
    }
    let mut keys = Vec::new();
    let mut published = Vec::new();
    for (i, raw_key) in raw_keys.into_iter().enumerate() {
        let field = format!("{FIELD}.keys[{i}]");
        let secret = RawSecret {
            env: raw_key.env,
            value: raw_key.value,
        };
        let secret = if secret.env.is_none() && secret.value.is_none() {
            None // the default variable
        } else {
            Some(secret)
        };
        let Some(text) = p.secret(&field, secret, DEFAULT_ID_TOKEN_KEY_ENV, env) else {
            continue;
        };
        let key = match SigningKey::parse(text.expose(), raw_key.kid.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                p.add(&field, e.to_string());
                continue;
            }
        };
        let Some(private) = key.decryption_key() else {
            p.add(
                &field,
                "is an Ed25519 key; JWE takes RSA (RSA-OAEP) or EC P-256 (ECDH-ES)",
            );
            continue;
        };
        if let Some(alg) = alg {
            let fits = matches!(
                (&private, alg),
                (
                    PrivateKey::Rsa(_),
                    KeyManagement::RsaOaep | KeyManagement::RsaOaep256
                ) | (
                    PrivateKey::P256(_),
                    KeyManagement::EcdhEs
                        | KeyManagement::EcdhEsA128Kw
                        | KeyManagement::EcdhEsA256Kw
                )
            );
            if !fits {
                p.add(
                    &field,
                    format!(
                        "does not serve alg {}: RSA-OAEP* takes an RSA key, ECDH-ES* an EC P-256 key",
                        alg.name()
                    ),
                );
                continue;
            }
            if keys
                .iter()
                .any(|k: &DecryptionKey| k.kid.as_deref() == Some(key.kid()))
            {
                p.add(
                    &field,
                    format!("has the kid {:?} of another key", key.kid()),
                );
                continue;
            }
            published.push(key.published_enc_jwk(alg.name()));
        }
        keys.push(DecryptionKey {
            kid: Some(key.kid().to_string()),
            key: private,
        });
    }
    Some(Rc::new(IdTokenEncryption {
        alg: alg?,
        enc: enc?,
        keys,
        published,
    }))
}

fn names<const N: usize>(all: [&str; N]) -> String {
    all.join(", ")
}
