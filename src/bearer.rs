//! Bearer clients (mobile apps, scripts): Envoy's `jwt_authn` filter, placed before ours,
//! checks the token's signature natively and stores the verified payload in dynamic metadata
//! (`payload_in_metadata`). The filter never trusts the token itself: it decodes the payload
//! from the `Authorization` header for typed claims, and accepts them only if they equal,
//! claim by claim, the payload `jwt_authn` verified (which the host hands over untyped).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// `exp` is checked again here with the leeway `jwt_authn` allows by default (its
/// `clock_skew_seconds`), in case it was configured to let failed tokens through.
const CLOCK_SKEW_S: u64 = 60;

/// Why a bearer token is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// `jwt_authn` put no verified payload in the metadata for this request (no rule for the
    /// path, a failed token let through, or a payload the host cannot hand over: a `null`
    /// claim).
    NotVerified,
    /// The header's token is not a JWT whose payload is a JSON object.
    Malformed,
    /// The header's token is not the one `jwt_authn` verified.
    Mismatch,
    Expired,
}

impl BearerError {
    pub fn message(self) -> &'static str {
        match self {
            BearerError::NotVerified => "the bearer token was not verified by jwt_authn",
            BearerError::Malformed => "the bearer token is not a JWT",
            BearerError::Mismatch => "the bearer token is not the one jwt_authn verified",
            BearerError::Expired => "the bearer token has expired",
        }
    }
}

/// The token of an `Authorization: Bearer` header (RFC 6750 §2.1; the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub fn token_of(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The claims of `token` at `now`, if `verified` (the metadata `jwt_authn` wrote, as the host
/// serializes it) is its payload.
pub fn verified_claims(
    token: &str,
    verified: Option<&[u8]>,
    now: u64,
) -> Result<Map<String, Value>, BearerError> {
    let verified = verified.ok_or(BearerError::NotVerified)?;
    let mut parts = token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err(BearerError::Malformed),
    };
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| BearerError::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| BearerError::Malformed)?;
    if !same_object(&claims, verified) {
        return Err(BearerError::Mismatch);
    }
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if (now as f64) < exp + CLOCK_SKEW_S as f64 => Ok(claims),
        _ => Err(BearerError::Expired),
    }
}

/// Whether the host's serialization `bytes` is `value` (Envoy's `serializeValue`: strings as
/// their bytes, numbers as little-endian f64, booleans as one byte, maps and lists as
/// proxy-wasm pairs; types are not tagged, so each is compared as `value` says it should be).
fn same(value: &Value, bytes: &[u8]) -> bool {
    match value {
        // A string with control characters could be the bytes of a boolean, number or list
        // (`true` is 0x01): such a token is refused rather than guessed at.
        Value::String(s) => !s.chars().any(char::is_control) && bytes == s.as_bytes(),
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|f| bytes == f.to_le_bytes().as_slice()),
        Value::Bool(b) => bytes == [u8::from(*b)],
        Value::Array(items) => pairs(bytes).is_some_and(|pairs| {
            pairs.len() == items.len()
                && items
                    .iter()
                    .zip(&pairs)
                    .all(|(item, (k, v))| v.is_empty() && same(item, k))
        }),
        Value::Object(map) => same_object(map, bytes),
        // The host cannot serialize a null: such a payload never arrives.
        Value::Null => false,
    }
}

/// Maps come in no stable order: each key once, each value equal.
fn same_object(map: &Map<String, Value>, bytes: &[u8]) -> bool {
    let Some(pairs) = pairs(bytes) else {
        return false;
    };
    pairs.len() == map.len()
        && pairs.iter().enumerate().all(|(i, (k, v))| {
            let unique = !pairs.iter().take(i).any(|(earlier, _)| earlier == k);
            let value = std::str::from_utf8(k).ok().and_then(|k| map.get(k));
            unique && value.is_some_and(|value| same(value, v))
        })
}

/// proxy-wasm pairs: a u32 count, a (key length, value length) u32 pair per entry, then each
/// key and value followed by a NUL; all little-endian. `None` if malformed.
fn pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    // Each entry takes at least 10 bytes: no count larger than that is believed.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let key = bytes.get(data..data.checked_add(key_len)?)?;
        data += key_len;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data += value_len;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        out.push((key, value));
    }
    (data == bytes.len()).then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The host's serialization of a JSON value, as measured in Envoy 1.40 (V8).
    pub fn serialize(value: &Value) -> Vec<u8> {
        fn pairs(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
            let mut out = (entries.len() as u32).to_le_bytes().to_vec();
            for (k, v) in &entries {
                out.extend((k.len() as u32).to_le_bytes());
                out.extend((v.len() as u32).to_le_bytes());
            }
            for (k, v) in entries {
                out.extend(k);
                out.push(0);
                out.extend(v);
                out.push(0);
            }
            out
        }
        match value {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Number(n) => n.as_f64().unwrap().to_le_bytes().to_vec(),
            Value::Bool(b) => vec![u8::from(*b)],
            Value::Array(items) => pairs(items.iter().map(|i| (serialize(i), vec![])).collect()),
            // Reversed: the host gives no stable order.
            Value::Object(map) => pairs(
                map.iter()
                    .rev()
                    .map(|(k, v)| (k.as_bytes().to_vec(), serialize(v)))
                    .collect(),
            ),
            Value::Null => panic!("the host cannot serialize null"),
        }
    }

    fn jwt(payload: &Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload.to_string())
        )
    }

    fn payload() -> Value {
        json!({"iss": "https://idp.test", "sub": "app-1", "exp": 2000, "big": 12345678901u64,
               "groups": ["admin", "dev"], "nested": {"a": "x", "b": 2.5}, "flag": true,
               "mixed": ["a", 1, false], "empty": "", "none": {}})
    }

    #[test]
    fn the_metadata_hex_measured_in_envoy_decodes() {
        // `groups` and `nested` exactly as Envoy 1.40 handed them to a probe filter.
        let groups = hex("020000000500000000000000030000000000000061646d696e00006465760000");
        assert!(same(&json!(["admin", "dev"]), &groups));
        let nested = hex("0200000001000000080000000100000001000000620000000000000000400061007800");
        assert!(same(&json!({"a": "x", "b": 2}), &nested));
        assert!(same(&json!(12345678901u64), &hex("0000a8e1e0fe0642")));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_verified_payload_gives_the_tokens_claims() {
        let p = payload();
        let claims = verified_claims(&jwt(&p), Some(&serialize(&p)), 1000).unwrap();
        assert_eq!(Value::Object(claims), p);
    }

    #[test]
    fn a_token_other_than_the_verified_one_is_refused() {
        let verified = serialize(&payload());
        let forged = |change: &dyn Fn(&mut Value)| {
            let mut p = payload();
            change(&mut p);
            verified_claims(&jwt(&p), Some(&verified), 1000)
        };
        let cases: [&dyn Fn(&mut Value); 8] = [
            &|p| p["sub"] = json!("admin"),
            &|p| p["groups"] = json!(["admin", "dev", "root"]),
            &|p| p["groups"] = json!(["dev", "admin"]),
            &|p| p["nested"]["b"] = json!(3),
            &|p| p["flag"] = json!(false),
            &|p| p["extra"] = json!("x"),
            &|p| {
                p.as_object_mut().unwrap().remove("big");
            },
            // Same bytes, another type: the string "\x01" is not `true`.
            &|p| p["flag"] = json!("\u{1}"),
        ];
        for (i, change) in cases.iter().enumerate() {
            assert_eq!(forged(change), Err(BearerError::Mismatch), "case {i}");
        }
    }

    #[test]
    fn no_metadata_garbage_or_expiry_is_refused() {
        let p = payload();
        let good = serialize(&p);
        assert_eq!(
            verified_claims(&jwt(&p), None, 1000),
            Err(BearerError::NotVerified)
        );
        for token in ["abc", "a.b", "a.b.c.d", "a.!!!.c", "a.bnVsbA.c"] {
            assert_eq!(
                verified_claims(token, Some(&good), 1000),
                Err(BearerError::Malformed),
                "{token}"
            );
        }
        assert_eq!(
            verified_claims(&jwt(&p), Some(&good), 2000 + CLOCK_SKEW_S),
            Err(BearerError::Expired)
        );
        let mut no_exp = payload();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verified_claims(&jwt(&no_exp), Some(&serialize(&no_exp)), 1000),
            Err(BearerError::Expired)
        );
        // Truncated, padded or lying about counts and lengths: never a panic, never a match.
        for cut in 0..good.len() {
            assert!(verified_claims(&jwt(&p), Some(&good[..cut]), 1000).is_err());
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(verified_claims(&jwt(&p), Some(&longer), 1000).is_err());
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(verified_claims(&jwt(&p), Some(&huge), 1000).is_err());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(token_of("Bearer abc"), Some("abc"));
        assert_eq!(token_of("bearer  abc "), Some("abc"));
        assert_eq!(token_of("Basic abc"), None);
        assert_eq!(token_of("Bearer "), None);
        assert_eq!(token_of("Bearer"), None);
    }
}
