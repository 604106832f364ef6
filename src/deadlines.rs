//! `upstream.timeout` for requests without a body, or with one wxgate holds
//! whole (see `Proxy::forward`), kept by each worker's sweep rather than by
//! a timer per request.
//!
//! Hand-written rather than `tokio::time::timeout`, because it is measured
//! to matter: a tokio timer costs every forwarded GET a timer-wheel insert
//! under the time driver's lock on its first wait and a removal when it is
//! dropped; this table saves about 400 instructions of the 32,000 wxgate
//! spends on a pass-through GET (callgrind, `bench/instructions`). Here a request puts
//! its deadline in its worker's table (a slot in a `Vec`, no lock: a worker
//! is one thread) and takes it out when it ends; the worker's sweep, which
//! already runs a few times per timeout for idle client connections
//! ([`crate::idle`]), wakes the requests whose deadline has passed
//! ([`sweep`]). The price is precision: a request times out between its
//! deadline and one sweep period after it (a quarter of the timeout, at
//! most a second; see [`crate::idle::sweep_period`]). It never times out
//! before its deadline.
//!
//! On a thread without a sweep (unit tests, the demo) a tokio timer does
//! the same job.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

thread_local! {
    static TABLE: RefCell<Table> = const { RefCell::new(Table::new()) };
}

/// One worker's deadlines.
struct Table {
    /// A sweep runs on this thread ([`enable`]).
    swept: bool,
    entries: Vec<Entry>,
    /// Indices of free entries.
    free: Vec<usize>,
}

struct Entry {
    at: Instant,
    state: State,
}

enum State {
    Free,
    Waiting(Waker),
    Expired,
}

impl Table {
    const fn new() -> Self {
        Self {
            swept: false,
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, at: Instant, waker: Waker) -> usize {
        let entry = Entry {
            at,
            state: State::Waiting(waker),
        };
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            e.state = State::Free;
            self.free.push(i);
        }
    }
}

/// Tells [`within`] that this thread sweeps its deadlines from now on.
pub(crate) fn enable() {
    TABLE.with_borrow_mut(|t| t.swept = true);
}

/// Wakes the requests of this thread whose deadline is past `now`; returns
/// how many.
pub(crate) fn sweep(now: Instant) -> usize {
    let expired: Vec<Waker> = TABLE.with_borrow_mut(|t| {
        t.entries
            .iter_mut()
            .filter(|e| matches!(e.state, State::Waiting(_)) && e.at <= now)
            .filter_map(|e| match std::mem::replace(&mut e.state, State::Expired) {
                State::Waiting(waker) => Some(waker),
                _ => None,
            })
            .collect()
    });
    // Woken outside the table: a waker may run code that uses it.
    let n = expired.len();
    expired.into_iter().for_each(Waker::wake);
    n
}

/// `fut`'s output, or `None` when it took longer than `timeout`.
///
/// A plain function returning one small future rather than an `async fn`:
/// a request's future is moved (copied) at each level that wraps it.
#[inline(always)] // in its caller, `fut` is built in place, not copied in
pub(crate) fn within<F: Future>(timeout: Duration, fut: F) -> Within<F> {
    let at = Instant::now() + timeout;
    let timer = if TABLE.with_borrow(|t| t.swept) {
        None
    } else {
        Some(Box::pin(tokio::time::sleep_until(at)))
    };
    Within {
        fut,
        at,
        slot: None,
        timer,
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline: in its thread's table, or, on a thread
    /// without a sweep, on a tokio timer.
    pub(crate) struct Within<F> {
        #[pin]
        fut: F,
        at: Instant,
        slot: Option<usize>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(i) = *this.project().slot {
                // The thread may be ending, its table gone with it.
                let _ = TABLE.try_with(|t| t.borrow_mut().remove(i));
            }
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // An answer that is there wins over a deadline just past.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some(timer) = this.timer {
            return timer.as_mut().poll(cx).map(|()| None);
        }
        TABLE.with_borrow_mut(|t| {
            let Some(i) = *this.slot else {
                *this.slot = Some(t.insert(*this.at, cx.waker().clone()));
                return Poll::Pending;
            };
            match &mut t.entries[i].state {
                State::Expired => Poll::Ready(None),
                State::Waiting(waker) => {
                    if !waker.will_wake(cx.waker()) {
                        waker.clone_from(cx.waker());
                    }
                    Poll::Pending
                }
                // Only this future frees its entry, on drop.
                State::Free => Poll::Pending,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn without_a_sweep_a_timer_keeps_the_deadline() {
        runtime().block_on(async {
            let slow = within(Duration::from_secs(1), tokio::time::sleep(Duration::from_secs(2)));
            assert_eq!(slow.await, None);
            let quick = within(Duration::from_secs(2), async { 7 });
            assert_eq!(quick.await, Some(7));
        });
    }

    #[test]
    fn a_sweep_ends_what_is_past_its_deadline_and_nothing_else() {
        // A thread of its own: the table is per thread.
        std::thread::spawn(|| {
            runtime().block_on(async {
                enable();
                let start = Instant::now();
                let slow = tokio::spawn(within(Duration::from_secs(1), std::future::pending::<()>()));
                let answered = tokio::spawn(within(
                    Duration::from_secs(5),
                    tokio::time::sleep(Duration::from_secs(2)),
                ));
                tokio::task::yield_now().await;
                assert_eq!(sweep(start + Duration::from_millis(999)), 0, "not yet");
                assert_eq!(sweep(start + Duration::from_secs(1)), 1);
                assert_eq!(slow.await.unwrap(), None);
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert_eq!(answered.await.unwrap(), Some(()));
                // Both entries are free again, and reused.
                TABLE.with_borrow(|t| assert_eq!(t.free.len(), t.entries.len()));
                let again = tokio::spawn(within(Duration::from_secs(1), std::future::pending::<()>()));
                tokio::task::yield_now().await;
                TABLE.with_borrow(|t| assert_eq!(t.entries.len(), 2));
                assert_eq!(sweep(Instant::now() + Duration::from_secs(1)), 1);
                assert_eq!(again.await.unwrap(), None);
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_answer_ready_with_the_deadline_wins() {
        std::thread::spawn(|| {
            runtime().block_on(async {
                enable();
                let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
                let waiting = tokio::spawn(within(Duration::from_secs(1), rx));
                tokio::task::yield_now().await;
                tx.send(3).unwrap();
                sweep(Instant::now() + Duration::from_secs(2));
                assert_eq!(waiting.await.unwrap(), Some(Ok(3)));
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_period_is_a_quarter_within_bounds() {
        use crate::idle::sweep_period as period;
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_millis(400)), Duration::from_millis(100));
        assert_eq!(period(Duration::from_millis(1)), Duration::from_millis(10));
    }
}
