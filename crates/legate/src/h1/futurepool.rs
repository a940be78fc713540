//! A per-worker pool of the memory a request's future lives in.
//!
//! An idle keep-alive connection must stay small, so the future that serves a request (5.4 KB)
//! is boxed apart from the connection's task and freed when the request is done. Allocating
//! and freeing a block that size for every request is not free: glibc's malloc serves it from
//! its slower bins (it is above the per-thread cache's 1 KiB), and musl's malloc handed such
//! blocks' memory back to the kernel and mapped it again every few requests (an `mmap` and a
//! `munmap` of 16 KiB each). Here a finished request's block goes to its worker's free list and
//! the next request on that worker reuses it.
//!
//! Each worker thread runs its own runtime, so the list is thread-local and needs no lock; a
//! block freed on another thread joins that thread's list. At most [`KEEP`] blocks are kept
//! per thread (a burst's extra blocks go back to the allocator).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks kept per worker: the requests a worker usually has in flight at once. 32 blocks of
/// 5.4 KB are 170 KiB at most.
const KEEP: usize = 32;

/// Free blocks with their layouts (one layout in practice: one future type is pooled).
struct FreeList(Vec<(Layout, NonNull<u8>)>);

impl Drop for FreeList {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: every block in the list came from `alloc(layout)` and is owned by the
            // list alone.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeList> = const { RefCell::new(FreeList(Vec::new())) };
}

/// A future in a block from the pool: like `Pin<Box<F>>`, with the block reused.
pub struct Pooled<F> {
    ptr: NonNull<F>,
}

// SAFETY: `Pooled<F>` owns its `F` the way `Box<F>` does; the free list it returns the block
// to is the dropping thread's own.
unsafe impl<F: Send> Send for Pooled<F> {}

// The `F` stays in its block until drop whatever happens to the handle: moving a `Pooled`
// never moves the future.
impl<F> Unpin for Pooled<F> {}

impl<F: Future> Pooled<F> {
    pub fn new(f: F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to allocate: a zero-sized future lives at a dangling, aligned address.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through an aligned, non-null pointer.
            unsafe { ptr.as_ptr().write(f) };
            return Self { ptr };
        }
        let reused = FREE
            .try_with(|l| {
                let mut l = l.borrow_mut();
                let at = l.0.iter().rposition(|(have, _)| *have == layout)?;
                Some(l.0.swap_remove(at).1)
            })
            .ok()
            .flatten();
        let block = match reused {
            Some(block) => block,
            None => {
                // SAFETY: `layout` has a non-zero size.
                let raw = unsafe { alloc(layout) };
                match NonNull::new(raw) {
                    Some(block) => block,
                    None => handle_alloc_error(layout),
                }
            }
        };
        let ptr = block.cast::<F>();
        // SAFETY: the block is `layout` = `Layout::new::<F>()` big and aligned, and unused.
        unsafe { ptr.as_ptr().write(f) };
        Self { ptr }
    }
}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the `F` is initialised and never moves out of its block (see `Unpin` above).
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Pooled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the `F` is initialised and dropped only here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let block = self.ptr.cast::<u8>();
        let kept = FREE
            .try_with(|l| {
                let mut l = l.borrow_mut();
                let keep = l.0.len() < KEEP;
                if keep {
                    l.0.push((layout, block));
                }
                keep
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: the block came from `alloc(layout)` (directly or through the list) and
            // nothing else refers to it.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>, [u8; 512]);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_block_is_reused_and_every_future_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let make = |n: u8| {
            let c = Counted(drops.clone(), [n; 512]);
            async move { c.1[511] }
        };
        let first = Pooled::new(make(1));
        let addr = first.ptr.as_ptr() as usize;
        assert_eq!(first.await, 1);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // The next future of the same type lands in the block the first one left.
        let second = Pooled::new(make(2));
        assert_eq!(second.ptr.as_ptr() as usize, addr);
        // Dropped before it ran: its captures are dropped all the same.
        drop(second);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // More at once than the list keeps: all run, all dropped, nothing reused twice.
        let many: Vec<_> = (0..KEEP as u8 + 8).map(|n| Pooled::new(make(n))).collect();
        let mut seen: Vec<usize> = many.iter().map(|p| p.ptr.as_ptr() as usize).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), KEEP + 8);
        for (n, p) in many.into_iter().enumerate() {
            assert_eq!(p.await, n as u8);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 2 + KEEP + 8);
        FREE.with(|l| assert_eq!(l.borrow().0.len(), KEEP));
    }

    #[tokio::test]
    async fn zero_sized_futures_need_no_block() {
        struct Now;
        impl Future for Now {
            type Output = u8;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
                Poll::Ready(7)
            }
        }
        let before = FREE.with(|l| l.borrow().0.len());
        assert_eq!(Pooled::new(Now).await, 7);
        assert_eq!(FREE.with(|l| l.borrow().0.len()), before);
    }
}
