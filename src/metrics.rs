//! Prometheus metrics, all named `wxgate_*`, in one registry served by the
//! admin listener.
//!
//! The per-request counters and the latency histogram are the hot path: each
//! worker thread counts into thread-local buffers (prometheus' `local`
//! metrics) and folds them into the shared registry at most once a second, so
//! requests on two cores never fight over a cache line. A worker also flushes
//! on a one-second tick and when it stops, so an idle worker's counts still
//! show up; a scrape may therefore lag by up to a second.
//!
//! The in-flight gauge is kept the same way (each thread adds its started
//! minus finished requests at the flush), and so are the login and phone
//! outcome counters. Everything else (WeChat calls, upstream errors) is rare
//! enough to count directly.

use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What kind of route a request took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Passthrough,
    Login,
    Phone,
    Logout,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Passthrough => "passthrough",
            RouteKind::Login => "login",
            RouteKind::Phone => "phone",
            RouteKind::Logout => "logout",
        }
    }
    const ALL: [RouteKind; 4] = [
        RouteKind::Passthrough,
        RouteKind::Login,
        RouteKind::Phone,
        RouteKind::Logout,
    ];
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    upstream_errors: IntCounterVec,
    weixin_calls: IntCounterVec,
    weixin_duration: HistogramVec,
    sessions: IntGauge,
    code_cache_hits: IntCounterVec,
    logins: IntCounterVec,
    phone: IntCounterVec,
    access_tokens: IntCounterVec,
    spoofed_headers: IntCounter,
    connections_refused: IntCounter,
    client_connections: IntGauge,
    store_up: IntGauge,
    store_errors: IntCounterVec,
    log_lines_dropped: IntCounter,
    info: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("wxgate".into()), None).expect("static registry prefix is valid");
    macro_rules! reg {
        ($m:expr) => {{
            let m = $m.expect("static metric definition is valid");
            registry.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }};
    }
    let m = Metrics {
        requests: reg!(IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by route kind and HTTP status."),
            &["route", "status"]
        )),
        duration: reg!(HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to the response head, by route kind.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"]
        )),
        in_flight: reg!(IntGauge::new("in_flight_requests", "Requests being handled now.")),
        upstream_errors: reg!(IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed upstream requests, by kind (connect, io, timeout)."
            ),
            &["kind"]
        )),
        weixin_calls: reg!(IntCounterVec::new(
            Opts::new(
                "weixin_calls_total",
                "Calls to WeChat's API, by app, API and outcome (ok, an errcode, timeout...)."
            ),
            &["app", "api", "outcome"]
        )),
        weixin_duration: reg!(HistogramVec::new(
            HistogramOpts::new(
                "weixin_call_duration_seconds",
                "Latency of calls to WeChat's API, by app and API."
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app", "api"]
        )),
        sessions: reg!(IntGauge::new("sessions", "Live sessions in the session store.")),
        code_cache_hits: reg!(IntCounterVec::new(
            Opts::new(
                "login_code_cache_hits_total",
                "Logins answered from the code cache (a retried login) without calling WeChat, by app."
            ),
            &["app"]
        )),
        logins: reg!(IntCounterVec::new(
            Opts::new(
                "logins_total",
                "Login requests, by app and outcome (an error code, or ok)."
            ),
            &["app", "outcome"]
        )),
        phone: reg!(IntCounterVec::new(
            Opts::new(
                "phone_requests_total",
                "Phone requests, by app, flow (decrypt, code) and outcome (ok, previous_key, an error code)."
            ),
            &["app", "flow", "outcome"]
        )),
        access_tokens: reg!(IntCounterVec::new(
            Opts::new(
                "access_token_fetches_total",
                "Access tokens fetched from WeChat, by app and reason."
            ),
            &["app", "reason"]
        )),
        spoofed_headers: reg!(IntCounter::new(
            "spoofed_headers_removed_total",
            "Client-sent copies of identity, phone or session headers removed."
        )),
        client_connections: reg!(IntGauge::new(
            "client_connections",
            "Client connections open now (against server.max_connections), WebSocket tunnels included."
        )),
        store_up: reg!(IntGauge::new(
            "session_store_up",
            "1 while the shared session store (Redis) answers, 0 after a failed command; 1 with the memory store."
        )),
        store_errors: reg!(IntCounterVec::new(
            Opts::new(
                "session_store_errors_total",
                "Session store commands that failed or timed out, by operation."
            ),
            &["op"]
        )),
        log_lines_dropped: reg!(IntCounter::new(
            "log_lines_dropped_total",
            "Log lines dropped because the log writer's queue was full (the writer never blocks a request)."
        )),
        connections_refused: reg!(IntCounter::new(
            "connections_refused_total",
            "Client connections closed at once because server.max_connections were open and none was idle."
        )),
        info: reg!(IntGaugeVec::new(
            Opts::new("build_info", "wxgate's version and the commit it was built from."),
            &["version", "commit"]
        )),
        registry,
    };
    m.store_up.set(1);
    m.info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("WXGATE_COMMIT")])
        .set(1);
    m
});

/// Forces the registry into existence, so that `/metrics` shows every family
/// (at zero) from the start.
pub fn init() {
    LazyLock::force(&METRICS);
}

struct LocalRequestMetrics {
    /// A short list (one entry per route and status seen), the most common
    /// first after a while: a linear search beats hashing the key.
    counters: Vec<((RouteKind, u16), LocalIntCounter)>,
    durations: [LocalHistogram; 4],
    /// Login and phone outcomes by (family, app, label, label): a short
    /// list, searched by the labels' addresses first (each call site passes
    /// the same `&'static str`s), which costs less than hashing them (SipHash
    /// over four strings was about 480 instructions per phone request).
    labeled: Vec<(LabeledKey, LocalIntCounter)>,
    /// Requests started minus finished on this thread since the last flush.
    in_flight_delta: i64,
    last_flush: Instant,
}

type LabeledKey = (Family, &'static str, &'static str, &'static str);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Login,
    Phone,
}

thread_local! {
    static LOCAL: RefCell<Option<LocalRequestMetrics>> = const { RefCell::new(None) };
}

const FLUSH_EVERY: Duration = Duration::from_secs(1);

fn with_local<R>(f: impl FnOnce(&mut LocalRequestMetrics) -> R) -> R {
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let local = slot.get_or_insert_with(|| LocalRequestMetrics {
            counters: Vec::new(),
            durations: RouteKind::ALL.map(|r| METRICS.duration.with_label_values(&[r.as_str()]).local()),
            labeled: Vec::new(),
            in_flight_delta: 0,
            last_flush: Instant::now(),
        });
        f(local)
    })
}

fn route_index(route: RouteKind) -> usize {
    match route {
        RouteKind::Passthrough => 0,
        RouteKind::Login => 1,
        RouteKind::Phone => 2,
        RouteKind::Logout => 3,
    }
}

/// A request started.
pub fn request_started() {
    with_local(|l| l.in_flight_delta += 1);
}

/// A request's response head is ready (or it failed).
pub fn request_finished(route: RouteKind, status: u16, elapsed: Duration, now: Instant) {
    with_local(|l| {
        l.in_flight_delta -= 1;
        let key = (route, status);
        match l.counters.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                l.counters[i].1.inc();
                // Keeps the busiest keys in front.
                if i > 0 && l.counters[i].1.get() > l.counters[i - 1].1.get() {
                    l.counters.swap(i, i - 1);
                }
            }
            None => {
                let status = status.to_string();
                let counter = METRICS
                    .requests
                    .with_label_values(&[route.as_str(), status.as_str()])
                    .local();
                counter.inc();
                l.counters.push((key, counter));
            }
        }
        l.durations[route_index(route)].observe(elapsed.as_secs_f64());
        if now.duration_since(l.last_flush) >= FLUSH_EVERY {
            flush(l, now);
        }
    });
}

fn flush(l: &mut LocalRequestMetrics, now: Instant) {
    for (_, c) in &mut l.counters {
        c.flush();
    }
    for (_, c) in &mut l.labeled {
        c.flush();
    }
    METRICS.in_flight.add(std::mem::take(&mut l.in_flight_delta));
    for h in &mut l.durations {
        h.flush();
    }
    l.last_flush = now;
}

/// Folds this thread's buffered counts into the registry.
pub fn flush_local() {
    with_local(|l| flush(l, Instant::now()));
}

pub fn upstream_error(kind: &'static str) {
    METRICS.upstream_errors.with_label_values(&[kind]).inc();
}

pub fn weixin_call(app: &str, api: &'static str, outcome: &str, elapsed: Duration) {
    METRICS.weixin_calls.with_label_values(&[app, api, outcome]).inc();
    METRICS
        .weixin_duration
        .with_label_values(&[app, api])
        .observe(elapsed.as_secs_f64());
}

pub fn code_cache_hit(app: &str) {
    METRICS.code_cache_hits.with_label_values(&[app]).inc();
}

fn inc_labeled(family: Family, app: &'static str, a: &'static str, b: &'static str) {
    with_local(|l| labeled_counter(&mut l.labeled, (family, app, a, b)).inc());
}

/// The local counter of `key`: found by the labels' addresses, else by
/// their text (the same label from another call site), else made.
fn labeled_counter(list: &mut Vec<(LabeledKey, LocalIntCounter)>, key: LabeledKey) -> &mut LocalIntCounter {
    let (family, app, a, b) = key;
    let same_address =
        |k: &LabeledKey| k.0 == family && std::ptr::eq(k.1, app) && std::ptr::eq(k.2, a) && std::ptr::eq(k.3, b);
    let i = match list.iter().position(|(k, _)| same_address(k)) {
        Some(i) => i,
        None => match list.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let counter = match family {
                    Family::Login => METRICS.logins.with_label_values(&[app, a]).local(),
                    Family::Phone => METRICS.phone.with_label_values(&[app, a, b]).local(),
                };
                list.push((key, counter));
                list.len() - 1
            }
        },
    };
    &mut list[i].1
}

/// The `app` label of a login that found no app (`unknown_app`, or a
/// request refused before its app was known).
pub const NO_APP: &str = "none";

/// `name` as a label value that lives as long as the process: app names
/// are interned once (a handful, from the configuration), so the hot
/// counters can key on `&'static str`.
pub fn app_label(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into());
    names.push(leaked);
    leaked
}

pub fn login(app: &'static str, outcome: &'static str) {
    inc_labeled(Family::Login, app, outcome, "");
}

pub fn phone(app: &'static str, flow: &'static str, outcome: &'static str) {
    inc_labeled(Family::Phone, app, flow, outcome);
}

pub fn access_token_fetch(app: &str, reason: &'static str) {
    METRICS.access_tokens.with_label_values(&[app, reason]).inc();
}

pub fn spoofed_header_removed() {
    METRICS.spoofed_headers.inc();
}

static LOG_DROPS: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> = std::sync::OnceLock::new();

/// The log writer's count of dropped lines, read at each scrape.
pub fn set_log_drop_counter(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = LOG_DROPS.set(counter);
}

pub fn connection_refused() {
    METRICS.connections_refused.inc();
}

pub fn session_store_up(up: bool) {
    METRICS.store_up.set(i64::from(up));
}

pub fn session_store_error(op: &'static str) {
    METRICS.store_errors.with_label_values(&[op]).inc();
}

pub fn set_client_connections(n: usize) {
    METRICS.client_connections.set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub fn set_sessions(n: u64) {
    METRICS.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// The registry in Prometheus' text format.
pub fn render() -> String {
    if let Some(drops) = LOG_DROPS.get() {
        // A counter that follows the writer's own (monotonic) count; one
        // scrape at a time moves it.
        static FOLLOW: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FOLLOW.lock().unwrap_or_else(|p| p.into_inner());
        let counter = &METRICS.log_lines_dropped;
        let dropped = u64::try_from(drops.dropped_lines()).unwrap_or(u64::MAX);
        counter.inc_by(dropped.saturating_sub(counter.get()));
    }
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a bad metric would be a bug.
    let mut families = METRICS.registry.gather();
    families.extend(PROCESS.gather());
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The standard `process_*` metrics (CPU seconds, resident and virtual
/// memory, open and maximum file descriptors, start time), unprefixed as
/// every Prometheus client exports them, so stock dashboards and alerts work.
static PROCESS: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    if let Err(e) = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
        tracing::warn!(error = %e, "no process metrics");
    }
    registry
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_reach_the_registry_after_a_flush() {
        init();
        request_started();
        request_finished(RouteKind::Phone, 422, Duration::from_millis(3), Instant::now());
        flush_local();
        let text = render();
        assert!(
            text.contains(r#"wxgate_requests_total{route="phone",status="422"}"#),
            "{text}"
        );
        assert!(text.contains("wxgate_request_duration_seconds_bucket"), "{text}");
        assert!(text.contains("wxgate_in_flight_requests"), "{text}");
        assert!(text.contains("wxgate_build_info"), "{text}");
    }

    #[test]
    fn a_labeled_counter_is_found_by_its_text_from_any_address() {
        init();
        let leak = |s: &str| -> &'static str { Box::leak(s.into()) };
        let mut list = Vec::new();
        let key = (Family::Phone, "unit-app", "encrypted", "ok");
        labeled_counter(&mut list, key).inc();
        // The same labels at other addresses: the same counter.
        let copy = (Family::Phone, leak("unit-app"), leak("encrypted"), leak("ok"));
        assert!(!std::ptr::eq(copy.1, key.1));
        labeled_counter(&mut list, copy).inc();
        labeled_counter(&mut list, key).inc();
        assert_eq!(list.len(), 1);
        // Other labels or another family: counters of their own.
        labeled_counter(&mut list, (Family::Phone, "unit-app", "encrypted", "failed")).inc();
        labeled_counter(&mut list, (Family::Login, "unit-app", "encrypted", "ok")).inc();
        assert_eq!(list.len(), 3);
        for (_, c) in &mut list {
            c.flush();
        }
        let text = render();
        assert!(
            text.contains(r#"wxgate_phone_requests_total{app="unit-app",flow="encrypted",outcome="ok"} 3"#),
            "{text}"
        );
    }
}
