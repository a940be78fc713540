//! `x-request-id`: kept when the client sent one, otherwise a random UUIDv4 is added so the
//! request can be followed through the access log and the upstream's logs.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::Cell;

pub const HEADER: &str = "x-request-id";
/// As a `HeaderName`: a lookup by `&str` parses and classifies the name on every request.
const NAME: HeaderName = HeaderName::from_static(HEADER);

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() | 1
}

/// splitmix64: fast, and good enough for identifiers and jitter (not for secrets).
pub fn next() -> u64 {
    let mut one = [0];
    fill(&mut one);
    one[0]
}

/// Several values for one visit to the thread-local state (a trace takes three or four).
pub fn fill(out: &mut [u64]) {
    STATE.with(|s| {
        let mut z = s.get();
        for o in out.iter_mut() {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *o = x ^ (x >> 31);
        }
        s.set(z);
    })
}

/// Every byte's two lower-case hex digits: one load per byte instead of two shifts, two
/// masks and two lookups.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// Lower-case hex of `bytes` into `out` (twice as long): the request id, trace and span ids.
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

pub fn generate() -> HeaderValue {
    let hi = next();
    let lo = next();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // 8-4-4-4-12: the five groups of the UUID, dashes between.
    let mut out = [b'-'; 36];
    let mut o = 0;
    for group in [&b[..4], &b[4..6], &b[6..8], &b[8..10], &b[10..]] {
        hex_into(group, &mut out[o..o + group.len() * 2]);
        o += group.len() * 2 + 1;
    }
    // An owned buffer: the id is cloned into the access log and every try's request, and
    // clones of an owner-backed `Bytes` share it without the allocation a `Vec`-backed one
    // makes on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Returns the request's id, adding one when absent.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&NAME) {
        return v.clone();
    }
    let v = generate();
    headers.insert(NAME, v.clone());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn uuid_shape_and_uniqueness() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("given"));
        assert_eq!(ensure(&mut h), "given");
    }
}
