//! The session cookie's plaintext: a format byte, then the fields in postcard (a compact
//! binary serde format: lengths as varints, no field names).
//!
//! Opening a session that is not in the cache pays for every byte: postcard reads the fields
//! at about a fifth of what the JSON this replaced cost (bench/README.md, "The cost of a cache
//! miss"), and the cookie is some 80 bytes shorter (the ID token kept as its parts' bytes,
//! `kept_id_token`, takes a fifth more off). Cookies sealed as JSON before (their
//! plaintext starts with `{`) still open, so an upgrade logs nobody out; they are written
//! anew in this form the next time the session is. A new field needs a new format byte:
//! postcard does not name fields.

use super::contents::Session;
use super::kept_id_token::KeptIdToken;
use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The first byte of a postcard session (JSON's is always `{`). Format 1 (the ID token as
/// text) was written only by commits of 2026-12-02 before this one; such a cookie does not
/// open here (the user logs in again).
const POSTCARD: u8 = 2;

/// Bytes as postcard's byte string (a length, then the bytes), borrowed both ways.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(d).map(Bytes)
    }
}

/// The ID token on the wire: its parts' bytes with where each starts, or its text.
#[derive(Serialize, Deserialize)]
enum IdTokenField<'a> {
    Parts {
        #[serde(borrow)]
        bytes: Bytes<'a>,
        payload_at: u32,
        signature_at: u32,
    },
    Text(&'a str),
}

impl<'a> IdTokenField<'a> {
    fn of(t: &'a KeptIdToken) -> Option<IdTokenField<'a>> {
        Some(match t {
            KeptIdToken::Parts {
                bytes,
                payload_at,
                signature_at,
            } => IdTokenField::Parts {
                bytes: Bytes(bytes),
                payload_at: u32::try_from(*payload_at).ok()?,
                signature_at: u32::try_from(*signature_at).ok()?,
            },
            KeptIdToken::Text(text) => IdTokenField::Text(text.expose()),
        })
    }

    fn kept(self) -> Option<KeptIdToken> {
        Some(match self {
            IdTokenField::Parts {
                bytes: Bytes(bytes),
                payload_at,
                signature_at,
            } => {
                let (payload_at, signature_at) = (payload_at as usize, signature_at as usize);
                if payload_at > signature_at || signature_at > bytes.len() {
                    return None;
                }
                KeptIdToken::Parts {
                    bytes: bytes.to_vec(),
                    payload_at,
                    signature_at,
                }
            }
            IdTokenField::Text(text) => KeptIdToken::Text(Secret::new(text)),
        })
    }
}

/// The fields in their order on the wire, borrowed: no copy while encoding, and decoding
/// copies each string once, into the session.
#[derive(Serialize, Deserialize)]
struct Fields<'a> {
    access_token: &'a str,
    access_expires_at: u64,
    refresh_token: Option<&'a str>,
    subject: &'a str,
    created: u64,
    last_seen: u64,
    #[serde(borrow)]
    id_token: Option<IdTokenField<'a>>,
    sid: &'a str,
    idp_sid: Option<&'a str>,
}

pub fn encode(s: &Session) -> Option<Vec<u8>> {
    let id_token = match &s.id_token {
        Some(t) => Some(IdTokenField::of(t)?),
        None => None,
    };
    let fields = Fields {
        access_token: s.access_token.expose(),
        access_expires_at: s.access_expires_at,
        refresh_token: s.refresh_token.as_ref().map(Secret::expose),
        subject: &s.subject,
        created: s.created,
        last_seen: s.last_seen,
        id_token,
        sid: &s.sid,
        idp_sid: s.idp_sid.as_deref(),
    };
    postcard::to_extend(&fields, vec![POSTCARD]).ok()
}

/// The session in an opened cookie's plaintext, in either form; `None` when it is neither.
pub fn decode(plain: &[u8]) -> Option<Session> {
    match plain.split_first()? {
        (&POSTCARD, rest) => {
            let f: Fields = postcard::from_bytes(rest).ok()?;
            let id_token = match f.id_token {
                Some(field) => Some(field.kept()?),
                None => None,
            };
            Some(Session {
                access_token: Secret::new(f.access_token),
                access_expires_at: f.access_expires_at,
                refresh_token: f.refresh_token.map(Secret::new),
                subject: f.subject.into(),
                created: f.created,
                last_seen: f.last_seen,
                id_token,
                sid: f.sid.into(),
                idp_sid: f.idp_sid.map(Into::into),
            })
        }
        (b'{', _) => serde_json::from_slice(plain).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Session {
        Session {
            access_token: Secret::new("at-\u{e9}"),
            access_expires_at: u64::MAX,
            refresh_token: Some(Secret::new("rt")),
            subject: "alice".into(),
            created: 1000,
            last_seen: 1001,
            id_token: Some(KeptIdToken::new("e30.eyJzdWIiOiJhbGljZSJ9.c2ln")),
            sid: "sid".into(),
            idp_sid: Some("idp-sid".into()),
        }
    }

    #[test]
    fn round_trips_with_and_without_the_optional_fields() {
        let mut s = full();
        assert!(matches!(s.id_token, Some(KeptIdToken::Parts { .. })));
        assert_eq!(decode(&encode(&s).unwrap()), Some(s.clone()));
        s.id_token = Some(KeptIdToken::new("not a jws"));
        assert_eq!(decode(&encode(&s).unwrap()), Some(s.clone()));
        s.refresh_token = None;
        s.id_token = None;
        s.idp_sid = None;
        s.sid = String::new();
        assert_eq!(decode(&encode(&s).unwrap()), Some(s));
    }

    #[test]
    fn a_json_session_sealed_before_still_opens() {
        let json = br#"{"a":"at-\u00e9","x":18446744073709551615,"r":"rt","s":"alice","c":1000,"l":1001,"i":"e30.eyJzdWIiOiJhbGljZSJ9.c2ln","d":"sid","p":"idp-sid"}"#;
        assert_eq!(decode(json), Some(full()));
        assert_eq!(decode(br#"{"s":"x"}"#), None, "fields missing");
    }

    #[test]
    fn anything_else_is_no_session() {
        let good = encode(&full()).unwrap();
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut bad_utf8 = good.clone();
        let at = bad_utf8.iter().position(|&b| b == b'a').unwrap();
        bad_utf8[at] = 0xff;
        assert_eq!(decode(&bad_utf8), None);
        for junk in [
            &b""[..],
            b"\x00",
            b"\x01abc",
            b"[1]",
            b"\x02\xff\xff\xff\xff\xff\xff",
        ] {
            assert_eq!(decode(junk), None, "{junk:?}");
        }
    }
}
