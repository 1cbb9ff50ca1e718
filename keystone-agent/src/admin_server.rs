//! The admin API's HTTP server, bounded so that its clients cannot take what the agent
//! needs to forward traffic (see [`crate::open_files`]):
//!
//! - at most [`Limits::max_connections`] connections at once; one more takes the
//!   slot of the connection idle the longest (closed: `idle.rs`), or, when every one
//!   has a request in progress, is answered 503 and closed at once, so it holds no
//!   descriptor;
//! - a request's headers must arrive within [`Limits::header_read_timeout`] (on a
//!   kept-alive connection too, so an idle one is closed), its body within
//!   [`crate::api::BODY_READ_TIMEOUT`];
//! - an accept error such as EMFILE pauses accepting briefly instead of spinning.
//!
//! HTTP/1.1 only: every client of the API (keystone-ctl, curl, Prometheus) speaks it.

mod idle;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use hyper::{server::conn::http1, service::Service as _};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use prometheus::{IntCounter, IntGauge, Registry, core::Collector};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use self::idle::Connections;

/// How long a client has to send a request's headers (unless [`Limits`] says).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client, or many, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}
/// Pause after an accept error (out of descriptors, say) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a new connection waits for the slot of the idle one closed for it.
const IDLE_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// At most one warning per this period for each kind of refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

const STATIC_METRIC: &str = "metric definitions are static and valid";

/// The server's metrics; [`ServerMetrics::register`] adds them to the agent's registry.
#[derive(Clone)]
pub struct ServerMetrics {
    open: IntGauge,
    refused: IntCounter,
    closed_idle: IntCounter,
    accept_errors: IntCounter,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let counter = |name, help| IntCounter::new(name, help).expect(STATIC_METRIC);
        ServerMetrics {
            open: IntGauge::new(
                "keystone_admin_connections",
                "Admin API connections open now.",
            )
            .expect(STATIC_METRIC),
            refused: counter(
                "keystone_admin_connections_refused_total",
                "Admin API connections closed at once because the connection limit was reached \
                 and every open one had a request in progress.",
            ),
            closed_idle: counter(
                "keystone_admin_connections_evicted_total",
                "Idle admin API connections closed at the connection limit to make room for a new one.",
            ),
            accept_errors: counter(
                "keystone_admin_accept_errors_total",
                "Failed accepts on the admin port (e.g. the agent is out of descriptors).",
            ),
        }
    }
}

impl ServerMetrics {
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        let all: [Box<dyn Collector>; 4] = [
            Box::new(self.open.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.closed_idle.clone()),
            Box::new(self.accept_errors.clone()),
        ];
        all.into_iter().try_for_each(|c| registry.register(c))
    }
}

/// Logs at most once per [`WARN_EVERY`], counting what it did not log.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// `Some(occurrences since the last log)` when it is time to log again.
    fn due(&mut self) -> Option<u64> {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Answer for a connection over the limit; best effort, it is closed right after.
fn over_limit_answer(limit: usize) -> String {
    let body =
        format!(r#"{{"error":"too many admin API connections (limit {limit}); try again later"}}"#);
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the open
/// connections finish their requests (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ServerMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = Arc::new(Connections::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let (mut refusals, mut accept_errors) = (Throttle::default(), Throttle::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                metrics.accept_errors.inc();
                if let Some(count) = accept_errors.due() {
                    tracing::error!(error = %e, count, "cannot accept admin API connections");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => take_idle_slot(&connections, &slots, &metrics.closed_idle).await,
        };
        let Some(slot) = slot else {
            metrics.refused.inc();
            if let Some(count) = refusals.due() {
                tracing::warn!(
                    limit = max_connections,
                    count,
                    "admin API connection limit reached, every connection busy; closing new connections at once"
                );
            }
            refuse(stream, max_connections);
            continue;
        };
        let (tracked, close) = connections.open();
        let tracked = Arc::new(tracked);
        let service = {
            let (inner, tracked) = (TowerToHyperService::new(app.clone()), tracked.clone());
            hyper::service::service_fn(move |request| {
                let in_progress = tracked.request();
                let answer = inner.call(request);
                async move {
                    let answer = answer.await;
                    drop(in_progress);
                    answer
                }
            })
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            // A client that goes away or is too slow is its problem, not an error here.
            // Closed for a new connection: dropping it closes the socket.
            tokio::select! {
                _ = conn => {}
                _ = close => {}
            }
            drop(tracked);
            open.dec();
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

/// At the limit: closes the connection idle the longest and takes its slot once that
/// connection's task gave it back; `None` when every connection has a request in
/// progress.
async fn take_idle_slot(
    connections: &Connections,
    slots: &Arc<Semaphore>,
    closed_idle: &IntCounter,
) -> Option<OwnedSemaphorePermit> {
    if !connections.close_idlest() {
        return None;
    }
    closed_idle.inc();
    let slot = tokio::time::timeout(IDLE_CLOSE_WAIT, slots.clone().acquire_owned()).await;
    slot.ok()?.ok()
}

fn refuse(stream: TcpStream, limit: usize) {
    // Never waits: a client that does not read loses the answer, not a descriptor.
    let _ = stream.try_write(over_limit_answer(limit).as_bytes());
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads until the server closes the connection (bounded: a test must end).
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("the server did not close the connection")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Serves `app` with a limit of 4 connections and a 3 s header timeout: long
    /// enough that no idle connection times out while a loaded machine opens the
    /// others (at 300 ms one could, freeing the slot the test wants evicted), short
    /// enough for [`read_to_close`]'s bound.
    async fn serve_four(app: Router) -> (std::net::SocketAddr, ServerMetrics) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(3),
        };
        let metrics = ServerMetrics::default();
        tokio::spawn(serve(
            listener,
            app,
            limits,
            metrics.clone(),
            std::future::pending(),
        ));
        (addr, metrics)
    }

    /// Polls `done` every 10 ms for at most 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let mut waited = Duration::ZERO;
        while !done() {
            assert!(waited < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        read_to_close(&mut client).await
    }

    #[tokio::test]
    async fn at_the_limit_a_new_connection_takes_the_slot_of_the_idlest() {
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (addr, metrics) = serve_four(app).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
            let n = idle.len() as i64;
            until("the connection to be served", || metrics.open.get() == n).await;
        }
        // A slowloris client among them: half a request line, never finished.
        idle[1].write_all(b"GET / HT").await.unwrap();

        let answer = get(addr, "/").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        assert_eq!((metrics.closed_idle.get(), metrics.refused.get()), (1, 0));
        // The oldest idle one was closed for it; the others go at their header timeout.
        assert_eq!(read_to_close(&mut idle[0]).await, "");
        for stream in &mut idle[1..] {
            read_to_close(stream).await;
        }
    }

    #[tokio::test]
    async fn when_every_connection_has_a_request_in_progress_a_new_one_is_refused() {
        let release = Arc::new(Semaphore::new(0));
        let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let (release, entered) = (release.clone(), entered.clone());
            Router::new().route(
                "/wait",
                axum::routing::get(move || async move {
                    entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _permit = release.acquire().await;
                    "done"
                }),
            )
        };
        let (addr, metrics) = serve_four(app).await;
        let busy: Vec<_> = (0..4).map(|_| tokio::spawn(get(addr, "/wait"))).collect();
        until("four requests in progress", || {
            entered.load(std::sync::atomic::Ordering::SeqCst) == 4
        })
        .await;

        let mut fifth = TcpStream::connect(addr).await.unwrap();
        let answer = read_to_close(&mut fifth).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("limit 4"), "{answer}");
        assert_eq!((metrics.refused.get(), metrics.closed_idle.get()), (1, 0));

        release.add_permits(4);
        for request in busy {
            let answer = request.await.unwrap();
            assert!(answer.ends_with("done"), "{answer}");
        }
    }
}
