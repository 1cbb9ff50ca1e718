//! Notifications across a stop: an event still being sent when SIGTERM arrives is
//! delivered, its retry included, before the agent exits.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use keystone_api::{EventKind, Notification};
use keystone_lab::{
    NotificationTarget, Probe, agent::AGENT, helpers::stop_agent_cleanly, wait_for,
};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::*;

/// What the receiver was sent: each POST's event and the status it answered, and the
/// requests it could not read as a notification.
#[derive(Clone, Debug, Default)]
struct Seen {
    events: Vec<(EventKind, u16)>,
    unreadable: Vec<String>,
}

impl Seen {
    fn statuses_of(&self, event: EventKind) -> Vec<u16> {
        self.events
            .iter()
            .filter(|(e, _)| *e == event)
            .map(|&(_, status)| status)
            .collect()
    }
}

/// A notification receiver on the gateway namespace's loopback (where the agent runs).
/// On the first `promoted` it gets it sends the agent (`agent_pid`) SIGTERM, then
/// answers 503: the stop has begun before that attempt failed, so the event can only
/// be delivered by the retry (500 ms later) during the stop. Everything else gets 200.
/// Returns its URL.
fn receiver_in(lab: &Lab, seen: Arc<Mutex<Seen>>, agent_pid: Arc<AtomicU32>) -> String {
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
            // A request that never ends must not stall the receiver.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let event = match read_notification(&stream) {
                Ok(event) => event,
                Err(why) => {
                    seen.lock().unwrap().unreadable.push(why);
                    continue;
                }
            };
            let mut seen = seen.lock().unwrap();
            let first_promoted =
                event == EventKind::Promoted && seen.statuses_of(EventKind::Promoted).is_empty();
            let status = if first_promoted {
                let pid = agent_pid.load(Ordering::SeqCst) as i32;
                kill(Pid::from_raw(pid), Signal::SIGTERM)
                    .unwrap_or_else(|e| panic!("SIGTERM to the agent (pid {pid}): {e}"));
                503
            } else {
                200
            };
            seen.events.push((event, status));
            drop(seen);
            let _ = (&stream).write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    url
}

/// One HTTP request's body, read as the agent's notification envelope.
fn read_notification(stream: &TcpStream) -> Result<EventKind, String> {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the request head: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value
                .trim()
                .parse()
                .map_err(|e| format!("Content-Length {value:?}: {e}"))?;
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("reading a {length}-byte body: {e}"))?;
    serde_json::from_slice::<Notification>(&body)
        .map(|n| n.event)
        .map_err(|e| {
            format!(
                "not a notification ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })
}

/// A blue/green switch completes and the agent gets SIGTERM while its `promoted`
/// notification is being sent; that attempt fails (503). The agent waits out the
/// retry's backoff, delivers the event, and only then exits 0; its log names nothing
/// undelivered.
#[test]
fn a_notification_queued_at_sigterm_is_delivered_before_the_agent_exits() {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let agent_pid = Arc::new(AtomicU32::new(0));
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let mut config = lab.agent_config(vec![
                tenant(lab, "web", v4(80), &[("blue", 1), ("green", 1)])
                    .blue_green("blue", SwitchConfig::instant()),
            ]);
            config.notifications.push(NotificationTarget {
                url: receiver_in(lab, seen.clone(), agent_pid.clone()),
                secret: "lab-notification-secret".into(),
            });
            config
        },
    );
    agent_pid.store(
        ok(&lab, "the agent's pid", lab.pid_of(AGENT)),
        Ordering::SeqCst,
    );
    let switch = ctl_start(
        &lab,
        &["switch", "web", "--to", "green", "--strategy", "instant"],
    );
    wait_for(
        "the first `promoted` notification (and the SIGTERM)",
        SHORT,
        || {
            let seen = seen.lock().unwrap().clone();
            Ok(if seen.statuses_of(EventKind::Promoted).is_empty() {
                Probe::NotYet(format!("received {seen:?}"))
            } else {
                Probe::Ready(())
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_diagnostics()));

    let log_path = ok(&lab, "the agent's log", lab.stderr_path(AGENT));
    // Waits for the exit the receiver's SIGTERM started (a second SIGTERM is ignored).
    stop_agent_cleanly(&mut lab);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.unreadable.is_empty(),
        "requests that are not notifications: {:?}",
        seen.unreadable
    );
    assert_eq!(
        seen.statuses_of(EventKind::Promoted),
        [503, 200],
        "`promoted` of {switch}: the attempt the stop interrupted, then the retry, both \
         before the agent exited; everything received: {seen:?}"
    );
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    assert!(
        !log.contains("still undelivered"),
        "the agent says it lost notifications:\n{log}"
    );
}
