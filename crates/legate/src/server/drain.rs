//! Telling waiting tasks that they should finish: idle HTTP/1.1 connections (which close at
//! once) and HTTP/2 ones (GOAWAY) when their listener stops accepting (shutdown, or a reload
//! that removes it), and TCP tunnels (which close once idle, see `tcp::copy::DRAIN_IDLE`)
//! when the worker drains.
//!
//! Each worker keeps its lists in a thread-local (a task never leaves its worker): list
//! `WORKER` for the worker's drain, one more per listener the worker accepts on. A task takes
//! a place in a list holding only its waker; a drain marks the list and wakes every task in
//! it. This replaces a `watch::Receiver::changed()` future per waiting task (120 bytes of
//! waiter state, plus a receiver clone) with 8 bytes in the task and a 16-byte waker in the
//! list, which matters for a connection's idle footprint (docs/performance.md, "Connection
//! lifecycle and buffer ownership").

use std::cell::RefCell;
use std::task::{Context, Waker};

#[derive(Default)]
struct List {
    draining: bool,
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
}

thread_local! {
    // Lists are never reused: a task may still hold a place in a drained one.
    static LISTS: RefCell<Vec<List>> = RefCell::new(vec![List::default()]);
}

/// One of this worker's drain lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListId(u32);

/// The worker's own list: drained when the worker drains.
pub const WORKER: ListId = ListId(0);

/// A new list on this worker (one per listener it accepts on).
pub fn new_list() -> ListId {
    LISTS.with(|l| {
        let mut l = l.borrow_mut();
        l.push(List::default());
        ListId((l.len() - 1) as u32)
    })
}

const UNLISTED: u32 = u32::MAX;

/// A task's place in a drain list, taken at its first poll and left on drop. Polled and
/// dropped on the worker thread that created it (a worker's tasks never leave it: each worker
/// is a current-thread runtime); on another thread the same id names another worker's list.
pub struct Listed {
    list: ListId,
    slot: u32,
}

impl Listed {
    pub const fn new(list: ListId) -> Self {
        Listed {
            list,
            slot: UNLISTED,
        }
    }

    /// True once the list is drained; until then remembers the task to wake when it is.
    pub fn poll_draining(&mut self, cx: &Context<'_>) -> bool {
        LISTS.with(|l| {
            let mut lists = l.borrow_mut();
            let Some(l) = lists.get_mut(self.list.0 as usize) else {
                return false;
            };
            if l.draining {
                return true;
            }
            if self.slot == UNLISTED {
                let waker = Some(cx.waker().clone());
                self.slot = match l.free.pop() {
                    Some(i) => {
                        l.wakers[i as usize] = waker;
                        i
                    }
                    None => {
                        l.wakers.push(waker);
                        (l.wakers.len() - 1) as u32
                    }
                };
            } else if let Some(w) = l.wakers.get_mut(self.slot as usize) {
                // A task's waker does not change in practice; cloning only when it did keeps
                // a re-poll to a comparison.
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            false
        })
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if self.slot == UNLISTED {
            return;
        }
        // `try_with`: a task dropped while its thread's locals are torn down has no list left.
        let _ = LISTS.try_with(|l| {
            let Ok(mut lists) = l.try_borrow_mut() else {
                return;
            };
            let Some(l) = lists.get_mut(self.list.0 as usize) else {
                return;
            };
            if let Some(w) = l.wakers.get_mut(self.slot as usize) {
                *w = None;
                l.free.push(self.slot);
            }
        });
    }
}

/// Whether `list` was drained (a response then tells its client the connection closes).
pub fn is_draining(list: ListId) -> bool {
    LISTS.with(|l| l.borrow().get(list.0 as usize).is_some_and(|l| l.draining))
}

/// Marks `list` drained and wakes every task in it; returns how many there were. Tasks that
/// take a place in it later learn it at their first poll.
pub fn drain(list: ListId) -> usize {
    // `try_with`: called from drops, possibly while the thread's locals are torn down.
    let wakers: Vec<Waker> = LISTS
        .try_with(|l| {
            let Ok(mut lists) = l.try_borrow_mut() else {
                return Vec::new();
            };
            let Some(l) = lists.get_mut(list.0 as usize) else {
                return Vec::new();
            };
            l.draining = true;
            l.free = Vec::new();
            std::mem::take(&mut l.wakers)
                .into_iter()
                .flatten()
                .collect()
        })
        .unwrap_or_default();
    let n = wakers.len();
    // Woken outside the borrow: a waker may run code that takes or leaves a place.
    for w in wakers {
        w.wake();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::{Listed, WORKER};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn drain_wakes_listed_tasks_only_and_stays_marked() {
        // Each test runs on its own thread: a fresh list.
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let other = super::new_list();
        let mut a = Listed::new(WORKER);
        let mut b = Listed::new(WORKER);
        let mut c = Listed::new(WORKER);
        let mut elsewhere = Listed::new(other);
        assert!(!elsewhere.poll_draining(&cx));
        assert!(!a.poll_draining(&cx));
        assert!(!b.poll_draining(&cx));
        drop(b);
        // A freed place is reused.
        assert!(!c.poll_draining(&cx));
        assert!(!a.poll_draining(&cx), "a re-poll keeps its place");
        assert_eq!(super::drain(WORKER), 2);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(a.poll_draining(&cx));
        assert!(super::is_draining(WORKER));
        assert!(!elsewhere.poll_draining(&cx), "another list is not drained");
        assert!(!super::is_draining(other));
        let mut late = Listed::new(WORKER);
        assert!(
            late.poll_draining(&cx),
            "a task listed after the drain learns it at once"
        );
        assert_eq!(super::drain(WORKER), 0, "the list is emptied by a drain");
        assert_eq!(super::drain(other), 1);
        drop(c);
    }
}
