//! Renewing the access token with the refresh token before it expires (RFC 6749 §6, OIDC
//! Core §12): build the request, read the answer into the outcome every request of the
//! session will act on.

use crate::config::Config;
use crate::ctx::Ctx;
use crate::oidc::discovery::Provider;
use crate::oidc::id_token::{self, Binding};
use crate::oidc::idp_request::{IdpAnswer, IdpRequest};
use crate::oidc::token::{self, TokenError};
use crate::refresh::Outcome;
use crate::session::contents::{Cold, ColdFields};
use crate::session::kept_id_token::KeptIdToken;
use crate::session::Session;

/// The refresh-token grant for this session, if it has a refresh token.
pub fn refresh_request(
    config: &Config,
    provider: &Provider,
    session: &Session,
) -> Option<IdpRequest> {
    let cold = session.cold(&config.keys, &config.cookie.name).ok()?;
    let refresh_token = cold.refresh_token.as_ref()?;
    Some(IdpRequest::client_post(
        &provider.token_endpoint,
        config.idp_authority_for(&provider.token_endpoint),
        token::refresh_token_body(refresh_token, &config.resources),
    ))
}

/// What the token endpoint's answer means for the session.
pub fn finish_refresh(
    ctx: &mut Ctx,
    provider: &Provider,
    session: &Session,
    answer: &IdpAnswer,
) -> Outcome {
    let dpop = ctx.config.dpop.is_some();
    let tokens = match token::parse_for(answer.status, &answer.body, dpop) {
        Ok(tokens) => tokens,
        // invalid_grant while the access token is still good: another replica most likely
        // rotated the refresh token first. The token goes on until it expires (issue 18).
        Err(TokenError::Refused { error, .. })
            if error == "invalid_grant" && ctx.now < session.access_expires_at =>
        {
            return Outcome::Superseded {
                until: session.access_expires_at,
            }
        }
        // invalid_grant and its kin: the refresh token is dead, and so is the session.
        Err(TokenError::Refused { .. }) => return Outcome::Ended,
        Err(_) => return Outcome::Unavailable,
    };
    // The caller had it open to make the request; a second part that does not open now
    // cannot be refreshed.
    let Ok(cold) = session.cold(&ctx.config.keys, &ctx.config.cookie.name) else {
        return Outcome::Ended;
    };
    // Without a new one the old refresh token stays valid (RFC 6749 §6: rotation is the
    // IdP's choice).
    let mut renewed_cold = ColdFields {
        refresh_token: tokens.refresh_token.or_else(|| cold.refresh_token.clone()),
        id_token: cold.id_token.clone(),
    };
    if let Some(id_token) = &tokens.id_token {
        let checked = id_token::open(ctx, id_token.expose()).and_then(|signed| {
            id_token::check(ctx, provider, &signed, Binding::Subject(&session.subject))
                .map(|_| signed)
        });
        match checked {
            Ok(signed) => renewed_cold.id_token = Some(KeptIdToken::new(&signed)),
            // Keys rotated since we last read them (or none read yet): the access token is
            // still good (it came straight from the token endpoint); keep the claims we have.
            Err(e) if e.is_unknown_key() => {}
            // Anything else is wrong enough to end the session.
            Err(_) => return Outcome::Ended,
        }
    }
    let renewed = Session {
        access_token: tokens.access_token,
        access_expires_at: ctx.now.saturating_add(
            tokens
                .expires_in
                .unwrap_or(token::DEFAULT_ACCESS_TOKEN_LIFETIME_S),
        ),
        subject: session.subject.clone(),
        created: session.created,
        last_seen: ctx.now,
        sid: session.sid.clone(),
        idp_sid: session.idp_sid.clone(),
        cold: Cold::Open(renewed_cold),
    };
    match renewed.seal(&ctx.config.keys, &ctx.config.cookie.name, ctx.rng) {
        Ok(sealed) => Outcome::Renewed(sealed),
        Err(_) => Outcome::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_from, minimal_json};
    use crate::oidc::discovery::test_provider;
    use crate::oidc::id_token::test_signer;
    use crate::random::CountingRandom;
    use crate::secret::Secret;
    use serde_json::json;

    fn session() -> Session {
        Session {
            access_token: Secret::new("old-at"),
            access_expires_at: 1030,
            subject: "alice".into(),
            created: 500,
            last_seen: 900,
            sid: "sid-1".into(),
            idp_sid: None,
            cold: Cold::Open(ColdFields {
                refresh_token: Some(Secret::new("old-rt")),
                id_token: Some(KeptIdToken::new(&test_signer::sign(
                    &json!({"sub": "alice", "name": "Alice"}),
                ))),
            }),
        }
    }

    fn run(status: Option<u16>, body: serde_json::Value) -> Outcome {
        run_at(1000, status, body)
    }

    fn run_at(now: u64, status: Option<u16>, body: serde_json::Value) -> Outcome {
        run_with(&config_from(minimal_json()), now, status, body)
    }

    fn run_with(c: &Config, now: u64, status: Option<u16>, body: serde_json::Value) -> Outcome {
        let (provider, keys) = (test_provider(), test_signer::jwks());
        let mut ctx = Ctx {
            config: c,
            provider: Some(&provider),
            keys: Some(&keys),
            now,
            rng: &mut CountingRandom(1),
        };
        let answer = IdpAnswer {
            status,
            body: body.to_string().into_bytes(),
            dpop_nonce: None,
        };
        finish_refresh(&mut ctx, &provider, &session(), &answer)
    }

    fn opened(outcome: Outcome) -> Session {
        let Outcome::Renewed(sealed) = outcome else {
            panic!("{outcome:?}")
        };
        let c = config_from(minimal_json());
        Session::open_sealed(&c.keys, &c.cookie.name, sealed.as_bytes()).unwrap()
    }

    fn id_token(sub: &str) -> String {
        test_signer::sign(
            &json!({"iss": "http://127.0.0.1:9000", "aud": "bff", "sub": sub, "exp": 2000, "iat": 1000, "name": "Alice Liddell"}),
        )
    }

    #[test]
    fn the_request_is_a_refresh_grant() {
        let c = config_from(minimal_json());
        let r = refresh_request(&c, &test_provider(), &session()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/token");
        assert_eq!(
            r.body.as_deref(),
            Some("grant_type=refresh_token&refresh_token=old-rt")
        );
        let mut no_rt = session();
        no_rt.cold_mut().refresh_token = None;
        assert!(refresh_request(&c, &test_provider(), &no_rt).is_none());
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_old_one() {
        let s = opened(run(
            Some(200),
            json!({"access_token": "new-at", "token_type": "Bearer", "expires_in": 300, "refresh_token": "new-rt", "id_token": id_token("alice")}),
        ));
        assert_eq!(s.access_token.expose(), "new-at");
        assert_eq!(s.access_expires_at, 1300);
        assert_eq!(
            s.opened().refresh_token.as_ref().unwrap().expose(),
            "new-rt"
        );
        assert_eq!((s.created, s.last_seen), (500, 1000));
        assert_eq!(
            s.opened().claims().get("name"),
            Some(&json!("Alice Liddell"))
        );
        assert_eq!(s.sid, "sid-1");
    }

    #[test]
    fn without_rotation_the_old_refresh_token_stays() {
        let s = opened(run(
            Some(200),
            json!({"access_token": "new-at", "token_type": "Bearer"}),
        ));
        assert_eq!(
            s.opened().refresh_token.as_ref().unwrap().expose(),
            "old-rt"
        );
        assert_eq!(s.opened().claims().get("name"), Some(&json!("Alice")));
    }

    #[test]
    fn refusal_ends_the_session_and_faults_do_not() {
        // The access token (valid until 1030) has expired: the session ends.
        assert_eq!(
            run_at(1030, Some(400), json!({"error": "invalid_grant"})),
            Outcome::Ended
        );
        // Still valid: another replica rotated the refresh token first; go on until 1030.
        assert_eq!(
            run(Some(400), json!({"error": "invalid_grant"})),
            Outcome::Superseded { until: 1030 }
        );
        assert_eq!(
            run(Some(401), json!({"error": "invalid_client"})),
            Outcome::Ended
        );
        assert_eq!(run(None, json!(null)), Outcome::Unavailable);
        assert_eq!(run(Some(503), json!(null)), Outcome::Unavailable);
        assert_eq!(run(Some(200), json!("garbage")), Outcome::Unavailable);
        // A refreshed ID token for another user is an attack, not a fault.
        assert_eq!(
            run(
                Some(200),
                json!({"access_token": "a", "token_type": "Bearer", "id_token": id_token("mallory")})
            ),
            Outcome::Ended
        );
    }

    #[test]
    fn with_encryption_a_refreshed_id_token_is_decrypted_and_a_plain_one_ends_the_session() {
        use rsa::pkcs8::DecodePrivateKey;
        const PEM: &str = include_str!("../../tests/fixtures/keys/rsa-2048.pem");
        let mut v = minimal_json();
        v["id_token_encryption"] =
            json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "keys": [{"value": PEM, "kid": "e"}]});
        let c = config_from(v);
        let public = rsa::RsaPrivateKey::from_pkcs8_pem(PEM)
            .unwrap()
            .to_public_key();
        let signed = id_token("alice");
        let jwe = crate::oidc::jwe::test_encrypt::rsa_oaep_256_a256gcm(&signed, &public, "e");
        let renewed = run_with(
            &c,
            1000,
            Some(200),
            json!({"access_token": "new-at", "token_type": "Bearer", "id_token": jwe}),
        );
        let Outcome::Renewed(sealed) = renewed else {
            panic!("{renewed:?}")
        };
        let s = Session::open_sealed(&c.keys, &c.cookie.name, sealed.as_bytes()).unwrap();
        assert_eq!(
            s.opened().id_token.as_ref().unwrap().compact().expose(),
            signed
        );
        // An IdP that stops encrypting is a downgrade: the session ends.
        assert_eq!(
            run_with(
                &c,
                1000,
                Some(200),
                json!({"access_token": "a", "token_type": "Bearer", "id_token": signed})
            ),
            Outcome::Ended
        );
    }
}
