//! How the filter authenticates itself at the IdP's token and revocation endpoints: with the
//! client secret (`client_secret_basic`, RFC 6749 §2.3.1) or with a key of its own
//! (`private_key_jwt`, RFC 7523 §2.2 and OIDC Core §9: a short-lived JWT signed with it), or
//! by the client certificate the IdP cluster's TLS presents (`tls_client_auth`,
//! `self_signed_tls_client_auth`, RFC 8705 §2: the filter then names itself, and Envoy proves
//! it).
//!
//! Applied when a call is sent ([`ClientAuth::authenticate`]), not when it is built: an
//! assertion must be fresh, and a refresh may be sent a while after it was decided.

use super::idp_request::IdpRequest;
use super::signing_key::{SignError, SigningKey};
use super::token::client_secret_basic;
use crate::random::{self, Random};
use crate::secret::Secret;
use serde_json::{json, Map};
use std::rc::Rc;

/// How long an assertion is valid: long enough for the call's timeout and some clock
/// difference, short enough that a captured one is soon useless (RFC 7523 §3, FAPI 2.0 §5.3.2.1).
pub const ASSERTION_LIFETIME_S: u64 = 60;

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Who an assertion is addressed to (`aud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The issuer identifier: what FAPI 2.0 requires (§5.3.2.1) and most IdPs accept.
    Issuer,
    /// The token endpoint's URL, for IdPs that want it (Microsoft Entra ID).
    TokenEndpoint,
}

/// How the IdP checks the certificate of a mutual-TLS client (RFC 8705 §2.1, §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCertificate {
    /// Issued by a CA the IdP trusts, matched on a registered subject or name.
    Pki,
    /// Registered as it is (in the client's JWK Set).
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    SecretBasic(Secret),
    PrivateKeyJwt {
        key: Rc<SigningKey>,
        audience: Audience,
    },
    /// The certificate is the IdP cluster's (its `transport_socket`), not the filter's.
    MutualTls(TlsCertificate),
}

impl ClientAuth {
    /// The name the IdP's metadata uses (`token_endpoint_auth_methods_supported`).
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
            ClientAuth::MutualTls(TlsCertificate::Pki) => "tls_client_auth",
            ClientAuth::MutualTls(TlsCertificate::SelfSigned) => "self_signed_tls_client_auth",
        }
    }

    /// Whether the calls that authenticate go to the IdP's `mtls_endpoint_aliases` (RFC 8705 §5).
    pub fn is_mutual_tls(&self) -> bool {
        matches!(self, ClientAuth::MutualTls(_))
    }

    /// Adds the client's credentials to a form POST to `endpoint`.
    pub fn authenticate(
        &self,
        request: &mut IdpRequest,
        client_id: &str,
        issuer: &str,
        token_endpoint: &str,
        now: u64,
        rng: &mut dyn Random,
    ) -> Result<(), SignError> {
        match self {
            ClientAuth::SecretBasic(secret) => {
                request
                    .headers
                    .push(("authorization", client_secret_basic(client_id, secret)));
            }
            ClientAuth::PrivateKeyJwt { key, audience } => {
                let aud = match audience {
                    Audience::Issuer => issuer,
                    Audience::TokenEndpoint => token_endpoint,
                };
                let jwt = assertion(key, client_id, aud, now, rng)?;
                add_to_form(
                    request,
                    client_id,
                    &[
                        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                        ("client_assertion", &jwt),
                    ],
                );
            }
            // RFC 8705 §2: the client_id names the client whose certificate TLS showed.
            ClientAuth::MutualTls(_) => add_to_form(request, client_id, &[]),
        }
        Ok(())
    }
}

/// Appends `client_id` (unless the form has it: a pushed authorization request does, and a
/// parameter must appear once) and `pairs` to the request's form.
fn add_to_form(request: &mut IdpRequest, client_id: &str, pairs: &[(&str, &str)]) {
    let body = request.body.get_or_insert_with(String::new);
    let has_client_id = form_urlencoded::parse(body.as_bytes()).any(|(k, _)| k == "client_id");
    let mut form = form_urlencoded::Serializer::for_suffix(std::mem::take(body), 0);
    if !has_client_id {
        form.append_pair("client_id", client_id);
    }
    form.extend_pairs(pairs);
    *body = form.finish();
}

/// A client assertion (RFC 7523 §3): `iss` = `sub` = the client id, `aud`, a random `jti`,
/// `iat` and an `exp` a minute later.
pub fn assertion(
    key: &SigningKey,
    client_id: &str,
    aud: &str,
    now: u64,
    rng: &mut dyn Random,
) -> Result<String, SignError> {
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": random::token(rng, 16)?,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_S,
    });
    let mut header = Map::new();
    header.insert("typ".into(), json!("JWT"));
    key.jwt(header, &claims, true, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::jwks::{Alg, Jwks};
    use crate::oidc::jws;
    use crate::random::CountingRandom;

    const EC: &str = include_str!("../../tests/fixtures/keys/ec-p256.pem");

    fn form_post(body: &str) -> IdpRequest {
        IdpRequest {
            method: "POST",
            url: "https://idp/token".into(),
            path: "/token".into(),
            authority: "idp".into(),
            headers: vec![],
            body: Some(body.into()),
            authenticate: true,
        }
    }

    /// `body` posted as client `client_id` to https://idp.example's token endpoint at
    /// 1,800,000,000.
    fn sent(
        auth: &ClientAuth,
        client_id: &str,
        body: &str,
        rng: &mut CountingRandom,
    ) -> IdpRequest {
        let mut r = form_post(body);
        auth.authenticate(
            &mut r,
            client_id,
            "https://idp.example",
            "https://idp.example/token",
            1_800_000_000,
            rng,
        )
        .unwrap();
        r
    }

    #[test]
    fn a_secret_goes_in_the_basic_header() {
        let auth = ClientAuth::SecretBasic(Secret::new("s3:cr%t"));
        let r = sent(
            &auth,
            "bff",
            "grant_type=refresh_token",
            &mut CountingRandom(1),
        );
        assert_eq!(
            r.headers,
            vec![(
                "authorization",
                client_secret_basic("bff", &Secret::new("s3:cr%t"))
            )]
        );
        assert_eq!(r.body.as_deref(), Some("grant_type=refresh_token"));
    }

    #[test]
    fn a_key_signs_a_fresh_assertion_with_exactly_the_claims_rfc_7523_names() {
        let key = Rc::new(SigningKey::parse(EC, Some("bff-key-1")).unwrap());
        let auth = ClientAuth::PrivateKeyJwt {
            key: Rc::clone(&key),
            audience: Audience::Issuer,
        };
        let mut rng = CountingRandom(9);
        let r = sent(
            &auth,
            "bff client",
            "grant_type=authorization_code&code=c",
            &mut rng,
        );
        assert!(r.headers.is_empty(), "no secret anywhere");
        let form: Vec<(String, String)> =
            form_urlencoded::parse(r.body.as_deref().unwrap().as_bytes())
                .into_owned()
                .collect();
        let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "grant_type",
                "code",
                "client_id",
                "client_assertion_type",
                "client_assertion"
            ]
        );
        assert_eq!(form[2].1, "bff client");
        assert_eq!(form[3].1, CLIENT_ASSERTION_TYPE);
        let jwt = &form[4].1;
        let jwks = Jwks::parse(
            json!({"keys": [key.published_jwk()]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let verified = jws::verify(jwt, &jwks, &[Alg::Es256]).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&verified.payload).unwrap();
        let jti = claims["jti"].as_str().unwrap().to_string();
        assert_eq!(
            claims,
            json!({"iss": "bff client", "sub": "bff client", "aud": "https://idp.example",
                   "jti": jti, "iat": 1_800_000_000u64, "exp": 1_800_000_060u64})
        );
        assert_eq!(jti.len(), 22, "16 random bytes, base64url without padding");
        // Another call, another jti; the token endpoint's URL when asked for.
        let auth = ClientAuth::PrivateKeyJwt {
            key,
            audience: Audience::TokenEndpoint,
        };
        let again = sent(&auth, "bff", "grant_type=refresh_token", &mut rng);
        let second = form_urlencoded::parse(again.body.as_deref().unwrap().as_bytes())
            .find(|(k, _)| k == "client_assertion")
            .unwrap()
            .1
            .into_owned();
        let claims: serde_json::Value =
            serde_json::from_slice(&jws::verify(&second, &jwks, &[Alg::Es256]).unwrap().payload)
                .unwrap();
        assert_eq!(claims["aud"], "https://idp.example/token");
        assert_ne!(claims["jti"], json!(jti));
        // A form that names the client already keeps one client_id.
        let pushed = sent(
            &auth,
            "bff",
            "response_type=code&client_id=bff&state=s",
            &mut rng,
        );
        let body = pushed.body.unwrap();
        let ids = form_urlencoded::parse(body.as_bytes()).filter(|(k, _)| k == "client_id");
        assert_eq!(ids.count(), 1);
    }

    #[test]
    fn a_mutual_tls_client_only_names_itself() {
        for (kind, method) in [
            (TlsCertificate::Pki, "tls_client_auth"),
            (TlsCertificate::SelfSigned, "self_signed_tls_client_auth"),
        ] {
            let auth = ClientAuth::MutualTls(kind);
            assert_eq!(auth.method(), method);
            let mut rng = CountingRandom(1);
            let r = sent(&auth, "bff client", "grant_type=refresh_token", &mut rng);
            assert!(r.headers.is_empty(), "no secret, no assertion");
            assert_eq!(
                r.body.as_deref(),
                Some("grant_type=refresh_token&client_id=bff+client")
            );
            let pushed = sent(&auth, "bff", "client_id=bff&state=s", &mut rng);
            assert_eq!(pushed.body.as_deref(), Some("client_id=bff&state=s"));
            assert_eq!(rng.0, 1, "nothing random");
        }
    }
}
