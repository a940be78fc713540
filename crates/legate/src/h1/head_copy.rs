//! The one copy a parsed head gets (its target and every header value are slices of it), so
//! the buffer it was read into can go back to its pool or on to the body.

use bytes::Bytes;

/// A head of at most `N` bytes, stored inline in the allocation `Bytes::from_owner` makes for
/// the reference count: one allocation per head, where `Bytes::copy_from_slice` makes two
/// (the copy, then the shared header its first slice promotes it to). The cost is room: a
/// head uses its whole class while it is alive, less than twice its length.
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

/// A copy of `src` that slices share without allocating.
pub fn copy(src: &[u8]) -> Bytes {
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
}
