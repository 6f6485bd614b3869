//! Encrypted ID tokens (OIDC Core §10.2): JWE compact serialization (RFC 7516) with the
//! algorithms IdPs use (RFC 7518): key management RSA-OAEP, RSA-OAEP-256, ECDH-ES (P-256,
//! direct or with A128KW/A256KW), content encryption A128GCM, A256GCM, A128CBC-HS256.
//!
//! `decrypt` returns the plaintext, which for an ID token is the signed token that then goes
//! through the usual checks. Only the algorithms configured are accepted (`dir`, `none` and
//! anything else never), a `kid` must name one of our keys, and every failure past parsing is one
//! error (`Undecryptable`), so an attacker learns nothing from which step failed.

use crate::oidc::jws::loggable;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// How the content key reaches us (`alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyManagement {
    RsaOaep,
    RsaOaep256,
    EcdhEs,
    EcdhEsA128Kw,
    EcdhEsA256Kw,
}

impl KeyManagement {
    pub const ALL: [KeyManagement; 5] = [
        KeyManagement::RsaOaep,
        KeyManagement::RsaOaep256,
        KeyManagement::EcdhEs,
        KeyManagement::EcdhEsA128Kw,
        KeyManagement::EcdhEsA256Kw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyManagement::RsaOaep => "RSA-OAEP",
            KeyManagement::RsaOaep256 => "RSA-OAEP-256",
            KeyManagement::EcdhEs => "ECDH-ES",
            KeyManagement::EcdhEsA128Kw => "ECDH-ES+A128KW",
            KeyManagement::EcdhEsA256Kw => "ECDH-ES+A256KW",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyManagement> {
        KeyManagement::ALL.into_iter().find(|k| k.name() == name)
    }

    fn is_rsa(self) -> bool {
        matches!(self, KeyManagement::RsaOaep | KeyManagement::RsaOaep256)
    }
}

/// How the content is encrypted (`enc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncryption {
    A128Gcm,
    A256Gcm,
    A128CbcHs256,
}

impl ContentEncryption {
    pub const ALL: [ContentEncryption; 3] = [
        ContentEncryption::A128Gcm,
        ContentEncryption::A256Gcm,
        ContentEncryption::A128CbcHs256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ContentEncryption::A128Gcm => "A128GCM",
            ContentEncryption::A256Gcm => "A256GCM",
            ContentEncryption::A128CbcHs256 => "A128CBC-HS256",
        }
    }

    pub fn from_name(name: &str) -> Option<ContentEncryption> {
        ContentEncryption::ALL
            .into_iter()
            .find(|e| e.name() == name)
    }

    /// The content key's length in bytes (RFC 7518 §5.2.3, §5.3).
    fn key_len(self) -> usize {
        match self {
            ContentEncryption::A128Gcm => 16,
            ContentEncryption::A256Gcm | ContentEncryption::A128CbcHs256 => 32,
        }
    }
}

/// One of the filter's decryption keys.
pub enum PrivateKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
}

pub struct DecryptionKey {
    pub kid: Option<String>,
    pub key: PrivateKey,
}

impl DecryptionKey {
    fn serves(&self, alg: KeyManagement) -> bool {
        matches!(
            (&self.key, alg.is_rsa()),
            (PrivateKey::Rsa(_), true) | (PrivateKey::P256(_), false)
        )
    }
}

/// `id_token_encryption`: what the client registered at the IdP
/// (`id_token_encrypted_response_alg` / `_enc`) and the keys it decrypts with, the first of
/// which is also published (with the others, for rotation) in the filter's JWK Set.
pub struct IdTokenEncryption {
    pub alg: KeyManagement,
    pub enc: ContentEncryption,
    pub keys: Vec<DecryptionKey>,
    /// The public halves, as JWKs with `use: enc` and `alg`.
    pub published: Vec<serde_json::Value>,
}

impl IdTokenEncryption {
    pub fn decrypt(&self, compact: &str) -> Result<Vec<u8>, JweError> {
        let accepted = Accepted {
            algs: &[self.alg],
            encs: &[self.enc],
        };
        decrypt(compact, &self.keys, &accepted)
    }
}

impl fmt::Debug for IdTokenEncryption {
    // Never the keys: their kids only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        write!(
            f,
            "IdTokenEncryption({} {} {:?})",
            self.alg.name(),
            self.enc.name(),
            kids
        )
    }
}

/// What the configuration accepts.
pub struct Accepted<'a> {
    pub algs: &'a [KeyManagement],
    pub encs: &'a [ContentEncryption],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JweError {
    /// Not five parts: a signed token (three parts) arrives here when the IdP did not encrypt.
    NotEncrypted,
    Malformed,
    /// The `alg` is not one configured (`dir`, `none`, a confusion with `enc`, ...).
    AlgRefused(String),
    EncRefused(String),
    /// `zip` (RFC 7516 §4.1.3): compression before encryption leaks length; never accepted.
    Compressed,
    /// The `kid` names none of our keys, or no key of ours serves the `alg`.
    UnknownKey,
    /// The content key or the content did not decrypt (wrong key, tampered part).
    Undecryptable,
}

impl fmt::Display for JweError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JweError::NotEncrypted => f.write_str("the ID token is not encrypted (JWE expected)"),
            JweError::Malformed => f.write_str("the encrypted ID token is malformed"),
            JweError::AlgRefused(alg) => {
                write!(f, "the ID token's key management {alg} is not configured")
            }
            JweError::EncRefused(enc) => {
                write!(
                    f,
                    "the ID token's content encryption {enc} is not configured"
                )
            }
            JweError::Compressed => f.write_str("the encrypted ID token is compressed (zip)"),
            JweError::UnknownKey => {
                f.write_str("the ID token is encrypted to a key the filter does not have")
            }
            JweError::Undecryptable => f.write_str("the encrypted ID token does not decrypt"),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    kid: Option<String>,
    zip: Option<IgnoredAny>,
    epk: Option<Epk>,
    apu: Option<String>,
    apv: Option<String>,
    /// RFC 7516 §4.1.13: we understand no extension, so any `crit` refuses the token.
    crit: Option<IgnoredAny>,
}

/// The sender's ephemeral public key (RFC 7518 §4.6.1.1).
#[derive(Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

/// The five parts of a compact JWE, decoded.
struct Parts<'a> {
    /// The first part as sent: the AAD (RFC 7516 §5.2 step 14).
    encoded_header: &'a str,
    header: Header,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn decode(part: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JweError::Malformed)
}

fn split(compact: &str) -> Result<Parts<'_>, JweError> {
    let mut it = compact.split('.');
    let (Some(h), Some(k), Some(i), Some(c), Some(t), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(JweError::NotEncrypted);
    };
    let json = decode(h)?;
    // An object, not an array serde would also read into the struct; duplicate names refused.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(JweError::Malformed);
    }
    let header: Header = serde_json::from_slice(&json).map_err(|_| JweError::Malformed)?;
    if header.crit.is_some() {
        return Err(JweError::Malformed);
    }
    Ok(Parts {
        encoded_header: h,
        header,
        encrypted_key: decode(k)?,
        iv: decode(i)?,
        ciphertext: decode(c)?,
        tag: decode(t)?,
    })
}

/// Decrypts a compact JWE to its plaintext with one of `keys`.
pub fn decrypt(
    compact: &str,
    keys: &[DecryptionKey],
    accepted: &Accepted<'_>,
) -> Result<Vec<u8>, JweError> {
    let parts = split(compact)?;
    let header = &parts.header;
    let alg = KeyManagement::from_name(&header.alg)
        .filter(|a| accepted.algs.contains(a))
        .ok_or_else(|| JweError::AlgRefused(loggable(&header.alg)))?;
    let enc = ContentEncryption::from_name(&header.enc)
        .filter(|e| accepted.encs.contains(e))
        .ok_or_else(|| JweError::EncRefused(loggable(&header.enc)))?;
    if header.zip.is_some() {
        return Err(JweError::Compressed);
    }
    let candidates: Vec<&DecryptionKey> = keys
        .iter()
        .filter(|k| k.serves(alg))
        .filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(JweError::UnknownKey);
    }
    // Without a kid each of our keys of the right kind is tried (RFC 7516 §9).
    for key in candidates {
        if let Some(plaintext) = content_key(&parts, alg, enc, &key.key)
            .and_then(|cek| decrypt_content(&parts, enc, &cek))
        {
            return Ok(plaintext);
        }
    }
    Err(JweError::Undecryptable)
}

/// The content key, or None if it does not come out (or has the wrong length for `enc`).
fn content_key(
    parts: &Parts<'_>,
    alg: KeyManagement,
    enc: ContentEncryption,
    key: &PrivateKey,
) -> Option<Vec<u8>> {
    let cek = match (alg, key) {
        (KeyManagement::RsaOaep | KeyManagement::RsaOaep256, PrivateKey::Rsa(k)) => {
            rsa_oaep(k, alg, &parts.encrypted_key)?
        }
        (KeyManagement::EcdhEs, PrivateKey::P256(k)) => {
            // Direct key agreement: no encrypted key (RFC 7518 §4.6).
            if !parts.encrypted_key.is_empty() {
                return None;
            }
            agreed_key(&parts.header, k, enc.name(), enc.key_len())?
        }
        (KeyManagement::EcdhEsA128Kw | KeyManagement::EcdhEsA256Kw, PrivateKey::P256(k)) => {
            let kek_len = if alg == KeyManagement::EcdhEsA128Kw {
                16
            } else {
                32
            };
            let kek = agreed_key(&parts.header, k, alg.name(), kek_len)?;
            unwrap_key(&kek, &parts.encrypted_key)?
        }
        _ => return None,
    };
    (cek.len() == enc.key_len()).then_some(cek)
}

/// RSA-OAEP with SHA-1 (and MGF1 with SHA-1), or SHA-256 for RSA-OAEP-256 (RFC 7518 §4.3).
fn rsa_oaep(key: &rsa::RsaPrivateKey, alg: KeyManagement, encrypted: &[u8]) -> Option<Vec<u8>> {
    let padding = if alg == KeyManagement::RsaOaep256 {
        rsa::Oaep::new::<Sha256>()
    } else {
        rsa::Oaep::new::<sha1::Sha1>()
    };
    key.decrypt(padding, encrypted).ok()
}

/// ECDH-ES with the sender's `epk`, then the Concat KDF (RFC 7518 §4.6.2, NIST SP 800-56A).
fn agreed_key(
    header: &Header,
    key: &p256::SecretKey,
    algorithm_id: &str,
    len: usize,
) -> Option<Vec<u8>> {
    let epk = header.epk.as_ref()?;
    if epk.kty != "EC" || epk.crv != "P-256" {
        return None;
    }
    let z = shared_secret(key, &decode(&epk.x).ok()?, &decode(&epk.y).ok()?)?;
    let apu = match &header.apu {
        Some(a) => decode(a).ok()?,
        None => Vec::new(),
    };
    let apv = match &header.apv {
        Some(a) => decode(a).ok()?,
        None => Vec::new(),
    };
    Some(concat_kdf(&z, algorithm_id.as_bytes(), &apu, &apv, len))
}

/// Z, the x-coordinate of our key times their point (x, y), 32 bytes each.
fn shared_secret(key: &p256::SecretKey, x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    // Refuses a point off the curve (the invalid-curve attack) and the point at infinity.
    let theirs = p256::PublicKey::from_sec1_bytes(&sec1).ok()?;
    let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), theirs.as_affine());
    Some(shared.raw_secret_bytes().to_vec())
}

/// One round of SHA-256 gives 32 bytes: every key length here fits in it.
fn concat_kdf(z: &[u8], algorithm_id: &[u8], apu: &[u8], apv: &[u8], len: usize) -> Vec<u8> {
    let with_length = |h: Sha256, data: &[u8]| {
        h.chain_update((data.len() as u32).to_be_bytes())
            .chain_update(data)
    };
    let mut h = Sha256::new()
        .chain_update(1u32.to_be_bytes())
        .chain_update(z);
    h = with_length(h, algorithm_id);
    h = with_length(h, apu);
    h = with_length(h, apv);
    let digest = h.chain_update(((len * 8) as u32).to_be_bytes()).finalize();
    digest.iter().take(len).copied().collect()
}

/// AES key unwrap (RFC 3394) with a 16- or 32-byte key. RFC 3394 wraps at least two 64-bit
/// blocks, so less than 24 bytes is no wrapped key (Wycheproof checks that an unwrap refuses it).
fn unwrap_key(kek: &[u8], wrapped: &[u8]) -> Option<Vec<u8>> {
    if wrapped.len() < 24 {
        return None;
    }
    match kek.len() {
        16 => aes_kw::KekAes128::try_from(kek)
            .ok()?
            .unwrap_vec(wrapped)
            .ok(),
        32 => aes_kw::KekAes256::try_from(kek)
            .ok()?
            .unwrap_vec(wrapped)
            .ok(),
        _ => None,
    }
}

fn decrypt_content(parts: &Parts<'_>, enc: ContentEncryption, cek: &[u8]) -> Option<Vec<u8>> {
    let sealed = Sealed {
        aad: parts.encoded_header.as_bytes(),
        iv: &parts.iv,
        ciphertext: &parts.ciphertext,
        tag: &parts.tag,
    };
    match enc {
        ContentEncryption::A128Gcm => gcm::<Aes128Gcm>(cek, &sealed),
        ContentEncryption::A256Gcm => gcm::<Aes256Gcm>(cek, &sealed),
        ContentEncryption::A128CbcHs256 => cbc_hs256(cek, &sealed),
    }
}

/// What the content decryption reads; the AAD is the encoded protected header (RFC 7516 §5.2).
struct Sealed<'a> {
    aad: &'a [u8],
    iv: &'a [u8],
    ciphertext: &'a [u8],
    tag: &'a [u8],
}

fn gcm<C: KeyInit + AeadInPlace>(cek: &[u8], sealed: &Sealed<'_>) -> Option<Vec<u8>> {
    // 96-bit IV and 128-bit tag (RFC 7518 §5.3).
    if sealed.iv.len() != 12 || sealed.tag.len() != 16 {
        return None;
    }
    let cipher = C::new_from_slice(cek).ok()?;
    let mut buffer = sealed.ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(sealed.iv),
            sealed.aad,
            &mut buffer,
            Tag::from_slice(sealed.tag),
        )
        .ok()?;
    Some(buffer)
}

/// AES_128_CBC_HMAC_SHA_256 (RFC 7518 §5.2.2): the MAC over AAD, IV, ciphertext and the AAD's
/// length in bits is checked before anything is decrypted.
fn cbc_hs256(cek: &[u8], sealed: &Sealed<'_>) -> Option<Vec<u8>> {
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockDecryptMut, KeyIvInit};
    if cek.len() != 32 || sealed.iv.len() != 16 || sealed.tag.len() != 16 {
        return None;
    }
    let (mac_key, enc_key) = cek.split_at(16);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key).ok()?;
    mac.update(sealed.aad);
    mac.update(sealed.iv);
    mac.update(sealed.ciphertext);
    mac.update(&((sealed.aad.len() as u64) * 8).to_be_bytes());
    let full = mac.finalize().into_bytes();
    let expected = full.get(..16)?;
    if !bool::from(expected.ct_eq(sealed.tag)) {
        return None;
    }
    cbc::Decryptor::<aes::Aes128>::new_from_slices(enc_key, sealed.iv)
        .ok()?
        .decrypt_padded_vec_mut::<Pkcs7>(sealed.ciphertext)
        .ok()
}

/// Encrypts like an IdP, for the tests of the login and the refresh.
#[cfg(test)]
pub mod test_encrypt {
    use super::*;
    use aes_gcm::aead::Aead;

    /// RSA-OAEP-256 + A256GCM to `key`, with `kid` in the header.
    pub fn rsa_oaep_256_a256gcm(plaintext: &str, key: &rsa::RsaPublicKey, kid: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid}).to_string(),
        );
        let cek = [7u8; 32];
        let iv = [9u8; 12];
        let encrypted_key = key
            .encrypt(&mut rsa::rand_core::OsRng, rsa::Oaep::new::<Sha256>(), &cek)
            .unwrap();
        let sealed = Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .encrypt(
                Nonce::from_slice(&iv),
                aes_gcm::aead::Payload {
                    msg: plaintext.as_bytes(),
                    aad: header.as_bytes(),
                },
            )
            .unwrap();
        let (ciphertext, tag) = sealed.split_at(sealed.len() - 16);
        [
            header,
            URL_SAFE_NO_PAD.encode(encrypted_key),
            URL_SAFE_NO_PAD.encode(iv),
            URL_SAFE_NO_PAD.encode(ciphertext),
            URL_SAFE_NO_PAD.encode(tag),
        ]
        .join(".")
    }
}

#[cfg(test)]
#[path = "jwe_tests.rs"]
mod tests;
