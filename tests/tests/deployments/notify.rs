//! Notifications across a stop: an event the engine queued just before a SIGTERM is
//! still delivered, retries included, before the agent exits.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

use keystone_api::{EventKind, Notification};
use keystone_lab::{
    NotificationTarget, Probe, agent::AGENT, helpers::stop_agent_cleanly, wait_for,
};
use nix::sched::{CloneFlags, setns};

use super::*;

/// What the receiver was sent: each POST's event and the status it answered.
type Received = Arc<Mutex<Vec<(EventKind, u16)>>>;

/// A notification receiver on the gateway namespace's loopback (where the agent runs):
/// it answers 503 to the first `promoted` it gets and 200 to everything else, so that
/// event is delivered only by the agent's retry, 500 ms later. Returns its URL.
fn receiver_in(lab: &Lab, received: Received) -> String {
    let netns = format!("/run/netns/{}", lab.gateway_ns());
    let ns = File::open(&netns).unwrap_or_else(|e| panic!("opening {netns}: {e}"));
    // A thread of its own enters the namespace; the listener stays in it.
    let listener = thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("entering the gateway namespace");
        TcpListener::bind("127.0.0.1:0").expect("binding the receiver")
    })
    .join()
    .expect("the binding thread panicked");
    let url = format!("http://{}/keystone-events", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let Some(event) = read_notification(&stream) else {
                continue;
            };
            let mut received = received.lock().unwrap();
            let first_promoted = event == EventKind::Promoted
                && !received.iter().any(|(e, _)| *e == EventKind::Promoted);
            let status = if first_promoted { 503 } else { 200 };
            received.push((event, status));
            drop(received);
            let _ = (&stream).write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    url
}

/// One HTTP request's body, read as the agent's notification envelope.
fn read_notification(stream: &TcpStream) -> Option<EventKind> {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let notification: Notification = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("a notification the envelope does not read ({e}): {body:?}"));
    Some(notification.event)
}

/// A blue/green switch completes and its `promoted` notification fails once (503); the
/// agent is stopped with SIGTERM right then. It waits out the retry's backoff, delivers
/// the event, and only then exits 0; its log names nothing undelivered.
#[test]
fn a_notification_queued_at_sigterm_is_delivered_before_the_agent_exits() {
    let received: Received = Arc::default();
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let mut config = lab.agent_config(vec![
                tenant(lab, "web", v4(80), &[("blue", 1), ("green", 1)])
                    .blue_green("blue", SwitchConfig::instant()),
            ]);
            config.notifications.push(NotificationTarget {
                url: receiver_in(lab, received.clone()),
                secret: "lab-notification-secret".into(),
            });
            config
        },
    );
    let switch = ctl_start(
        &lab,
        &["switch", "web", "--to", "green", "--strategy", "instant"],
    );
    wait_for("the first `promoted` notification", SHORT, || {
        let seen = received.lock().unwrap().clone();
        Ok(if seen.iter().any(|(e, _)| *e == EventKind::Promoted) {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("received {seen:?}"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_diagnostics()));

    let log_path = ok(&lab, "the agent's log", lab.stderr_path(AGENT));
    stop_agent_cleanly(&mut lab);
    let seen = received.lock().unwrap().clone();
    let promoted: Vec<u16> = seen
        .iter()
        .filter(|(e, _)| *e == EventKind::Promoted)
        .map(|&(_, status)| status)
        .collect();
    assert_eq!(
        promoted,
        [503, 200],
        "`promoted` of {switch}: the failed attempt, then the retry, both before the \
         agent exited; everything received: {seen:?}"
    );
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    assert!(
        !log.contains("still undelivered"),
        "the agent says it lost notifications:\n{log}"
    );
}
