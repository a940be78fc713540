//! The one copy a parsed head gets (its target and every header value are slices of it), so
//! the buffer it was read into can go back to its pool or on to the body. Both directions
//! (`h1::request::parse`, the upstream client's response parse) make theirs here.

use bytes::Bytes;

/// A head of at most `N` bytes, stored inline in the allocation `Bytes::from_owner` makes for
/// the reference count: one allocation per head, where `Bytes::copy_from_slice` makes two
/// (the copy, then the shared header its first slice promotes it to). The cost is room: a
/// head uses its whole class while it is alive (at most 128 bytes or twice its length).
struct Inline<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn inline<const N: usize>(src: &[u8]) -> Bytes {
    let mut bytes = [0u8; N];
    bytes[..src.len()].copy_from_slice(src);
    Bytes::from_owner(Inline {
        len: src.len(),
        bytes,
    })
}

/// A head's copy, and where the bytes it was copied from start: what httparse returned (slices
/// of the read buffer) is turned into slices of the copy by their offset from there.
pub struct HeadCopy {
    bytes: Bytes,
    base: usize,
}

impl HeadCopy {
    pub fn new(src: &[u8]) -> Self {
        Self {
            bytes: copy(src),
            base: src.as_ptr() as usize,
        }
    }

    /// The copy of `part`, a slice of the `src` this was made from (a parsed target, name or
    /// value). A `part` from elsewhere is a bug in the caller; it gets an empty slice rather
    /// than a panic.
    pub fn slice_of(&self, part: &[u8]) -> Bytes {
        let at = (part.as_ptr() as usize).wrapping_sub(self.base);
        match at.checked_add(part.len()) {
            Some(end) if end <= self.bytes.len() => self.bytes.slice(at..end),
            _ => Bytes::new(),
        }
    }
}

/// A copy of `src` that slices share without allocating.
fn copy(src: &[u8]) -> Bytes {
    match src.len() {
        // Classes a factor of two apart: the class is zeroed and moved into place whole.
        0..=128 => inline::<128>(src),
        129..=256 => inline::<256>(src),
        257..=512 => inline::<512>(src),
        513..=1024 => inline::<1024>(src),
        1025..=2048 => inline::<2048>(src),
        // Rare (large cookies, long tokens): the two allocations do not matter here.
        _ => Bytes::copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_every_class_hold_the_bytes_and_slice() {
        for len in [
            0, 1, 128, 129, 256, 257, 512, 513, 1024, 1025, 2048, 2049, 9000,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let head = copy(&src);
            assert_eq!(&head[..], &src[..], "length {len}");
            if len > 2 {
                let part = head.slice(1..len - 1);
                drop(head);
                assert_eq!(&part[..], &src[1..len - 1], "a slice outlives its head");
            }
        }
    }

    #[test]
    fn parts_of_the_source_become_slices_of_the_copy() {
        let src = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        let head = HeadCopy::new(&src);
        assert_eq!(&head.slice_of(&src[4..6])[..], b"/a");
        assert_eq!(&head.slice_of(&src[src.len() - 4..])[..], b"\r\n\r\n");
        let elsewhere = b"/a".to_vec();
        assert!(
            head.slice_of(&elsewhere).is_empty(),
            "not a part of the source"
        );
    }
}
