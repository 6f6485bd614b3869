//! Opens the same 600-byte value with XChaCha20-Poly1305 and AES-256-GCM, side by side.
//! Run with the portable backends forced (see Cargo.toml) to see what wasm32 gets.

use aes_gcm::{Aes256Gcm, Nonce as GNonce};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::time::Instant;
fn main() {
    let key = [7u8; 32];
    let msg = vec![42u8; 600];
    let n = 200_000;
    let x = XChaCha20Poly1305::new_from_slice(&key).unwrap();
    let g = Aes256Gcm::new_from_slice(&key).unwrap();
    let ct_x = x.encrypt(XNonce::from_slice(&[1u8; 24]), Payload { msg: &msg, aad: b"n" }).unwrap();
    let ct_g = g.encrypt(GNonce::from_slice(&[1u8; 12]), Payload { msg: &msg, aad: b"n" }).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..n { std::hint::black_box(x.decrypt(XNonce::from_slice(&[1u8; 24]), Payload { msg: &ct_x, aad: b"n" }).unwrap()); }
        let tx = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n { std::hint::black_box(g.decrypt(GNonce::from_slice(&[1u8; 12]), Payload { msg: &ct_g, aad: b"n" }).unwrap()); }
        let tg = t.elapsed().as_nanos() as f64 / n as f64;
        println!("open 600 B: xchacha20poly1305 {tx:.0} ns, aes-256-gcm {tg:.0} ns, ratio {:.2}", tg / tx);
    }
}
