//! Outbound deployment notifications: each event is `POST`ed as JSON to every
//! `notifications:` target subscribed to it.
//!
//! ```json
//! {"event": "step", "deployment": {...}, "sent_at": "2026-11-21T21:36:05Z"}
//! ```
//!
//! A target with a `secret` gets the inbound webhook's headers
//! (`X-Keystone-Timestamp`, `X-Keystone-Signature: sha256=…`, see [`crate::signing`]),
//! re-signed on every attempt. Each target has its own queue and delivery task, so one
//! slow receiver delays no other and a target sees its events in order. An attempt that
//! fails to connect or gets a 5xx is retried (4 attempts, backoff 0.5 s, 1 s, 2 s); a
//! 4xx (or 3xx) answer is final. Every failure is logged (the URL without its
//! credentials, see [`redact_url`]); nothing is reported back to the caller, for whom
//! `notify` never blocks. At a clean stop [`Notifier::flush`] delivers what is
//! queued (within a grace period) before the agent exits, so a deployment that
//! finished just before a SIGTERM is still reported.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use keystone_api::{Deployment, EventKind, Notification};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{config::NotificationTarget, secrets::redact_url, signing::signed_headers};

/// Events waiting per target; beyond this new events for that target are dropped
/// (and logged) rather than letting a dead receiver grow the agent's memory.
pub const QUEUE_CAPACITY: usize = 1024;

/// How deliveries are attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub first_backoff: Duration,
    /// Limit for one request (connect, send, answer).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }
}

struct Queue {
    target: NotificationTarget,
    tx: mpsc::Sender<Notification>,
}

fn same_target(a: &NotificationTarget, b: &NotificationTarget) -> bool {
    a.url == b.url && a.secret == b.secret && a.events == b.events
}

fn subscribed(target: &NotificationTarget, event: &str) -> bool {
    target.events.is_empty() || target.events.iter().any(|e| e == event)
}

/// Sends deployment events to the configured targets.
pub struct Notifier {
    queues: Mutex<Vec<Queue>>,
    /// Every delivery task started (also those of removed targets, which end once
    /// their queue is drained), for [`Notifier::flush`].
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Events queued whose delivery has not ended (delivered, refused or given up).
    pending: Arc<AtomicUsize>,
    client: ureq::Agent,
    retry: RetryPolicy,
}

impl Notifier {
    /// Starts one delivery task per target; must be called inside a Tokio runtime.
    pub fn new(targets: &[NotificationTarget]) -> Notifier {
        Notifier::with_retry(targets, RetryPolicy::default())
    }

    /// As `new`, with another retry policy (tests use short backoffs).
    pub fn with_retry(targets: &[NotificationTarget], retry: RetryPolicy) -> Notifier {
        let client = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(retry.request_timeout))
            .user_agent(concat!("keystone-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let notifier = Notifier {
            queues: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            pending: Arc::new(AtomicUsize::new(0)),
            client,
            retry,
        };
        notifier.update_targets(targets);
        notifier
    }

    /// Makes `targets` the live set (after a config reload). Unchanged targets keep
    /// their queue and order; a removed target's task delivers what it already had
    /// queued, then ends. Must be called inside a Tokio runtime.
    pub fn update_targets(&self, targets: &[NotificationTarget]) {
        let mut queues = self.queues.lock().expect("notifier lock poisoned");
        let mut old: Vec<Queue> = std::mem::take(&mut *queues);
        for target in targets {
            match old.iter().position(|q| same_target(&q.target, target)) {
                Some(i) => queues.push(old.swap_remove(i)),
                None => queues.push(self.spawn(target.clone())),
            }
        }
        // Dropping the remaining senders ends their tasks once their queues drain.
    }

    /// Targets currently configured.
    pub fn targets(&self) -> Vec<NotificationTarget> {
        self.queues
            .lock()
            .expect("notifier lock poisoned")
            .iter()
            .map(|q| q.target.clone())
            .collect()
    }

    /// Queues `event` with the deployment (keystone-api's view) for every subscribed
    /// target, and returns at once; `sent_at` is set on each attempt.
    pub fn notify(&self, event: EventKind, deployment: Deployment) {
        let queues = self.queues.lock().expect("notifier lock poisoned");
        for queue in queues
            .iter()
            .filter(|q| subscribed(&q.target, event.name()))
        {
            let item = Notification {
                event,
                deployment: deployment.clone(),
                sent_at: String::new(),
            };
            // Counted before it is queued: the worker may deliver it (and count it
            // done) before try_send returns.
            self.pending.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = queue.tx.try_send(item) {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    url = %redact_url(&queue.target.url),
                    event = event.name(),
                    reason = %e,
                    "notification dropped: the target's queue is full or closed"
                );
            }
        }
    }

    /// At a clean stop: no new events, and waits at most `grace` until every queued
    /// one is delivered (or refused, or given up after its retries). Returns how many
    /// were still undelivered then (logged: they are lost with the process).
    pub async fn flush(&self, grace: Duration) -> usize {
        // Dropping the senders ends each task once its queue is drained.
        drop(std::mem::take(
            &mut *self.queues.lock().expect("notifier lock poisoned"),
        ));
        let workers = std::mem::take(&mut *self.workers.lock().expect("notifier lock poisoned"));
        let finished = tokio::time::timeout(grace, async {
            for worker in workers {
                let _ = worker.await;
            }
        })
        .await;
        let left = self.pending.load(Ordering::SeqCst);
        if finished.is_err() && left > 0 {
            tracing::error!(
                undelivered = left,
                grace = ?grace,
                "notifications still undelivered when the agent stopped"
            );
        }
        left
    }

    fn spawn(&self, target: NotificationTarget) -> Queue {
        let (tx, mut rx) = mpsc::channel::<Notification>(QUEUE_CAPACITY);
        let client = self.client.clone();
        let retry = self.retry;
        let worker_target = target.clone();
        let pending = self.pending.clone();
        let worker = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                deliver(&client, &worker_target, &event, retry).await;
                pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let mut workers = self.workers.lock().expect("notifier lock poisoned");
        workers.retain(|w| !w.is_finished());
        workers.push(worker);
        Queue { target, tx }
    }
}

enum Outcome {
    Delivered,
    /// The receiver answered and said no: retrying will not change its mind.
    Refused(u16),
    /// Could not connect, timed out, or the receiver failed (5xx).
    Failed(String),
}

async fn deliver(
    client: &ureq::Agent,
    target: &NotificationTarget,
    event: &Notification,
    retry: RetryPolicy,
) {
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        match attempt_once(client, target, event).await {
            Outcome::Delivered => {
                tracing::debug!(url = %redact_url(&target.url), event = %event.event, attempt, "notification delivered");
                return;
            }
            Outcome::Refused(status) => {
                tracing::warn!(
                    url = %redact_url(&target.url),
                    event = %event.event,
                    attempt,
                    status,
                    "notification refused by the receiver; not retrying"
                );
                return;
            }
            Outcome::Failed(reason) if attempt < attempts => {
                let wait = retry.backoff(attempt);
                tracing::warn!(
                    url = %redact_url(&target.url),
                    event = %event.event,
                    attempt,
                    %reason,
                    retry_in = ?wait,
                    "notification failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Outcome::Failed(reason) => {
                tracing::error!(
                    url = %redact_url(&target.url),
                    event = %event.event,
                    attempts,
                    %reason,
                    "notification failed; giving up"
                );
            }
        }
    }
}

async fn attempt_once(
    client: &ureq::Agent,
    target: &NotificationTarget,
    event: &Notification,
) -> Outcome {
    let now = SystemTime::now();
    let body = Notification {
        sent_at: humantime::format_rfc3339_seconds(now).to_string(),
        ..event.clone()
    };
    let body = serde_json::to_vec(&body).expect("a notification serialises");
    let signature_headers = target
        .secret
        .as_ref()
        .map(|secret| signed_headers(secret.as_bytes(), now, &body));
    let client = client.clone();
    let url = target.url.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let mut request = client.post(&url).header("Content-Type", "application/json");
        for (name, value) in signature_headers.iter().flatten() {
            request = request.header(*name, value);
        }
        request.send(&body[..]).map(|r| r.status().as_u16())
    })
    .await;
    match sent {
        Ok(Ok(status)) if (200..300).contains(&status) => Outcome::Delivered,
        Ok(Ok(status)) if status >= 500 => {
            Outcome::Failed(format!("the receiver answered {status}"))
        }
        Ok(Ok(status)) => Outcome::Refused(status),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Failed(format!("the sending task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Arc};

    use axum::{
        Router,
        body::Bytes,
        extract::State,
        http::{HeaderMap, StatusCode},
        routing::post,
    };

    use serde_json::Value;

    use super::*;
    use crate::{
        signing::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
        webhook::WebhookVerifier,
    };

    const WAIT: Duration = Duration::from_secs(10);

    /// Headers, the body as JSON, and the body as sent (what a signature covers).
    type Request = (HeaderMap, Value, Bytes);
    type Received = mpsc::UnboundedReceiver<Request>;

    #[derive(Clone)]
    struct Script {
        statuses: Arc<Mutex<VecDeque<u16>>>,
        tx: mpsc::UnboundedSender<Request>,
    }

    /// A receiver on 127.0.0.1:0 answering `statuses` in turn (then 200), handing
    /// every request it gets to the returned channel.
    async fn receiver(statuses: &[u16]) -> (String, Received) {
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Script {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            tx,
        };
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(s): State<Script>, headers: HeaderMap, body: Bytes| async move {
                        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = s.tx.send((headers, value, body));
                        let status = s.statuses.lock().unwrap().pop_front().unwrap_or(200);
                        StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), rx)
    }

    async fn next(rx: &mut Received) -> Request {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no notification within the time limit")
            .expect("receiver closed")
    }

    fn target(url: &str, secret: Option<&str>, events: &[&str]) -> NotificationTarget {
        NotificationTarget {
            url: url.to_owned(),
            secret: secret.map(str::to_owned),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    fn deployment(id: &str, canary_percent: f64) -> Deployment {
        Deployment {
            id: id.to_owned(),
            canary_percent,
            ..Deployment::default()
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second() {
        let r = RetryPolicy::default();
        assert_eq!(
            (1..=3).map(|a| r.backoff(a)).collect::<Vec<_>>(),
            [500, 1000, 2000].map(Duration::from_millis)
        );
    }

    #[tokio::test]
    async fn signed_event_arrives_and_verifies() {
        let (url, mut rx) = receiver(&[]).await;
        let secret = "notification-secret-0123";
        let notifier = Notifier::with_retry(&[target(&url, Some(secret), &[])], fast());
        notifier.notify(EventKind::Started, deployment("d-1", 0.0));
        let (headers, body, raw) = next(&mut rx).await;
        assert_eq!(body["event"], "started");
        assert_eq!(body["deployment"]["id"], "d-1");
        let sent_at = body["sent_at"].as_str().unwrap();
        humantime::parse_rfc3339(sent_at).unwrap();
        // The receiver checks it exactly as the agent checks inbound webhooks.
        WebhookVerifier::new(secret, Duration::from_secs(300))
            .verify(&headers, &raw, SystemTime::now())
            .unwrap();
        assert_eq!(headers["content-type"], "application/json");
    }

    #[tokio::test]
    async fn target_without_secret_gets_no_signature() {
        let (url, mut rx) = receiver(&[]).await;
        let notifier = Notifier::with_retry(&[target(&url, None, &[])], fast());
        notifier.notify(EventKind::Promoted, deployment("d-2", 0.0));
        let (headers, body, _) = next(&mut rx).await;
        assert_eq!(body["event"], "promoted");
        assert!(!headers.contains_key(SIGNATURE_HEADER));
        assert!(!headers.contains_key(TIMESTAMP_HEADER));
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let (url, mut rx) = receiver(&[500, 503]).await;
        let notifier =
            Notifier::with_retry(&[target(&url, Some("s3cret-s3cret-s3cret"), &[])], fast());
        notifier.notify(EventKind::Step, deployment("d-3", 20.0));
        for _ in 0..3 {
            let (headers, body, _) = next(&mut rx).await;
            assert_eq!(body["event"], "step");
            assert!(
                headers.contains_key(SIGNATURE_HEADER),
                "every attempt is signed"
            );
        }
        // The third attempt succeeded: the next request is the next event, not a 4th try.
        notifier.notify(EventKind::Promoted, deployment("d-3", 0.0));
        let (_, body, _) = next(&mut rx).await;
        assert_eq!(body["event"], "promoted");
    }

    #[tokio::test]
    async fn gives_up_after_four_attempts() {
        let (url, mut rx) = receiver(&[500, 500, 500, 500, 500]).await;
        let notifier = Notifier::with_retry(&[target(&url, None, &[])], fast());
        notifier.notify(EventKind::Failed, deployment("d-4", 0.0));
        for _ in 0..4 {
            assert_eq!(next(&mut rx).await.1["event"], "failed");
        }
        notifier.notify(EventKind::Aborted, deployment("d-4", 0.0));
        assert_eq!(next(&mut rx).await.1["event"], "aborted");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (url, mut rx) = receiver(&[400]).await;
        let notifier = Notifier::with_retry(&[target(&url, None, &[])], fast());
        notifier.notify(EventKind::Started, deployment("d-5", 0.0));
        notifier.notify(EventKind::Step, deployment("d-5", 0.0));
        assert_eq!(next(&mut rx).await.1["event"], "started");
        assert_eq!(
            next(&mut rx).await.1["event"],
            "step",
            "a 400 must not be retried"
        );
    }

    #[tokio::test]
    async fn unsubscribed_events_are_not_sent_and_order_is_kept() {
        let (url, mut rx) = receiver(&[502]).await;
        let notifier = Notifier::with_retry(
            &[target(&url, None, &["promoted", "rolled_back", "step"])],
            fast(),
        );
        notifier.notify(EventKind::Started, deployment("d-6", 0.0));
        for percent in [10.0, 20.0, 30.0] {
            notifier.notify(EventKind::Step, deployment("d-6", percent));
        }
        notifier.notify(EventKind::Paused, deployment("d-6", 0.0));
        notifier.notify(EventKind::RolledBack, deployment("d-6", 0.0));
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (_, body, _) = next(&mut rx).await;
            seen.push(format!(
                "{}{}",
                body["event"].as_str().unwrap(),
                body["deployment"]["canary_percent"]
            ));
        }
        // The first step is answered 502 and retried before the second is sent.
        assert_eq!(
            seen,
            [
                "step10.0",
                "step10.0",
                "step20.0",
                "step30.0",
                "rolled_back0.0"
            ]
        );
    }

    #[tokio::test]
    async fn unreachable_target_does_not_hold_up_others() {
        // A port nothing listens on: bind, note it, close.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (url, mut rx) = receiver(&[]).await;
        let notifier = Notifier::with_retry(
            &[
                target(&format!("http://{dead}/hook"), None, &[]),
                target(&url, None, &[]),
            ],
            fast(),
        );
        notifier.notify(EventKind::Started, deployment("d-7", 0.0));
        assert_eq!(next(&mut rx).await.1["event"], "started");
    }

    #[tokio::test]
    async fn update_targets_switches_receivers() {
        let (old_url, mut old_rx) = receiver(&[]).await;
        let (new_url, mut new_rx) = receiver(&[]).await;
        let notifier = Notifier::with_retry(&[target(&old_url, None, &[])], fast());
        notifier.notify(EventKind::Started, deployment("d-8", 0.0));
        assert_eq!(next(&mut old_rx).await.1["event"], "started");
        notifier.update_targets(&[target(&new_url, None, &[])]);
        assert_eq!(notifier.targets().len(), 1);
        notifier.notify(EventKind::Step, deployment("d-8", 0.0));
        assert_eq!(next(&mut new_rx).await.1["event"], "step");
        // The old target's task ended with its queue: its channel closes, nothing more came.
        drop(notifier);
        assert!(old_rx.try_recv().is_err());
    }

    /// A stop right after an event: `flush` returns only once it was delivered (here
    /// on the second attempt, after a 503), and says nothing was left.
    #[tokio::test]
    async fn flush_delivers_what_is_queued_before_the_stop() {
        let (url, mut rx) = receiver(&[503]).await;
        let notifier = Notifier::with_retry(&[target(&url, None, &[])], fast());
        notifier.notify(EventKind::Promoted, deployment("d-9", 100.0));
        assert_eq!(notifier.flush(WAIT).await, 0);
        // Both attempts had arrived when flush returned: nothing is waited for here.
        let events: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|(_, body, _)| body["event"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(events, ["promoted", "promoted"]);
        // After the stop nothing is queued any more (and nothing panics).
        notifier.notify(EventKind::Step, deployment("d-9", 100.0));
        assert_eq!(notifier.flush(WAIT).await, 0);
    }

    /// A receiver that is down for longer than the grace: `flush` gives up when the
    /// grace ends and counts the event it could not deliver.
    #[tokio::test]
    async fn flush_counts_what_the_grace_could_not_deliver() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let slow = RetryPolicy {
            first_backoff: Duration::from_secs(60),
            ..fast()
        };
        let notifier =
            Notifier::with_retry(&[target(&format!("http://{dead}/hook"), None, &[])], slow);
        notifier.notify(EventKind::Promoted, deployment("d-10", 100.0));
        assert_eq!(notifier.flush(Duration::from_millis(300)).await, 1);
    }
}
