//! The header map as the host hands it over (proxy-wasm ABI 0.2: a little-endian `u32`
//! count, then a `u32` name length and value length per pair, then each name and value
//! followed by a NUL), read in place. The SDK's own reader copies every name and value into
//! new allocations and panics on a name that is not UTF-8; this one borrows from the buffer,
//! converts a value lossily only when it is not UTF-8, reads a name that is not ASCII as empty
//! (no header the filter looks for), and stops at a malformed buffer. `Cookie` values are
//! kept apart as bytes, unchecked: they are the biggest headers, and
//! [`crate::session::cookie::Jar`] reads them byte for byte.

use crate::byte_loops::is_ascii;
use std::borrow::Cow;

/// A header as read from the host: the name, and the value as UTF-8 (lossy only when a
/// client sent bytes that are not).
pub type WireHeader<'a> = (&'a str, Cow<'a, str>);

/// A request's headers read from the host's buffer.
#[derive(Debug, Default)]
pub struct Headers<'a> {
    /// Every header but `Cookie`, in order.
    pub pairs: Vec<WireHeader<'a>>,
    /// The values of the `Cookie` headers, in order (HTTP/2 may send one per cookie).
    pub cookies: Vec<&'a [u8]>,
}

/// The headers in `bytes`; empty or cut short if the buffer is malformed.
pub fn parse(bytes: &[u8]) -> Headers<'_> {
    let mut headers = Headers::default();
    let Some(count) = read_u32(bytes, 0) else {
        return headers;
    };
    // Each pair takes 8 bytes of sizes and 2 NULs: a count beyond that is a lie.
    let count = count.min(bytes.len() / 10);
    headers.pairs.reserve(count);
    let mut data = 4 + count * 8;
    for i in 0..count {
        let (Some(name_len), Some(value_len)) =
            (read_u32(bytes, 4 + i * 8), read_u32(bytes, 8 + i * 8))
        else {
            break;
        };
        let Some((name, after)) = field(bytes, data, name_len) else {
            break;
        };
        let Some((value, after)) = field(bytes, after, value_len) else {
            break;
        };
        data = after;
        match ascii(name).unwrap_or("") {
            "cookie" => headers.cookies.push(value),
            name => headers.pairs.push((name, text(value))),
        }
    }
    headers
}

/// `len` bytes at `at` and where the next field starts (past the NUL).
fn field(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    Some((bytes.get(at..end)?, end.checked_add(1)?))
}

/// A value as text. Nearly every header is ASCII, and the cookie header is a kilobyte and
/// more on every request: eight bytes at a time tell ASCII, where `from_utf8` goes a word (four
/// bytes on wasm32) at a time and `from_utf8_lossy` in small chunks.
fn text(value: &[u8]) -> Cow<'_, str> {
    match ascii(value) {
        Some(text) => Cow::Borrowed(text),
        None => String::from_utf8_lossy(value),
    }
}

/// The bytes as a `str` if they are ASCII. Also for names (always ASCII tokens, RFC 9110
/// §5.1): `from_utf8`'s set-up costs more than the check on a dozen short names per request.
fn ascii(bytes: &[u8]) -> Option<&str> {
    // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
    is_ascii(bytes).then(|| unsafe { std::str::from_utf8_unchecked(bytes) })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// The same encoding: a local reply's headers, and tests and fuzzing.
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let bytes: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + 8 * pairs.len() + bytes);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a value was read without loss (borrowed from the buffer).
    #[allow(clippy::ptr_arg)] // the point is which Cow it is
    fn is_exact(value: &Cow<'_, str>) -> bool {
        matches!(value, Cow::Borrowed(_))
    }

    #[test]
    fn reads_pairs_in_place() {
        let bytes = serialize(&[
            (":path", b"/private/x"),
            ("cookie", b"a=1"),
            ("accept", b"*/*"),
            ("cookie", b"b=\xff"),
        ]);
        let headers = parse(&bytes);
        let pairs = &headers.pairs;
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0], (":path", Cow::Borrowed("/private/x")));
        assert_eq!(pairs[1], ("accept", Cow::Borrowed("*/*")));
        assert!(pairs.iter().all(|(_, v)| is_exact(v)));
        assert_eq!(headers.cookies, vec![&b"a=1"[..], &b"b=\xff"[..]]);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_read_lossily() {
        let bytes = serialize(&[("x-odd", b"caf\xe9"), (":path", b"/")]);
        let pairs = parse(&bytes).pairs;
        assert_eq!(pairs[0].1, "caf\u{fffd}");
        assert!(!is_exact(&pairs[0].1));
        assert_eq!(pairs[1], (":path", Cow::Borrowed("/")));
    }

    #[test]
    fn ascii_is_told_at_every_length_and_position() {
        for len in 0..40 {
            let plain = vec![b'a'; len];
            assert!(is_ascii(&plain));
            assert_eq!(text(&plain), "a".repeat(len));
            for at in 0..len {
                let mut odd = plain.clone();
                odd[at] = 0xe9;
                assert!(!is_ascii(&odd), "{len} {at}");
                assert_eq!(text(&odd), String::from_utf8_lossy(&odd));
            }
        }
        assert_eq!(
            text("h\u{e9}llo w\u{f6}rld, caf\u{e9}".as_bytes()),
            "h\u{e9}llo w\u{f6}rld, caf\u{e9}"
        );
    }

    #[test]
    fn a_name_that_is_not_ascii_reads_as_empty() {
        let mut bytes = serialize(&[("caf\u{e9}", b"1"), ("x-?", b"2"), ("accept", b"a")]);
        let at = bytes.iter().position(|&b| b == b'?').unwrap();
        bytes[at] = 0xff; // not UTF-8 at all
        let pairs = parse(&bytes).pairs;
        assert_eq!(pairs[0], ("", Cow::Borrowed("1")));
        assert_eq!(pairs[1], ("", Cow::Borrowed("2")));
        assert_eq!(pairs[2], ("accept", Cow::Borrowed("a")));
    }

    #[test]
    fn empty_values_and_an_empty_map() {
        assert!(parse(&[]).pairs.is_empty());
        assert!(parse(&serialize(&[])).pairs.is_empty());
        let bytes = serialize(&[("x-empty", b""), ("y", b"1")]);
        assert_eq!(
            parse(&bytes).pairs,
            vec![("x-empty", Cow::Borrowed("")), ("y", Cow::Borrowed("1"))]
        );
    }

    #[test]
    fn a_malformed_buffer_gives_what_could_be_read() {
        let bytes = serialize(&[("a", b"1"), ("b", b"2")]);
        for cut in 0..bytes.len() {
            let pairs = parse(&bytes[..cut]).pairs;
            assert!(pairs.len() <= 2, "{cut}");
        }
        // A count far beyond the buffer, and sizes pointing past its end.
        let mut lying = bytes.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&lying).pairs.len() <= 2);
        let mut long = bytes;
        long[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(parse(&long).pairs.is_empty());
    }
}
