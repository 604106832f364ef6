//! Client connections' bookkeeping: idle and send timeouts, and the limit
//! on open connections.
//!
//! - **Idle** (`server.header_read_timeout`): a connection with no request
//!   in flight must send its next request head within the timeout, counted
//!   from its accept or from the end of its last response; otherwise it is
//!   closed gracefully (an HTTP/2 client gets a GOAWAY first). That bounds
//!   idle keep-alive connections and slowloris clients alike, and never
//!   touches a request being served, a slow upstream or a long download.
//! - **Send** (`server.send_timeout`, nginx's `send_timeout`): a connection
//!   whose response hyper holds a frame of, and has not come back for the
//!   next one for the whole timeout, has a client that stopped reading; it
//!   is cut, which also frees the backend connection behind it.
//! - **Limit** (`server.max_connections`, over all workers): each open
//!   connection holds a [`Slot`]. At the limit, a worker closes its idle
//!   keep-alive connections to make room, as nginx does; when none is idle,
//!   the new connection is closed at once. A WebSocket tunnel keeps its
//!   connection's slot for as long as it lives.
//!
//! hyper's own `header_read_timeout` does the idle part with a timer armed
//! and dropped on every request (an allocation, a clock read and a
//! timer-wheel insert and removal each time). Here the request path only
//! bumps counters of its connection ([`Activity`]); each worker's accept
//! loop sweeps its connections a few times per timeout ([`Watch::sweep`]).
//! The cost moves from every request to a sweep over the open connections,
//! and the precision is the sweep period: a quiet connection is closed
//! between one timeout and one timeout plus a period after it went quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// What the request path tells the sweep about one connection.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests handed to the service whose response has not been sent yet.
    in_flight: AtomicU64,
    /// Responses fully sent (or abandoned) on this connection.
    finished: AtomicU64,
    /// Response frames handed to hyper.
    sent_frames: AtomicU64,
    /// hyper holds a frame it has not finished writing (it has not asked
    /// for the next one yet).
    sending: AtomicBool,
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

impl InFlight {
    /// hyper asks for the next response frame: the last one is written.
    pub fn polled(&self) {
        self.0.sending.store(false, Ordering::Relaxed);
    }

    /// hyper got a frame to write.
    pub fn got_frame(&self) {
        self.0.sent_frames.fetch_add(1, Ordering::Relaxed);
        self.0.sending.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.sending.store(false, Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open client connections of the whole process, against
/// `server.max_connections`.
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for a new connection, or `None` at the limit.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        taken.is_ok().then(|| Slot {
            _held: Arc::new(SlotGuard(self.clone())),
        })
    }

    /// A place even at the limit (the connection that idle ones were
    /// closed for: they are about to give theirs back).
    pub fn force(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot {
            _held: Arc::new(SlotGuard(self.clone())),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open connection's place; its clones (a WebSocket tunnel's) keep it.
#[derive(Debug, Clone)]
pub struct Slot {
    _held: Arc<SlotGuard>,
}

#[derive(Debug)]
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Idle, or making room at `server.max_connections`: a short grace.
    Idle,
    /// The worker stops: whatever is in flight finishes.
    Stop,
}

/// Asks one connection to close gracefully; its task waits on
/// [`Close::signalled`] next to the connection. Polled at every wake of the
/// connection, so it is a flag and a waker: a load, and a waker
/// registration, where a `CancellationToken` takes a lock.
#[derive(Clone, Default)]
pub struct Close(Arc<CloseState>);

#[derive(Default)]
struct CloseState {
    /// 0 until asked; then 1 + the [`Closing`] reason.
    why: std::sync::atomic::AtomicU8,
    waker: AtomicWaker,
}

impl Close {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the connection to close, for `why` (the first reason stays).
    pub fn close(&self, why: Closing) {
        let code = match why {
            Closing::Idle => 1,
            Closing::Stop => 2,
        };
        if self
            .0
            .why
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.0.waker.wake();
        }
    }

    /// Whether the connection was asked to close.
    #[cfg(test)]
    pub fn is_closing(&self) -> bool {
        self.0.why.load(Ordering::Acquire) != 0
    }

    fn reason(&self) -> Option<Closing> {
        match self.0.why.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Closing::Idle),
            _ => Some(Closing::Stop),
        }
    }

    /// Resolves when the connection is asked to close, with the reason.
    pub fn signalled(&self) -> impl Future<Output = Closing> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(why) = self.reason() {
                return std::task::Poll::Ready(why);
            }
            self.0.waker.register(cx.waker());
            match self.reason() {
                Some(why) => std::task::Poll::Ready(why),
                None => std::task::Poll::Pending,
            }
        })
    }
}

/// One watched connection.
struct Entry {
    activity: Arc<Activity>,
    /// Asks the connection to close gracefully.
    close: Close,
    task: AbortHandle,
    /// `finished` when the connection was last seen quiet.
    finished: u64,
    /// Since when it has been seen quiet (no request in flight, none finished).
    quiet_since: Instant,
    /// `sent_frames` when hyper was last seen holding a frame, and since when.
    stuck: Option<(u64, Instant)>,
}

impl Entry {
    fn is_quiet(&self) -> bool {
        self.activity.in_flight() == 0
    }
}

/// A worker's watched connections. Owned by its accept loop: no locks.
pub struct Watch {
    idle_timeout: Duration,
    send_timeout: Duration,
    entries: Vec<Entry>,
    /// At this many entries, [`Watch::add`] first forgets ended connections.
    prune_at: usize,
}

/// The least `prune_at`: ended connections are forgotten at least this
/// often between sweeps.
const PRUNE_MIN: usize = 1024;

/// At most this many idle connections are closed to make room for one new
/// connection (nginx drains 32 at a time too).
const DRAIN_BATCH: usize = 32;

/// How often a sweep must run for `timeout` to be kept: a quarter of it,
/// between 10 ms and 1 s. A timeout kept by a sweep fires up to one period
/// late, never early.
pub(crate) fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Watch {
    pub fn new(idle_timeout: Duration, send_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            send_timeout,
            entries: Vec::new(),
            prune_at: PRUNE_MIN,
        }
    }

    /// How often [`Watch::sweep`] should run, for the shorter timeout
    /// ([`sweep_period`]).
    pub fn period(&self) -> Duration {
        sweep_period(self.idle_timeout.min(self.send_timeout))
    }

    /// Watches a connection just accepted: `task` serves it, `close` asks
    /// it to close gracefully, `activity` is what its service reports.
    ///
    /// An `AbortHandle` keeps its task's allocation (the size of the
    /// connection's future) until it is dropped, so with many short
    /// connections the ended ones are also forgotten here, whenever the list
    /// has doubled since the last time: amortised, a check per accept, and
    /// at most about twice the open connections (or 1024) kept between sweeps.
    pub fn add(&mut self, activity: Arc<Activity>, close: Close, task: AbortHandle) {
        if self.entries.len() >= self.prune_at {
            self.entries.retain(|e| !e.task.is_finished());
            self.prune_at = (self.entries.len() * 2).max(PRUNE_MIN);
        }
        self.entries.push(Entry {
            activity,
            close,
            task,
            finished: 0,
            quiet_since: Instant::now(),
            stuck: None,
        });
    }

    /// Connections watched (open, or closed since the last sweep).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the connections that ended, closes those quiet for the idle
    /// timeout (gracefully) and cuts those whose client has not read for the
    /// send timeout. Returns how many were closed and cut.
    pub fn sweep(&mut self, now: Instant) -> (usize, usize) {
        let (idle_timeout, send_timeout) = (self.idle_timeout, self.send_timeout);
        let (mut closed, mut cut) = (0, 0);
        self.entries.retain_mut(|e| {
            if e.task.is_finished() {
                return false;
            }
            let a = &e.activity;
            if a.sending.load(Ordering::Relaxed) {
                let frames = a.sent_frames.load(Ordering::Relaxed);
                match e.stuck {
                    Some((f, since)) if f == frames => {
                        if now.saturating_duration_since(since) >= send_timeout {
                            e.task.abort();
                            cut += 1;
                            return false;
                        }
                    }
                    _ => e.stuck = Some((frames, now)),
                }
            } else {
                e.stuck = None;
            }
            let finished = a.finished();
            if a.in_flight() > 0 || finished != e.finished {
                // Busy since the last look: quiet from now on, at the earliest.
                e.finished = finished;
                e.quiet_since = now;
                return true;
            }
            if now.saturating_duration_since(e.quiet_since) >= idle_timeout {
                e.close.close(Closing::Idle);
                closed += 1;
                return false;
            }
            true
        });
        (closed, cut)
    }

    /// Asks every open connection to finish what it serves and close (the
    /// worker stops).
    pub fn stop_all(&self) {
        for e in &self.entries {
            e.close.close(Closing::Stop);
        }
    }

    /// Closes up to a batch of idle connections, the longest quiet first,
    /// to make room at `server.max_connections`. Returns how many.
    pub fn close_idle(&mut self) -> usize {
        let mut idle: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.entries[i].task.is_finished() && self.entries[i].is_quiet())
            .collect();
        idle.sort_by_key(|&i| self.entries[i].quiet_since);
        idle.truncate(DRAIN_BATCH);
        for &i in &idle {
            self.entries[i].close.close(Closing::Idle);
        }
        idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    /// A task standing in for a connection: pending until aborted or
    /// asked to close.
    fn connection() -> (Close, AbortHandle) {
        let close = Close::new();
        let c = close.clone();
        let task = tokio::spawn(async move { c.signalled().await });
        (close, task.abort_handle())
    }

    fn watch() -> Watch {
        Watch::new(T, T)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_closed_gracefully_after_the_timeout() {
        let mut watch = watch();
        let (close, task) = connection();
        watch.add(Activity::new(), close.clone(), task.clone());
        let start = Instant::now();
        assert_eq!(watch.sweep(start + Duration::from_secs(29)), (0, 0));
        assert_eq!(watch.sweep(start + Duration::from_secs(30)), (1, 0));
        assert!(watch.is_empty());
        assert!(close.is_closing(), "asked to close, not aborted");
        tokio::task::yield_now().await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long_it_takes() {
        let mut watch = watch();
        let activity = Activity::new();
        let (close, task) = connection();
        watch.add(activity.clone(), close, task.clone());
        let start = Instant::now();
        let request = activity.begin();
        for minute in 1..=10 {
            assert_eq!(watch.sweep(start + Duration::from_secs(60 * minute)), (0, 0));
        }
        assert!(!task.is_finished());
        drop(request);
        // Quiet from the first sweep that sees the request done.
        let done = start + Duration::from_secs(601);
        assert_eq!(watch.sweep(done), (0, 0));
        assert_eq!(watch.sweep(done + Duration::from_secs(29)), (0, 0));
        assert_eq!(watch.sweep(done + Duration::from_secs(30)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_between_sweeps_count_as_activity() {
        let mut watch = watch();
        let activity = Activity::new();
        let (close, task) = connection();
        watch.add(activity.clone(), close, task);
        let start = Instant::now();
        for i in 1..=10 {
            drop(activity.begin());
            assert_eq!(watch.sweep(start + Duration::from_secs(25 * i)), (0, 0), "sweep {i}");
        }
        assert_eq!(watch.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
        let mut watch = watch();
        let activity = Activity::new();
        let (close, task) = connection();
        watch.add(activity.clone(), close.clone(), task.clone());
        let start = Instant::now();
        let request = activity.begin();
        // A download read steadily: a frame at a time, never stuck.
        for s in 1..=20 {
            request.polled();
            request.got_frame();
            assert_eq!(watch.sweep(start + Duration::from_secs(10 * s)), (0, 0));
        }
        // Then hyper holds a frame the client never takes.
        let stalled = start + Duration::from_secs(200);
        assert_eq!(watch.sweep(stalled + Duration::from_secs(29)), (0, 0));
        assert_eq!(watch.sweep(stalled + Duration::from_secs(59)), (0, 1));
        assert!(!close.is_closing(), "cut, not closed gracefully");
        tokio::task::yield_now().await;
        assert!(task.is_finished());
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_connections_are_forgotten() {
        let mut watch = watch();
        let task = tokio::spawn(async {});
        watch.add(Activity::new(), Close::new(), task.abort_handle());
        task.await.unwrap();
        assert_eq!(watch.sweep(Instant::now()), (0, 0));
        assert!(watch.is_empty());
    }

    #[tokio::test]
    async fn many_short_connections_are_forgotten_between_sweeps() {
        let mut watch = watch();
        let (close, open) = connection();
        watch.add(Activity::new(), close, open.clone());
        for _ in 0..5000 {
            let task = tokio::spawn(async {});
            let handle = task.abort_handle();
            task.await.unwrap();
            watch.add(Activity::new(), Close::new(), handle);
        }
        assert!(watch.len() <= PRUNE_MIN + 1, "{} entries kept", watch.len());
        // The open connection is still watched.
        assert_eq!(watch.sweep(Instant::now() + T), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_idle_connections_make_room_busy_ones_do_not() {
        let slots = Slots::new(2);
        let mut watch = watch();
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert!(slots.take().is_none(), "the limit holds");
        let busy = Activity::new();
        let _request = busy.begin();
        let (busy_close, busy_task) = connection();
        watch.add(busy, busy_close.clone(), busy_task);
        let (idle_close, idle_task) = connection();
        watch.add(Activity::new(), idle_close.clone(), idle_task);
        assert_eq!(watch.close_idle(), 1);
        assert!(idle_close.is_closing() && !busy_close.is_closing());
        drop(b);
        assert!(slots.take().is_some(), "a closed connection gives its place back");
        let tunnel = a.clone();
        drop(a);
        assert_eq!(slots.open(), 1, "a tunnel keeps its connection's place");
        drop(tunnel);
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn the_period_is_a_quarter_of_the_shorter_timeout_within_bounds() {
        assert_eq!(Watch::new(T, T).period(), Duration::from_secs(1));
        assert_eq!(
            Watch::new(Duration::from_secs(2), T).period(),
            Duration::from_millis(500)
        );
        assert_eq!(
            Watch::new(T, Duration::from_secs(2)).period(),
            Duration::from_millis(500)
        );
        assert_eq!(
            Watch::new(Duration::from_millis(1), T).period(),
            Duration::from_millis(10)
        );
    }
}
