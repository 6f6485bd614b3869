//! The JWE parser and decryption (src/oidc/jwe.rs), with the test keys: any string must give a
//! plaintext or an error, never a panic; and a real token (made by panva's jose,
//! tests/fixtures/jwe/vectors.json) with one part replaced by input bytes must never decrypt to
//! anything but the real plaintext (an Ok there is the unchanged token).

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_bff::oidc::jwe::{
    decrypt, Accepted, ContentEncryption, DecryptionKey, KeyManagement, PrivateKey,
};
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::DecodePrivateKey;
use std::sync::OnceLock;

const ACCEPTED: Accepted<'static> = Accepted {
    algs: &KeyManagement::ALL,
    encs: &ContentEncryption::ALL,
};

struct Fixture {
    keys: Vec<DecryptionKey>,
    plaintext: String,
    tokens: Vec<String>,
}

// The keys are not Sync (an Rc-free Box, but PrivateKey is not declared Sync): kept per thread.
fn with_fixture(f: impl FnOnce(&Fixture)) {
    thread_local! {
        static FIXTURE: OnceLock<Fixture> = const { OnceLock::new() };
    }
    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(|| {
            let rsa = include_str!("../../tests/fixtures/keys/rsa-2048.pem");
            let ec = include_str!("../../tests/fixtures/keys/ec-p256.pem");
            let doc: serde_json::Value =
                serde_json::from_str(include_str!("../../tests/fixtures/jwe/vectors.json"))
                    .unwrap();
            Fixture {
                keys: vec![
                    DecryptionKey {
                        kid: Some("enc-rsa".into()),
                        key: PrivateKey::Rsa(Box::new(
                            rsa::RsaPrivateKey::from_pkcs8_pem(rsa).unwrap(),
                        )),
                    },
                    DecryptionKey {
                        kid: Some("enc-ec".into()),
                        key: PrivateKey::P256(p256::SecretKey::from_pkcs8_pem(ec).unwrap()),
                    },
                ],
                plaintext: doc["plaintext"].as_str().unwrap().to_string(),
                tokens: doc["vectors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["token"].as_str().unwrap().to_string())
                    .collect(),
            }
        });
        f(fixture)
    });
}

fuzz_target!(|data: &[u8]| {
    with_fixture(|fx| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = decrypt(text, &fx.keys, &ACCEPTED);
        }
        let [which, part, rest @ ..] = data else {
            return;
        };
        let token = &fx.tokens[*which as usize % fx.tokens.len()];
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let index = *part as usize % parts.len();
        let replaced = URL_SAFE_NO_PAD.encode(rest);
        let unchanged = parts[index] == replaced;
        parts[index] = replaced;
        if let Ok(plaintext) = decrypt(&parts.join("."), &fx.keys, &ACCEPTED) {
            assert!(
                unchanged || plaintext == fx.plaintext.as_bytes(),
                "a changed token decrypted to something else"
            );
        }
    });
});
