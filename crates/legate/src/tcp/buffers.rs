//! Per-worker copy buffers. A tunnel takes a buffer only for the moment bytes move through it
//! (from a read until that data is written on) and gives it back right after, so an idle
//! tunnel holds none: memory follows the bytes in flight, not the connections open.
//!
//! Workers are single-threaded runtimes and a connection's task never leaves its worker, so the
//! pool is thread-local: taking and returning a buffer is a `Vec` pop and push.

use std::cell::RefCell;

/// One TLS record's worth, like stunnel's; enough for loopback bulk transfers to run at
/// memory speed without making a busy tunnel expensive.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers a worker keeps when they are not in use; more are freed.
const KEEP: usize = 32;

pub type Buf = Box<[u8]>;

thread_local! {
    static POOL: RefCell<Vec<Buf>> = const { RefCell::new(Vec::new()) };
}

pub fn take() -> Buf {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

pub fn give(buf: Buf) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(buf);
        }
    });
}

/// Buffers this worker holds in reserve (for tests and the bench).
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuses_and_caps() {
        let a = super::take();
        let ptr = a.as_ptr();
        super::give(a);
        assert_eq!(super::pooled(), 1);
        let b = super::take();
        assert_eq!(b.as_ptr(), ptr);
        let many: Vec<_> = (0..40).map(|_| super::take()).collect();
        for m in many {
            super::give(m);
        }
        assert_eq!(super::pooled(), super::KEEP);
        super::give(b);
        assert_eq!(super::pooled(), super::KEEP);
    }
}
