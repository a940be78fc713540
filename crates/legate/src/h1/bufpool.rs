//! Per-worker pools of read and write buffers and header maps, for the HTTP/1.1 server (and
//! the upstream client's request heads and response maps). A connection takes a buffer when a
//! request starts arriving and gives it back when the exchange is done, so an idle keep-alive
//! connection holds none (memcached's "network readbuf" change, for the same reason: an app's
//! pool of hundreds of idle connections).
//!
//! Each worker thread runs its own runtime, so a thread-local pool needs no lock; a buffer
//! given back on another thread (a request body finished by a task elsewhere) simply joins
//! that thread's pool.

use bytes::BytesMut;
use http::HeaderMap;
use std::cell::RefCell;

/// A read buffer's size: a request head of up to this many bytes is read with one `read`
/// (most apps' heads, a bearer token included, are under 2 KiB). Larger heads (up to
/// `max_header_bytes`) grow the buffer for that request only. Small on purpose: with a
/// thousand requests in flight these are a thousand buffers, and the allocator keeps what
/// the peak took.
pub const READ_SIZE: usize = 2 * 1024;
/// Response heads and small body frames are gathered here to go out in one `write`; it grows
/// up to `WRITE_FLUSH` before it is written.
pub const WRITE_SIZE: usize = 2 * 1024;
pub const WRITE_FLUSH: usize = 8 * 1024;
/// Spare buffers (and maps) kept per worker, at most: as many as a burst of concurrent
/// requests takes. Below this a thousand requests in flight took their buffers from the
/// allocator and gave them back to it at every request (2 KiB blocks, past glibc's per-thread
/// cache: its slower bins, with consolidation). Spares a whole `trim` period left unused are
/// let go, so a burst does not leave its buffers behind.
const KEEP: usize = 1024;

/// Header maps larger than this are let go (a map's two blocks are sized by its capacity: one
/// grown for an unusual message is not kept).
const MAP_MAX_CAPACITY: usize = 64;

/// A worker's spares of one kind, and the fewest it held since the last `trim`: that many
/// were not needed all period.
struct Spares<T> {
    items: Vec<T>,
    low: usize,
}

impl<T> Spares<T> {
    const fn new() -> Self {
        Self {
            items: Vec::new(),
            low: 0,
        }
    }

    fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        item
    }

    fn keep(&mut self, item: T) {
        if self.items.len() < KEEP {
            self.items.push(item);
        }
    }

    /// Lets go of the spares unused since the last call (the oldest first).
    fn trim(&mut self) {
        self.items.drain(..self.low);
        if self.items.is_empty() {
            self.items = Vec::new();
        }
        self.low = self.items.len();
    }
}

thread_local! {
    static READ: RefCell<Spares<BytesMut>> = const { RefCell::new(Spares::new()) };
    static WRITE: RefCell<Spares<Vec<u8>>> = const { RefCell::new(Spares::new()) };
    static MAPS: RefCell<Spares<HeaderMap>> = const { RefCell::new(Spares::new()) };
}

/// Lets go of this worker's spares that a whole period since the last call left unused (the
/// worker's pool sweep calls it every few seconds).
pub fn trim() {
    READ.with(|p| p.borrow_mut().trim());
    WRITE.with(|p| p.borrow_mut().trim());
    MAPS.with(|p| p.borrow_mut().trim());
}

/// An empty header map with room for `capacity` fields, for a parsed head (`h1::fields`, both
/// directions). A map is two allocations; the server gives each response's map back once
/// the response is written and forwarding gives the request's back when it ends, so a warm
/// worker allocates none.
pub fn take_map(capacity: usize) -> HeaderMap {
    match MAPS.with(|p| p.borrow_mut().take()) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a header map back (emptied here).
pub fn give_map(mut map: HeaderMap) {
    if map.capacity() > MAP_MAX_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|p| p.borrow_mut().keep(map));
}

/// An empty read buffer with at least `READ_SIZE` bytes of room.
pub fn take_read() -> BytesMut {
    READ.with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
}

/// Gives a read buffer back. Only an empty one that still owns its whole allocation is kept
/// (`reserve` reclaims the front of the allocation when no `Bytes` split from it is alive;
/// otherwise it would allocate, and the buffer is dropped instead).
pub fn give_read(mut buf: BytesMut) {
    if !buf.is_empty() {
        return;
    }
    buf.clear();
    if buf.capacity() < READ_SIZE && !buf.try_reclaim(READ_SIZE) {
        return;
    }
    if buf.capacity() > 4 * READ_SIZE {
        // Grown for a large head: not worth keeping.
        return;
    }
    READ.with(|p| p.borrow_mut().keep(buf));
}

/// An empty write buffer.
pub fn take_write() -> Vec<u8> {
    WRITE
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| Vec::with_capacity(WRITE_SIZE))
}

pub fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() > 2 * WRITE_FLUSH {
        return;
    }
    buf.clear();
    WRITE.with(|p| p.borrow_mut().keep(buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_reclaimed() {
        let mut b = take_read();
        let ptr = b.as_ptr();
        b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = b.split_to(18).freeze();
        drop(head);
        give_read(b);
        let b = take_read();
        assert!(b.capacity() >= READ_SIZE);
        assert_eq!(b.as_ptr(), ptr, "the same allocation, its front reclaimed");
        give_read(b);

        // A buffer whose front is still shared is not kept.
        let mut b = take_read();
        b.extend_from_slice(b"abcd");
        let held = b.split_to(4).freeze();
        give_read(b);
        let fresh = take_read();
        assert!(fresh.capacity() >= READ_SIZE);
        drop(held);
    }

    #[test]
    fn spares_unused_for_a_whole_period_are_let_go() {
        let mut s = Spares::new();
        for i in 0..10 {
            s.keep(i);
        }
        s.trim();
        assert_eq!(s.items.len(), 10, "a first period only marks");
        // This period takes down to 7 spares, then gives them back.
        let taken: Vec<_> = (0..3).filter_map(|_| s.take()).collect();
        for i in taken {
            s.keep(i);
        }
        s.trim();
        assert_eq!(s.items.len(), 3, "the 7 never taken go");
        s.trim();
        assert!(s.items.is_empty(), "and the rest a period later");
        assert_eq!(s.items.capacity(), 0, "with the list's own room");
        for i in 0..KEEP + 5 {
            s.keep(i);
        }
        assert_eq!(s.items.len(), KEEP, "never more than KEEP");
    }

    #[test]
    fn header_maps_come_back_empty_and_large_ones_are_let_go() {
        use http::header::{HeaderValue, HOST};
        let mut m = take_map(8);
        m.insert(HOST, HeaderValue::from_static("a"));
        let cap = m.capacity();
        give_map(m);
        let m = take_map(4);
        assert!(m.is_empty(), "a pooled map comes back empty");
        assert_eq!(m.capacity(), cap, "and keeps its room");
        give_map(m);
        let big = take_map(MAP_MAX_CAPACITY * 2);
        give_map(big);
        let m = take_map(1);
        assert!(m.capacity() <= MAP_MAX_CAPACITY, "a grown map is not kept");
    }
}
