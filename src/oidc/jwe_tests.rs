//! `jwe`'s tests: compiled only under `#[cfg(test)]` (`#[path = "jwe_tests.rs"] mod tests;` at the
//! end of jwe.rs), never into the module, so their unwraps cannot panic in Envoy.

use super::*;
use rsa::pkcs8::DecodePrivateKey;
use serde_json::Value;

const RSA_PEM: &str = include_str!("../../tests/fixtures/keys/rsa-2048.pem");
const EC_PEM: &str = include_str!("../../tests/fixtures/keys/ec-p256.pem");
/// Made by panva's `jose` (tests/fixtures/jwe/make-vectors.mjs) to the two keys above.
const VECTORS: &str = include_str!("../../tests/fixtures/jwe/vectors.json");

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn fixture_keys() -> Vec<DecryptionKey> {
    vec![
        DecryptionKey {
            kid: Some("enc-rsa".into()),
            key: PrivateKey::Rsa(Box::new(
                rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).unwrap(),
            )),
        },
        DecryptionKey {
            kid: Some("enc-ec".into()),
            key: PrivateKey::P256(p256::SecretKey::from_pkcs8_pem(EC_PEM).unwrap()),
        },
    ]
}

const EVERYTHING: Accepted<'static> = Accepted {
    algs: &KeyManagement::ALL,
    encs: &ContentEncryption::ALL,
};

fn vectors() -> (String, Vec<Value>) {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    (
        doc["plaintext"].as_str().unwrap().to_string(),
        doc["vectors"].as_array().unwrap().clone(),
    )
}

fn vector(alg: &str, enc: &str) -> String {
    let (_, all) = vectors();
    all.iter()
        .find(|v| v["alg"] == alg && v["enc"] == enc)
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The token with one character in the middle of part `index` changed (still valid base64url).
fn tampered(token: &str, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let part = &mut parts[index];
    let middle = part.len() / 2;
    let c = part.as_bytes()[middle];
    let other = if c == b'A' { "B" } else { "A" };
    part.replace_range(middle..middle + 1, other);
    parts.join(".")
}

/// A compact JWE with this header and the other parts of `token`.
fn with_header(token: &str, header: &Value) -> String {
    let rest: Vec<&str> = token.split('.').skip(1).collect();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        rest.join(".")
    )
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&b64(token.split('.').next().unwrap())).unwrap()
}

// --- the RFCs' examples ------------------------------------------------------------------------

#[test]
fn rfc7516_a1_rsa_oaep_and_a256gcm() {
    let n = b64("oahUIoWw0K0usKNuOR6H4wkf4oBUXHTxRvgb48E-BVvxkeDNjbC4he8rUWcJoZmds2h7M70imEVhRU5djINXtqllXI4DFqcI1DgjT9LewND8MW2Krf3Spsk_ZkoFnilakGygTwpZ3uesH-PFABNIUYpOiN15dsQRkgr0vEhxN92i2asbOenSZeyaxziK72UwxrrKoExv6kc5twXTq4h-QChLOln0_mtUZwfsRaMStPs6mS6XrgxnxbWhojf663tuEQueGC-FCMfra36C9knDFGzKsNa7LZK2djYgyD3JR_MB_4NUJW_TqOQtwHYbxevoJArm-L5StowjzGy-_bq6Gw");
    let d = b64("kLdtIj6GbDks_ApCSTYQtelcNttlKiOyPzMrXHeI-yk1F7-kpDxY4-WY5NWV5KntaEeXS1j82E375xxhWMHXyvjYecPT9fpwR_M9gV8n9Hrh2anTpTD93Dt62ypW3yDsJzBnTnrYu1iwWRgBKrEYY46qAZIrA2xAwnm2X7uGR1hghkqDp0Vqj3kbSCz1XyfCs6_LehBwtxHIyh8Ripy40p24moOAbgxVw3rxT_vlt3UVe4WO3JkJOzlpUf-KTVI2Ptgm-dARxTEtE-id-4OJr0h-K-VFs3VSndVTIznSxfyrj8ILL6MG_Uv8YAu7VILSB3lOW085-4qE3DzgrTjgyQ");
    let key = rsa::RsaPrivateKey::from_components(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from(65537u32),
        rsa::BigUint::from_bytes_be(&d),
        vec![],
    )
    .unwrap();
    let token = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGeipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDbSv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaVmqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je81860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi6UklfCpIMfIjf7iGdXKHzg.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ";
    // The token has no kid: each of our keys of its kind is tried, ours first here.
    let mut keys = fixture_keys();
    keys.push(DecryptionKey {
        kid: None,
        key: PrivateKey::Rsa(Box::new(key)),
    });
    assert_eq!(
        decrypt(token, &keys, &EVERYTHING).unwrap(),
        b"The true sign of intelligence is not knowledge but imagination."
    );
    // The same token to our fixture key: the content key does not come out.
    assert_eq!(
        decrypt(token, &fixture_keys(), &EVERYTHING),
        Err(JweError::Undecryptable)
    );
}

#[test]
fn rfc7516_a3_key_unwrap_and_a128cbc_hs256() {
    // A128KW itself is not an `alg` we take; its two steps are ours (after ECDH-ES, and the
    // content encryption).
    let token = "eyJhbGciOiJBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.6KB707dM9YTIgHtLvtgWQ8mKwboJW3of9locizkDTHzBC2IlrT1oOQ.AxY8DCtDaGlsbGljb3RoZQ.KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY.U0m_YmjN04DJvceFICbCVQ";
    let parts = split(token).unwrap();
    let cek = unwrap_key(&b64("GawgguFyGrWKav7AX4VKUg"), &parts.encrypted_key).unwrap();
    assert_eq!(
        decrypt_content(&parts, ContentEncryption::A128CbcHs256, &cek).unwrap(),
        b"Live long and prosper."
    );
    let tag_changed = tampered(token, 4);
    let bad_tag = split(&tag_changed).unwrap();
    assert_eq!(
        decrypt_content(&bad_tag, ContentEncryption::A128CbcHs256, &cek),
        None
    );
    assert_eq!(
        decrypt(token, &fixture_keys(), &EVERYTHING),
        Err(JweError::AlgRefused("A128KW".into()))
    );
}

#[test]
fn rfc7516_a2_rsa1_5_is_refused_and_its_a128cbc_hs256_content_decrypts() {
    // RSAES-PKCS1-v1_5 key management is not taken (Bleichenbacher); the content part is
    // checked with the content key the appendix gives.
    let token = "eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.UGhIOguC7IuEvf_NPVaXsGMoLOmwvc1GyqlIKOK1nN94nHPoltGRhWhw7Zx0-kFm1NJn8LE9XShH59_i8J0PH5ZZyNfGy2xGdULU7sHNF6Gp2vPLgNZ__deLKxGHZ7PcHALUzoOegEI-8E66jX2E4zyJKx-YxzZIItRzC5hlRirb6Y5Cl_p-ko3YvkkysZIFNPccxRU7qve1WYPxqbb2Yw8kZqa2rMWI5ng8OtvzlV7elprCbuPhcCdZ6XDP0_F8rkXds2vE4X-ncOIM8hAYHHi29NX0mcKiRaD0-D-ljQTP-cFPgwCp6X-nZZd9OHBv-B3oWh2TbqmScqXMR4gp_A.AxY8DCtDaGlsbGljb3RoZQ.KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY.9hH0vgRfYgPnAHOd8stkvw";
    assert_eq!(
        decrypt(token, &fixture_keys(), &EVERYTHING),
        Err(JweError::AlgRefused("RSA1_5".into()))
    );
    let cek = [
        4u8, 211, 31, 197, 84, 157, 252, 254, 11, 100, 157, 250, 63, 170, 106, 206, 107, 124, 212,
        45, 111, 107, 9, 219, 200, 177, 0, 240, 143, 156, 44, 207,
    ];
    let parts = split(token).unwrap();
    assert_eq!(
        decrypt_content(&parts, ContentEncryption::A128CbcHs256, &cek).unwrap(),
        b"Live long and prosper."
    );
}

#[test]
fn rfc7518_appendix_c_ecdh_es_derives_the_published_key() {
    let bob =
        p256::SecretKey::from_slice(&b64("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw")).unwrap();
    let header: Header = serde_json::from_value(serde_json::json!({
        "alg": "ECDH-ES", "enc": "A128GCM", "apu": "QWxpY2U", "apv": "Qm9i",
        "epk": {"kty": "EC", "crv": "P-256",
                "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
                "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"}
    }))
    .unwrap();
    assert_eq!(
        agreed_key(&header, &bob, "A128GCM", 16).unwrap(),
        b64("VqqN6vgjbSBcIijNcacQGg")
    );
}

// --- another implementation's tokens ------------------------------------------------------------

#[test]
fn tokens_from_jose_decrypt_for_every_algorithm_pair() {
    let (plaintext, all) = vectors();
    assert_eq!(all.len(), 7);
    for v in &all {
        let token = v["token"].as_str().unwrap();
        assert_eq!(
            decrypt(token, &fixture_keys(), &EVERYTHING).as_deref(),
            Ok(plaintext.as_bytes()),
            "{} {}",
            v["alg"],
            v["enc"]
        );
        // The header is the AAD: the same token without its kid fails the tag.
        let mut header = header_of(token);
        header.as_object_mut().unwrap().remove("kid");
        assert_eq!(
            decrypt(&with_header(token, &header), &fixture_keys(), &EVERYTHING),
            Err(JweError::Undecryptable)
        );
    }
}

// --- refusals -----------------------------------------------------------------------------------

#[test]
fn only_configured_algorithms_are_taken() {
    let token = vector("RSA-OAEP", "A256GCM");
    let oaep256_only = Accepted {
        algs: &[KeyManagement::RsaOaep256],
        encs: &ContentEncryption::ALL,
    };
    assert_eq!(
        decrypt(&token, &fixture_keys(), &oaep256_only),
        Err(JweError::AlgRefused("RSA-OAEP".into()))
    );
    let gcm128_only = Accepted {
        algs: &KeyManagement::ALL,
        encs: &[ContentEncryption::A128Gcm],
    };
    assert_eq!(
        decrypt(&token, &fixture_keys(), &gcm128_only),
        Err(JweError::EncRefused("A256GCM".into()))
    );
    for (alg, enc) in [
        ("dir", "A256GCM"),
        ("none", "A256GCM"),
        ("RSA1_5", "A256GCM"),
        ("A256GCM", "RSA-OAEP"), // alg and enc swapped
        ("rsa-oaep", "A256GCM"), // names are case-sensitive (RFC 7518 §4.1)
    ] {
        let forged = with_header(&token, &serde_json::json!({"alg": alg, "enc": enc}));
        assert_eq!(
            decrypt(&forged, &fixture_keys(), &EVERYTHING),
            Err(JweError::AlgRefused(alg.into())),
            "{alg}"
        );
    }
    let forged = with_header(
        &token,
        &serde_json::json!({"alg": "RSA-OAEP", "enc": "A192GCM"}),
    );
    assert_eq!(
        decrypt(&forged, &fixture_keys(), &EVERYTHING),
        Err(JweError::EncRefused("A192GCM".into()))
    );
}

#[test]
fn a_kid_we_do_not_have_or_a_key_of_another_kind_is_refused() {
    let token = vector("RSA-OAEP-256", "A256GCM");
    let mut header = header_of(&token);
    header["kid"] = "someone-else".into();
    assert_eq!(
        decrypt(&with_header(&token, &header), &fixture_keys(), &EVERYTHING),
        Err(JweError::UnknownKey)
    );
    // The EC key's kid on an RSA token.
    header["kid"] = "enc-ec".into();
    assert_eq!(
        decrypt(&with_header(&token, &header), &fixture_keys(), &EVERYTHING),
        Err(JweError::UnknownKey)
    );
    let ec_only: Vec<DecryptionKey> = fixture_keys()
        .into_iter()
        .filter(|k| matches!(k.key, PrivateKey::P256(_)))
        .collect();
    assert_eq!(
        decrypt(&token, &ec_only, &EVERYTHING),
        Err(JweError::UnknownKey)
    );
}

#[test]
fn any_tampered_part_fails_as_one_error() {
    let (_, all) = vectors();
    for v in &all {
        let token = v["token"].as_str().unwrap();
        let direct = v["alg"] == "ECDH-ES";
        for index in 0..5 {
            if direct && index == 1 {
                continue; // no encrypted key to change
            }
            let got = decrypt(&tampered(token, index), &fixture_keys(), &EVERYTHING);
            // A changed header may no longer parse; every other change fails decryption.
            assert!(
                got == Err(JweError::Undecryptable) || (index == 0 && got.is_err()),
                "{} {} part {index}: {got:?}",
                v["alg"],
                v["enc"]
            );
        }
    }
}

#[test]
fn malformed_compressed_and_unencrypted_tokens_are_refused() {
    let token = vector("ECDH-ES", "A128GCM");
    let signed = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
    assert_eq!(
        decrypt(signed, &fixture_keys(), &EVERYTHING),
        Err(JweError::NotEncrypted)
    );
    assert_eq!(
        decrypt(&format!("{token}.x"), &fixture_keys(), &EVERYTHING),
        Err(JweError::NotEncrypted)
    );
    let mut header = header_of(&token);
    header["zip"] = "DEF".into();
    assert_eq!(
        decrypt(&with_header(&token, &header), &fixture_keys(), &EVERYTHING),
        Err(JweError::Compressed)
    );
    let mut header = header_of(&token);
    header["crit"] = serde_json::json!(["exp"]);
    assert_eq!(
        decrypt(&with_header(&token, &header), &fixture_keys(), &EVERYTHING),
        Err(JweError::Malformed)
    );
    for bad in ["", "....", "a.b.c.d.e", "e30.e30.e30.e30.e30"] {
        assert!(decrypt(bad, &fixture_keys(), &EVERYTHING).is_err(), "{bad}");
    }
    let array = format!("{}.{}", URL_SAFE_NO_PAD.encode("[\"RSA-OAEP\"]"), "a.b.c.d");
    assert_eq!(
        decrypt(&array, &fixture_keys(), &EVERYTHING),
        Err(JweError::Malformed)
    );
}

#[test]
fn an_ephemeral_key_off_the_curve_or_an_encrypted_key_with_direct_agreement_fails() {
    let token = vector("ECDH-ES", "A128GCM");
    let mut header = header_of(&token);
    let y = b64(header["epk"]["y"].as_str().unwrap());
    let mut off = y.clone();
    off[31] ^= 1;
    header["epk"]["y"] = URL_SAFE_NO_PAD.encode(&off).into();
    let off_curve = with_header(&token, &header);
    let parts_off = split(&off_curve).unwrap();
    let key = p256::SecretKey::from_pkcs8_pem(EC_PEM).unwrap();
    assert_eq!(
        agreed_key(&parts_off.header, &key, "A128GCM", 16),
        None,
        "not on P-256"
    );
    header["epk"]["crv"] = "P-384".into();
    let p384 = with_header(&token, &header);
    let parts_384 = split(&p384).unwrap();
    assert_eq!(agreed_key(&parts_384.header, &key, "A128GCM", 16), None);
    // ECDH-ES proper carries no encrypted key (RFC 7518 §4.6).
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = "AAAA";
    assert_eq!(
        decrypt(&parts.join("."), &fixture_keys(), &EVERYTHING),
        Err(JweError::Undecryptable)
    );
}

// --- Wycheproof, for each primitive as used here ------------------------------------------------

/// A Wycheproof case: a valid one gives `want`, an invalid one nothing (acceptable: either).
fn expect_case(got: Option<Vec<u8>>, result: wycheproof::TestResult, want: &[u8], tc: usize) {
    use wycheproof::TestResult;
    match result {
        TestResult::Valid => assert_eq!(got.as_deref(), Some(want), "tc {tc}"),
        TestResult::Invalid => assert_eq!(got, None, "tc {tc}"),
        TestResult::Acceptable => {}
    }
}

fn sealed_of(t: &wycheproof::aead::Test) -> Sealed<'_> {
    Sealed {
        aad: &t.aad,
        iv: &t.nonce,
        ciphertext: &t.ct,
        tag: &t.tag,
    }
}

#[test]
fn wycheproof_a128cbc_hs256() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::Aes128CbcHmacSha256).unwrap();
    let mut checked = 0;
    for group in &set.test_groups {
        for t in &group.tests {
            let sealed = sealed_of(t);
            let got = cbc_hs256(&t.key, &sealed);
            expect_case(got, t.result, &t.pt, t.tc_id);
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}

#[test]
fn wycheproof_aes_gcm_with_jwe_sizes() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let mut checked = 0;
    for group in &set.test_groups {
        if group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in &group.tests {
            let sealed = sealed_of(t);
            let got = match group.key_size {
                128 => gcm::<Aes128Gcm>(&t.key, &sealed),
                256 => gcm::<Aes256Gcm>(&t.key, &sealed),
                _ => continue,
            };
            expect_case(got, t.result, &t.pt, t.tc_id);
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn wycheproof_aes_key_unwrap() {
    use wycheproof::keywrap::{TestName, TestSet};
    let set = TestSet::load(TestName::AesKeyWrap).unwrap();
    let mut checked = 0;
    for group in &set.test_groups {
        if group.key_size != 128 && group.key_size != 256 {
            continue;
        }
        for t in &group.tests {
            let got = unwrap_key(&t.key, &t.ct);
            expect_case(got, t.result, &t.pt, t.tc_id);
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}

#[test]
fn wycheproof_rsa_oaep_2048() {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let mut checked = 0;
    for (name, alg) in [
        (TestName::Rsa2048Sha1Mgf1Sha1, KeyManagement::RsaOaep),
        (TestName::Rsa2048Sha256Mgf1Sha256, KeyManagement::RsaOaep256),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let key = rsa::RsaPrivateKey::from_pkcs8_der(&group.pkcs8).unwrap();
            for t in &group.tests {
                if !t.label.is_empty() {
                    continue; // JWE uses no OAEP label
                }
                let got = rsa_oaep(&key, alg, &t.ct);
                expect_case(got, t.result, &t.pt, t.tc_id);
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "{checked}");
}

#[test]
fn wycheproof_ecdh_p256_points() {
    use wycheproof::ecdh::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdhSecp256r1Ecpoint).unwrap();
    let (mut checked, mut other_encodings) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            // The epk is a JWK: x and y, so only uncompressed points reach us.
            let public = &t.public_key[..];
            if public.len() != 65 || public[0] != 4 {
                other_encodings += 1;
                continue;
            }
            let private = &t.private_key[..];
            let private = &private[private.len().saturating_sub(32)..];
            let Ok(key) = p256::SecretKey::from_slice(private) else {
                continue;
            };
            let got = shared_secret(&key, &public[1..33], &public[33..]);
            expect_case(got, t.result, &t.shared_secret, t.tc_id);
            checked += 1;
        }
    }
    assert!(
        checked > 20 && other_encodings > 0,
        "{checked} {other_encodings}"
    );
}
