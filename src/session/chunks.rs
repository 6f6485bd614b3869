//! Splitting a sealed session over several cookies when it is too big for one.
//!
//! Browsers keep at most 4096 bytes per cookie (name, value and attributes together). A value
//! up to [`MAX_VALUE`] goes whole into `<name>`; a bigger one becomes `<name>=c<N>:<part 0>`,
//! `<name>.1=<part 1>` … `<name>.<N-1>`. The parts are joined before the AEAD opens them, so a
//! missing, swapped or foreign chunk simply fails authentication.

use super::cookie::Jar;
use std::borrow::Cow;

/// Room for the value in one cookie, leaving space for the name and attributes.
pub const MAX_VALUE: usize = 3800;
/// More chunks than this is not a session of ours (and would exceed browsers' per-site limits).
pub const MAX_CHUNKS: usize = 10;

pub fn chunk_name(name: &str, index: usize) -> String {
    if index == 0 {
        name.to_string()
    } else {
        format!("{name}.{index}")
    }
}

/// The `(cookie name, value)` pairs that carry `sealed`.
pub fn split(name: &str, sealed: &str) -> Vec<(String, String)> {
    if sealed.len() <= MAX_VALUE {
        return vec![(name.to_string(), sealed.to_string())];
    }
    // Sealed values are ASCII (base64url and dots), so byte chunks are char boundaries.
    let parts: Vec<&str> = sealed
        .as_bytes()
        .chunks(MAX_VALUE)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let value = if i == 0 {
                format!("c{n}:{part}")
            } else {
                part.to_string()
            };
            (chunk_name(name, i), value)
        })
        .collect()
}

/// The sealed value carried by the request's cookies, joined from its chunks.
pub fn join<'a>(name: &str, jar: &Jar<'a>) -> Option<Cow<'a, [u8]>> {
    let first = jar.find(name)?;
    let Some(rest) = first.strip_prefix(b"c") else {
        return Some(Cow::Borrowed(first));
    };
    let colon = rest.iter().position(|&b| b == b':')?;
    let (count, part0) = (rest.get(..colon)?, rest.get(colon + 1..)?);
    let n: usize = std::str::from_utf8(count).ok()?.parse().ok()?;
    if !(2..=MAX_CHUNKS).contains(&n) {
        return None;
    }
    let mut joined = Vec::with_capacity(n * MAX_VALUE);
    joined.extend_from_slice(part0);
    for i in 1..n {
        joined.extend_from_slice(jar.find(&chunk_name(name, i))?);
    }
    Some(Cow::Owned(joined))
}

/// Chunk cookies (`<name>.1` …) the request carries beyond the first `keep`: they must be
/// deleted when a smaller session is written, or they would linger.
pub fn stale(name: &str, jar: &Jar, keep: usize) -> Vec<String> {
    (keep.max(1)..=MAX_CHUNKS)
        .map(|i| chunk_name(name, i))
        .filter(|n| jar.find(n).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "__Host-bff-session";

    fn header(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The joined value of a Cookie header, as text.
    fn joined(header: &str) -> Option<String> {
        join(N, &Jar::parse(Some(header.as_bytes())))
            .map(|v| String::from_utf8(v.into_owned()).unwrap())
    }

    fn stale_in(header: Option<&str>, keep: usize) -> Vec<String> {
        stale(N, &Jar::parse(header.map(str::as_bytes)), keep)
    }

    #[test]
    fn small_values_stay_whole() {
        let pairs = split(N, "v1.abc.def");
        assert_eq!(pairs, vec![(N.to_string(), "v1.abc.def".to_string())]);
        assert_eq!(joined(&header(&pairs)).as_deref(), Some("v1.abc.def"));
    }

    #[test]
    fn big_values_round_trip_through_chunks() {
        let sealed = format!("v1.kid.{}", "x".repeat(9000));
        let pairs = split(N, &sealed);
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1].0, format!("{N}.1"));
        assert!(pairs[0].1.starts_with("c3:v1.kid."));
        assert!(pairs.iter().all(|(n, v)| n.len() + v.len() < 4000));
        let h = format!("other=1; {}", header(&pairs));
        assert_eq!(joined(&h).as_deref(), Some(sealed.as_str()));
    }

    #[test]
    fn a_missing_chunk_means_no_value() {
        let sealed = format!("v1.kid.{}", "y".repeat(9000));
        let pairs = split(N, &sealed);
        let without_middle = header(&[pairs[0].clone(), pairs[2].clone()]);
        assert_eq!(joined(&without_middle), None);
        assert_eq!(joined(&format!("{N}=c99:abc")), None);
        assert_eq!(joined(&format!("{N}=c1:abc")), None);
        assert_eq!(joined(&format!("{N}=cx:abc")), None);
        assert_eq!(joined("x=1"), None);
    }

    #[test]
    fn reordered_chunks_join_to_something_else() {
        let sealed = format!("v1.kid.{}{}", "a".repeat(MAX_VALUE), "b".repeat(MAX_VALUE));
        let mut pairs = split(N, &sealed);
        let (v1, v2) = (pairs[1].1.clone(), pairs[2].1.clone());
        pairs[1].1 = v2;
        pairs[2].1 = v1;
        assert_ne!(joined(&header(&pairs)).as_deref(), Some(sealed.as_str()));
    }

    #[test]
    fn stale_chunks_are_found() {
        let h = format!("{N}=c3:a; {N}.1=b; {N}.2=c; {N}.tx.abc=d");
        assert_eq!(
            stale_in(Some(&h), 1),
            vec![format!("{N}.1"), format!("{N}.2")]
        );
        assert_eq!(stale_in(Some(&h), 2), vec![format!("{N}.2")]);
        assert!(stale_in(Some(&h), 3).is_empty());
        assert!(stale_in(None, 1).is_empty());
    }
}
