//! Per-worker copy buffers. A tunnel takes a buffer only for the moment bytes move through it
//! (from a read until that data is written on) and gives it back right after, so an idle
//! tunnel holds none: memory follows the bytes in flight, not the connections open.
//!
//! Two sizes. A read starts with a small buffer, enough for a query, a page or a TLS record.
//! A read that fills it says more is waiting (a bulk transfer), and the next read of that
//! direction takes a large one: fewer, larger reads and writes are what make a bulk copy fast
//! (measured: 16 KiB ≈ 1.4 GB/s, 256 KiB ≈ 2.4 GB/s on loopback, see docs/performance.md).
//! A worker lends at most `LARGE_MAX` large buffers at a time and falls back to small ones
//! past that, so many stalled bulk transfers cannot multiply the large size: the worst case of
//! a worker is `LARGE_MAX` × 256 KiB plus one small buffer per stalled direction.
//!
//! Workers are single-threaded runtimes and a connection's task never leaves its worker, so the
//! pool is thread-local: taking and returning a buffer is a `Vec` pop and push.

use std::cell::{Cell, RefCell};

pub const SMALL: usize = 16 * 1024;
pub const LARGE: usize = 256 * 1024;
/// Large buffers a worker lends at once.
const LARGE_MAX: usize = 8;
/// Small buffers a worker keeps when they are not in use; more are freed.
const KEEP_SMALL: usize = 32;

pub type Buf = Box<[u8]>;

thread_local! {
    static SMALLS: RefCell<Vec<Buf>> = const { RefCell::new(Vec::new()) };
    static LARGES: RefCell<Vec<Buf>> = const { RefCell::new(Vec::new()) };
    static LARGE_OUT: Cell<usize> = const { Cell::new(0) };
}

/// A buffer for the next read: large when the last read of this direction filled its buffer
/// and the worker has one to lend, small otherwise.
pub fn take(bulk: bool) -> Buf {
    if bulk && LARGE_OUT.get() < LARGE_MAX {
        LARGE_OUT.set(LARGE_OUT.get() + 1);
        return LARGES
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; LARGE].into_boxed_slice());
    }
    SMALLS
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; SMALL].into_boxed_slice())
}

pub fn give(buf: Buf) {
    if buf.len() == LARGE {
        LARGE_OUT.set(LARGE_OUT.get().saturating_sub(1));
        // Large buffers lent are bounded, so keeping them all is bounded too.
        LARGES.with(|p| p.borrow_mut().push(buf));
        return;
    }
    SMALLS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP_SMALL {
            p.push(buf);
        }
    });
}

/// Buffers this worker holds in reserve: (small, large).
pub fn pooled() -> (usize, usize) {
    (
        SMALLS.with(|p| p.borrow().len()),
        LARGES.with(|p| p.borrow().len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_caps_and_bounds_large_loans() {
        let a = take(false);
        let ptr = a.as_ptr();
        give(a);
        assert_eq!(pooled().0, 1);
        let b = take(false);
        assert_eq!(b.as_ptr(), ptr);
        let many: Vec<_> = (0..40).map(|_| take(false)).collect();
        for m in many {
            give(m);
        }
        assert_eq!(pooled().0, KEEP_SMALL);
        give(b);
        assert_eq!(pooled().0, KEEP_SMALL);

        let larges: Vec<_> = (0..LARGE_MAX + 3).map(|_| take(true)).collect();
        let n_large = larges.iter().filter(|b| b.len() == LARGE).count();
        assert_eq!(
            n_large, LARGE_MAX,
            "past the bound, bulk reads get small buffers"
        );
        for l in larges {
            give(l);
        }
        assert_eq!(pooled().1, LARGE_MAX);
        assert_eq!(take(true).len(), LARGE, "lendable again once given back");
    }
}
