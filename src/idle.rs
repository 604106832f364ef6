//! The client connection's idle timeout (`server.header_read_timeout`).
//!
//! A connection with no request in flight must send its next request head
//! within the timeout, counted from its accept or from the end of its last
//! response; otherwise it is closed. That bounds idle keep-alive connections
//! and slowloris clients alike, and never touches a request being served, a
//! slow upstream or a long download.
//!
//! hyper's own `header_read_timeout` does the same with a timer armed and
//! dropped on every request (an allocation, a clock read and a timer-wheel
//! insert and removal each time). Here the request path only bumps two
//! counters of its connection ([`Activity`]); each worker's accept loop
//! sweeps its connections a few times per timeout ([`Watch::sweep`]) and
//! closes those that stayed quiet through it. The cost moves from every
//! request to a sweep over the open connections, and the precision is the
//! sweep period: a quiet connection is closed between one timeout and one
//! timeout plus a period after it went quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

/// What the request path tells the sweep about one connection.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests handed to the service whose response has not been sent yet.
    in_flight: AtomicU64,
    /// Responses fully sent (or abandoned) on this connection.
    finished: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A request starts; it is in flight until the guard is dropped, which
    /// the server does when the response body has been sent or abandoned.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

/// A request in flight on its connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watched connection.
struct Entry {
    activity: Arc<Activity>,
    task: AbortHandle,
    /// `finished` when the connection was last seen quiet.
    finished: u64,
    /// Since when it has been seen quiet (no request in flight, none finished).
    quiet_since: Instant,
}

/// A worker's watched connections. Owned by its accept loop: no locks.
pub struct Watch {
    timeout: Duration,
    entries: Vec<Entry>,
    /// At this many entries, [`Watch::add`] first forgets ended connections.
    prune_at: usize,
}

/// The least `prune_at`: ended connections are forgotten at least this
/// often between sweeps.
const PRUNE_MIN: usize = 1024;

impl Watch {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            entries: Vec::new(),
            prune_at: PRUNE_MIN,
        }
    }

    /// How often [`Watch::sweep`] should run: a quarter of the timeout,
    /// between 10 ms and 1 s.
    pub fn period(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Watches a connection just accepted: `task` serves it, `activity` is
    /// what its service reports.
    ///
    /// An `AbortHandle` keeps its task's allocation (the size of the
    /// connection's future) until it is dropped, so with many short
    /// connections the ended ones are also forgotten here, whenever the list
    /// has doubled since the last time: amortised, a check per accept, and
    /// at most about twice the open connections (or 1024) kept between sweeps.
    pub fn add(&mut self, activity: Arc<Activity>, task: AbortHandle) {
        if self.entries.len() >= self.prune_at {
            self.entries.retain(|e| !e.task.is_finished());
            self.prune_at = (self.entries.len() * 2).max(PRUNE_MIN);
        }
        self.entries.push(Entry {
            activity,
            task,
            finished: 0,
            quiet_since: Instant::now(),
        });
    }

    /// Connections watched (open, or closed since the last sweep).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the connections that ended and closes those quiet for the
    /// whole timeout. Returns how many were closed.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let mut closed = 0;
        self.entries.retain_mut(|e| {
            if e.task.is_finished() {
                return false;
            }
            let finished = e.activity.finished();
            if e.activity.in_flight() > 0 || finished != e.finished {
                // Busy since the last look: quiet from now on, at the earliest.
                e.finished = finished;
                e.quiet_since = now;
                return true;
            }
            if now.saturating_duration_since(e.quiet_since) >= timeout {
                e.task.abort();
                closed += 1;
                return false;
            }
            true
        });
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task standing in for a connection: pending until aborted.
    fn connection() -> AbortHandle {
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_closed_after_the_timeout() {
        let mut watch = Watch::new(Duration::from_secs(30));
        let task = connection();
        watch.add(Activity::new(), task.clone());
        let start = Instant::now();
        assert_eq!(watch.sweep(start + Duration::from_secs(29)), 0);
        assert_eq!(watch.sweep(start + Duration::from_secs(30)), 1);
        assert!(watch.is_empty());
        tokio::task::yield_now().await;
        assert!(task.is_finished(), "the connection's task was aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long_it_takes() {
        let mut watch = Watch::new(Duration::from_secs(30));
        let activity = Activity::new();
        let task = connection();
        watch.add(activity.clone(), task.clone());
        let start = Instant::now();
        let request = activity.begin();
        for minute in 1..=10 {
            assert_eq!(watch.sweep(start + Duration::from_secs(60 * minute)), 0);
        }
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(request);
        // Quiet from the first sweep that sees the request done.
        let done = start + Duration::from_secs(601);
        assert_eq!(watch.sweep(done), 0);
        assert_eq!(watch.sweep(done + Duration::from_secs(29)), 0);
        assert_eq!(watch.sweep(done + Duration::from_secs(30)), 1);
        assert!(watch.is_empty());
        tokio::task::yield_now().await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_between_sweeps_count_as_activity() {
        let mut watch = Watch::new(Duration::from_secs(30));
        let activity = Activity::new();
        watch.add(activity.clone(), connection());
        let start = Instant::now();
        for i in 1..=10 {
            drop(activity.begin());
            assert_eq!(watch.sweep(start + Duration::from_secs(25 * i)), 0, "sweep {i}");
        }
        assert_eq!(watch.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_connections_are_forgotten() {
        let mut watch = Watch::new(Duration::from_secs(30));
        let task = tokio::spawn(async {});
        watch.add(Activity::new(), task.abort_handle());
        task.await.unwrap();
        assert_eq!(watch.sweep(Instant::now()), 0);
        assert!(watch.is_empty());
    }

    #[tokio::test]
    async fn many_short_connections_are_forgotten_between_sweeps() {
        let mut watch = Watch::new(Duration::from_secs(30));
        let open = connection();
        watch.add(Activity::new(), open.clone());
        for _ in 0..5000 {
            let task = tokio::spawn(async {});
            let handle = task.abort_handle();
            task.await.unwrap();
            watch.add(Activity::new(), handle);
        }
        assert!(watch.len() <= PRUNE_MIN + 1, "{} entries kept", watch.len());
        // The open connection is still watched.
        assert_eq!(watch.sweep(Instant::now() + Duration::from_secs(30)), 1);
        tokio::task::yield_now().await;
        assert!(open.is_finished());
    }

    #[test]
    fn the_period_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(Watch::new(Duration::from_secs(30)).period(), Duration::from_secs(1));
        assert_eq!(Watch::new(Duration::from_secs(2)).period(), Duration::from_millis(500));
        assert_eq!(Watch::new(Duration::from_millis(1)).period(), Duration::from_millis(10));
    }
}
