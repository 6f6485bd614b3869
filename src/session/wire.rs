//! The session cookie's plaintext: a format byte, then the fields in postcard (a compact
//! binary serde format: lengths as varints, no field names).
//!
//! Opening a session that is not in the cache pays for every byte: postcard reads the fields
//! at about a fifth of what the JSON this replaced cost (bench/README.md, "The cost of a cache
//! miss"), and the cookie is some 80 bytes shorter (the ID token kept as its parts' bytes,
//! `kept_id_token`, takes a fifth more off).
//!
//! Written as a pair (format 3, `seal::KeyRing::seal_pair`): what every request needs (the
//! access token, the times, the ids) in the first part; the refresh token and the ID token in
//! the second, which only a refresh, a logout, the session endpoint and claim headers or rules
//! decrypt and decode. Opening a session not in the cache then decrypts and decodes only the
//! first part (the tag is still checked over both). Cookies sealed whole (format 2) or as
//! JSON before (plaintext starting with `{`) still open, so an upgrade logs nobody out; they
//! are written anew as a pair the next time the session is. A new field needs a new format
//! byte: postcard does not name fields.

use super::contents::{Cold, ColdFields, Session};
use super::kept_id_token::KeptIdToken;
use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::rc::Rc;

/// The first byte of a postcard session sealed whole (JSON's is always `{`). Format 1 (the
/// ID token as text) was written only by commits of 2026-12-02 before this one; such a
/// cookie does not open here (the user logs in again). Format 2 is still read.
const POSTCARD: u8 = 2;

/// The first byte of each part of a pair (`seal::KeyRing::seal_pair`), the form written now.
const PAIR: u8 = 3;

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

/// The fields of a session sealed whole (format 2, written before pairs), in their order on
/// the wire, borrowed: decoding copies each string once, into the session.
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

/// The first part of a pair: what every request needs.
#[derive(Serialize, Deserialize)]
struct HotFields<'a> {
    access_token: &'a str,
    access_expires_at: u64,
    has_refresh_token: bool,
    subject: &'a str,
    created: u64,
    last_seen: u64,
    sid: &'a str,
    idp_sid: Option<&'a str>,
}

/// The second part of a pair: what only a refresh, a logout and the claims need.
#[derive(Serialize, Deserialize)]
struct ColdWire<'a> {
    refresh_token: Option<&'a str>,
    #[serde(borrow)]
    id_token: Option<IdTokenField<'a>>,
}

/// The JSON form sessions had before format 2.
#[derive(Deserialize)]
struct Json {
    #[serde(rename = "a")]
    access_token: Secret,
    #[serde(rename = "x")]
    access_expires_at: u64,
    #[serde(rename = "r", default)]
    refresh_token: Option<Secret>,
    #[serde(rename = "s")]
    subject: String,
    #[serde(rename = "c")]
    created: u64,
    #[serde(rename = "l", default)]
    last_seen: u64,
    #[serde(rename = "i", default)]
    id_token: Option<KeptIdToken>,
    #[serde(rename = "d", default)]
    sid: String,
    #[serde(rename = "p", default)]
    idp_sid: Option<String>,
}

/// A session sealed whole, as format 2 wrote it (tests make such cookies).
#[cfg(test)]
pub fn encode(s: &Session, cold: &ColdFields) -> Option<Vec<u8>> {
    let id_token = match &cold.id_token {
        Some(t) => Some(IdTokenField::of(t)?),
        None => None,
    };
    let fields = Fields {
        access_token: s.access_token.expose(),
        access_expires_at: s.access_expires_at,
        refresh_token: cold.refresh_token.as_ref().map(Secret::expose),
        subject: &s.subject,
        created: s.created,
        last_seen: s.last_seen,
        id_token,
        sid: &s.sid,
        idp_sid: s.idp_sid.as_deref(),
    };
    postcard::to_extend(&fields, vec![POSTCARD]).ok()
}

/// The plaintexts of a pair: the session's first part (with whether `cold` has a refresh
/// token) and `cold`.
pub fn encode_pair(s: &Session, cold: &ColdFields) -> Option<(Vec<u8>, Vec<u8>)> {
    let hot = HotFields {
        access_token: s.access_token.expose(),
        access_expires_at: s.access_expires_at,
        has_refresh_token: cold.refresh_token.is_some(),
        subject: &s.subject,
        created: s.created,
        last_seen: s.last_seen,
        sid: &s.sid,
        idp_sid: s.idp_sid.as_deref(),
    };
    let id_token = match &cold.id_token {
        Some(t) => Some(IdTokenField::of(t)?),
        None => None,
    };
    let cold = ColdWire {
        refresh_token: cold.refresh_token.as_ref().map(Secret::expose),
        id_token,
    };
    Some((
        postcard::to_extend(&hot, vec![PAIR]).ok()?,
        postcard::to_extend(&cold, vec![PAIR]).ok()?,
    ))
}

/// The session in a value sealed whole, in either form; `None` when it is neither.
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
                subject: f.subject.into(),
                created: f.created,
                last_seen: f.last_seen,
                sid: f.sid.into(),
                idp_sid: f.idp_sid.map(Into::into),
                cold: Cold::Open(ColdFields {
                    refresh_token: f.refresh_token.map(Secret::new),
                    id_token,
                }),
            })
        }
        (b'{', _) => {
            let j: Json = serde_json::from_slice(plain).ok()?;
            Some(Session {
                access_token: j.access_token,
                access_expires_at: j.access_expires_at,
                subject: j.subject,
                created: j.created,
                last_seen: j.last_seen,
                sid: j.sid,
                idp_sid: j.idp_sid,
                cold: Cold::Open(ColdFields {
                    refresh_token: j.refresh_token,
                    id_token: j.id_token,
                }),
            })
        }
        _ => None,
    }
}

/// The session in a pair's first plaintext; its second part stays sealed in `cookie` (the
/// whole value) until asked for.
pub fn decode_hot(plain: &[u8], cookie: Rc<[u8]>) -> Option<Session> {
    with_hot(plain, |has_refresh_token| {
        Cold::sealed(cookie, has_refresh_token)
    })
}

/// The session in both plaintexts of a pair.
pub fn decode_pair(first: &[u8], second: &[u8]) -> Option<Session> {
    let cold = decode_cold(second)?;
    with_hot(first, |_| Cold::Open(cold))
}

/// The session in a pair's first plaintext, with what `cold` makes of whether it has a
/// refresh token.
fn with_hot(plain: &[u8], cold: impl FnOnce(bool) -> Cold) -> Option<Session> {
    let (&PAIR, rest) = plain.split_first()? else {
        return None;
    };
    let f: HotFields = postcard::from_bytes(rest).ok()?;
    Some(Session {
        access_token: Secret::new(f.access_token),
        access_expires_at: f.access_expires_at,
        subject: f.subject.into(),
        created: f.created,
        last_seen: f.last_seen,
        sid: f.sid.into(),
        idp_sid: f.idp_sid.map(Into::into),
        cold: cold(f.has_refresh_token),
    })
}

/// The fields in a pair's second plaintext.
pub fn decode_cold(plain: &[u8]) -> Option<ColdFields> {
    let (&PAIR, rest) = plain.split_first()? else {
        return None;
    };
    let f: ColdWire = postcard::from_bytes(rest).ok()?;
    let id_token = match f.id_token {
        Some(field) => Some(field.kept()?),
        None => None,
    };
    Some(ColdFields {
        refresh_token: f.refresh_token.map(Secret::new),
        id_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Session {
        Session {
            access_token: Secret::new("at-\u{e9}"),
            access_expires_at: u64::MAX,
            subject: "alice".into(),
            created: 1000,
            last_seen: 1001,
            sid: "sid".into(),
            idp_sid: Some("idp-sid".into()),
            cold: Cold::Open(ColdFields {
                refresh_token: Some(Secret::new("rt")),
                id_token: Some(KeptIdToken::new("e30.eyJzdWIiOiJhbGljZSJ9.c2ln")),
            }),
        }
    }

    fn cold(s: &Session) -> ColdFields {
        s.opened().clone()
    }

    /// What the first part of `s` opens to: `s` with its cold fields still sealed in `cookie`.
    fn hot_of(s: &Session, cookie: &Rc<[u8]>) -> Session {
        Session {
            cold: Cold::sealed(Rc::clone(cookie), s.has_refresh_token()),
            ..s.clone()
        }
    }

    #[test]
    fn a_pair_round_trips_with_and_without_the_optional_fields() {
        let cookie: Rc<[u8]> = Rc::from(&b"v2.k.first.second"[..]);
        let mut s = full();
        let mut variants = vec![s.clone()];
        s.cold_mut().id_token = Some(KeptIdToken::new("not a jws"));
        variants.push(s.clone());
        s.cold_mut().refresh_token = None;
        s.cold_mut().id_token = None;
        s.idp_sid = None;
        s.sid = String::new();
        variants.push(s);
        for s in variants {
            let (hot, second) = encode_pair(&s, &cold(&s)).unwrap();
            assert_eq!(
                decode_hot(&hot, Rc::clone(&cookie)),
                Some(hot_of(&s, &cookie))
            );
            assert_eq!(decode_cold(&second), Some(cold(&s)));
            // Each part is only what it says: the tokens are in the second alone.
            assert!(!hot.windows(2).any(|w| w == b"rt"));
            assert!(!second.windows(4).any(|w| w == b"at-\xc3"));
            assert_eq!(decode(&hot), None, "a first part is not a whole session");
            assert_eq!(decode_hot(&second, Rc::clone(&cookie)), None);
        }
    }

    #[test]
    fn a_session_sealed_whole_before_still_opens() {
        let mut s = full();
        assert!(matches!(
            s.opened().id_token,
            Some(KeptIdToken::Parts { .. })
        ));
        assert_eq!(decode(&encode(&s, &cold(&s)).unwrap()), Some(s.clone()));
        s.cold_mut().id_token = Some(KeptIdToken::new("not a jws"));
        assert_eq!(decode(&encode(&s, &cold(&s)).unwrap()), Some(s.clone()));
        s.cold_mut().refresh_token = None;
        s.cold_mut().id_token = None;
        s.idp_sid = None;
        s.sid = String::new();
        assert_eq!(decode(&encode(&s, &cold(&s)).unwrap()), Some(s.clone()));
        assert_eq!(
            decode_hot(&encode(&s, &cold(&s)).unwrap(), Rc::from(&b""[..])),
            None
        );
    }

    #[test]
    fn a_json_session_sealed_before_still_opens() {
        let json = br#"{"a":"at-\u00e9","x":18446744073709551615,"r":"rt","s":"alice","c":1000,"l":1001,"i":"e30.eyJzdWIiOiJhbGljZSJ9.c2ln","d":"sid","p":"idp-sid"}"#;
        assert_eq!(decode(json), Some(full()));
        assert_eq!(decode(br#"{"s":"x"}"#), None, "fields missing");
    }

    #[test]
    fn anything_else_is_no_session() {
        let s = full();
        let whole = encode(&s, &cold(&s)).unwrap();
        let (hot, second) = encode_pair(&s, &cold(&s)).unwrap();
        let cookie: Rc<[u8]> = Rc::from(&b""[..]);
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), None, "cut at {cut}");
        }
        for cut in 0..hot.len() {
            assert_eq!(
                decode_hot(&hot[..cut], Rc::clone(&cookie)),
                None,
                "cut at {cut}"
            );
        }
        for cut in 0..second.len() {
            assert_eq!(decode_cold(&second[..cut]), None, "cut at {cut}");
        }
        for good in [&whole, &hot] {
            let mut bad_utf8 = good.clone();
            let at = bad_utf8.iter().position(|&b| b == b'a').unwrap();
            bad_utf8[at] = 0xff;
            assert_eq!(decode(&bad_utf8), None);
            assert_eq!(decode_hot(&bad_utf8, Rc::clone(&cookie)), None);
        }
        for junk in [
            &b""[..],
            b"\x00",
            b"\x01abc",
            b"[1]",
            b"\x02\xff\xff\xff\xff\xff\xff",
            b"\x03\xff\xff\xff\xff\xff\xff",
        ] {
            assert_eq!(decode(junk), None, "{junk:?}");
            assert_eq!(decode_hot(junk, Rc::clone(&cookie)), None, "{junk:?}");
            assert_eq!(decode_cold(junk), None, "{junk:?}");
        }
    }
}
