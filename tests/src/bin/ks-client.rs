//! ks-client: lab traffic with a bounded count and time, ending with one JSON
//! summary line (`{"by_backend": {"blue": 1803, "green": 197}, "failed": 0, ...}`).
//!
//! * `--connections N`: N new TCP connections, one HTTP request each;
//! * `--udp N`: N datagrams, each from a fresh socket (so a fresh source port);
//! * `--hold SECS`: `--hold-connections` keep-alive connections, each doing one
//!   request every `--interval-ms`, printing `conn=<i> gen=<g> seq=<n> backend=<name>`
//!   (or `error=<why>`) per answer as it comes; with `--echo-bytes N` each request
//!   is a `POST /echo` of N fresh bytes that must come back unchanged.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Parser;
use keystone_lab::{HoldEvent, Summary};

#[derive(Parser)]
#[command(about = "Keystone lab client: bounded TCP/HTTP and UDP traffic with a JSON summary")]
struct Args {
    /// Address to send to (the VIP), e.g. 198.18.0.10:80 or [2001:2::10]:80.
    #[arg(long)]
    target: SocketAddr,
    /// New TCP connections, one HTTP request each.
    #[arg(long, conflicts_with_all = ["udp", "hold"])]
    connections: Option<u64>,
    /// UDP datagrams, each from a fresh socket.
    #[arg(long, conflicts_with = "hold")]
    udp: Option<u64>,
    /// Hold keep-alive connections open for this many seconds.
    #[arg(long)]
    hold: Option<u64>,
    /// Connections held open in --hold mode.
    #[arg(long, default_value_t = 1)]
    hold_connections: u32,
    /// Hold mode: each request sends this many bytes to `/echo` and checks that every
    /// byte comes back (0: a plain `GET /`).
    #[arg(long, default_value_t = 0)]
    echo_bytes: usize,
    /// Pause between requests on a held connection.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Requests in flight at once (--connections, --udp).
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Timeout of each connect, send and receive.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Stop starting new requests after this many seconds (counted as failed).
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Give up after this many failures in a row (the rest counted as failed), so a
    /// broken path fails in seconds rather than one timeout per request (0: never).
    #[arg(long, default_value_t = 50)]
    max_consecutive_failures: u64,
}

/// Shared tallies of one run.
#[derive(Default)]
struct Tally {
    by_backend: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    failed: u64,
    attempted: u64,
    reconnects: u64,
    /// Failures since the last success.
    failing: u64,
}

impl Tally {
    fn record(&mut self, outcome: &Result<String, String>) {
        self.attempted += 1;
        match outcome {
            Ok(b) => {
                self.failing = 0;
                *self.by_backend.entry(b.clone()).or_default() += 1;
            }
            Err(e) => {
                self.failing += 1;
                self.failed += 1;
                *self.errors.entry(e.clone()).or_default() += 1;
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let start = Instant::now();
    let tally = Mutex::new(Tally::default());

    let mode = if let Some(n) = args.connections {
        run_many(n, &args, deadline, &tally, || {
            http_once(args.target, timeout)
        });
        "tcp"
    } else if let Some(n) = args.udp {
        run_many(n, &args, deadline, &tally, || {
            udp_once(args.target, timeout)
        });
        "udp"
    } else if let Some(secs) = args.hold {
        let until = (Instant::now() + Duration::from_secs(secs)).min(deadline);
        let interval = Duration::from_millis(args.interval_ms);
        thread::scope(|s| {
            for conn in 0..args.hold_connections {
                let tally = &tally;
                let echo = args.echo_bytes;
                s.spawn(move || hold(conn, args.target, timeout, interval, echo, until, tally));
            }
        });
        "hold"
    } else {
        bail!("say what to send: --connections N, --udp N or --hold SECS");
    };

    let t = tally.into_inner().expect("no worker panicked");
    let summary = Summary {
        mode: mode.into(),
        target: args.target.to_string(),
        attempted: t.attempted,
        by_backend: t.by_backend,
        failed: t.failed,
        errors: t.errors,
        reconnects: t.reconnects,
        elapsed_ms: start.elapsed().as_millis() as u64,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Runs `one` `n` times on `--concurrency` threads; what is not started by `deadline`,
/// or after `--max-consecutive-failures`, is counted as failed.
fn run_many(
    n: u64,
    args: &Args,
    deadline: Instant,
    tally: &Mutex<Tally>,
    one: impl Fn() -> Result<String, String> + Sync,
) {
    let next = AtomicU64::new(0);
    let max_failing = args.max_consecutive_failures;
    thread::scope(|s| {
        for _ in 0..args.concurrency.max(1) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let failing = tally.lock().expect("tally").failing;
                    let outcome = if Instant::now() >= deadline {
                        Err("not sent: deadline passed".to_owned())
                    } else if max_failing > 0 && failing >= max_failing {
                        Err(format!("not sent: {max_failing} failures in a row"))
                    } else {
                        one()
                    };
                    tally.lock().expect("tally").record(&outcome);
                }
            });
        }
    });
}

fn err(stage: &str, e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{stage}: timeout"),
        kind => format!("{stage}: {kind:?}"),
    }
}

/// One new connection, one request. The request asks for keep-alive so that the
/// client, not the server, closes first: the client's TIME_WAIT then keeps its
/// source port from being reused by the next connections, each of which is meant to
/// be a new flow (a reused 4-tuple would find the gateway's connection-table entry
/// of an earlier flow and keep that flow's backend).
fn http_once(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut conn = HttpConn::open(target, timeout)?;
    conn.request(None)
}

struct HttpConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    host: String,
}

impl HttpConn {
    fn open(target: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let s = TcpStream::connect_timeout(&target, timeout).map_err(|e| err("connect", e))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .and_then(|()| s.set_nodelay(true))
            .map_err(|e| err("setsockopt", e))?;
        let writer = s.try_clone().map_err(|e| err("clone", e))?;
        Ok(Self {
            writer,
            reader: BufReader::new(s),
            host: target.to_string(),
        })
    }

    /// Sends `GET /` (HTTP/1.1, so keep-alive) and returns the body (the backend's
    /// name), trimmed; or, with `echo`, sends it to `POST /echo`, checks that the answer
    /// is the same bytes and returns the backend's name from `X-Backend`.
    fn request(&mut self, echo: Option<&[u8]>) -> Result<String, String> {
        match echo {
            None => write!(
                self.writer,
                "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: ks-client\r\n\r\n",
                self.host
            ),
            Some(payload) => write!(
                self.writer,
                "POST /echo HTTP/1.1\r\nHost: {}\r\nUser-Agent: ks-client\r\nContent-Length: {}\r\n\r\n",
                self.host,
                payload.len()
            )
            .and_then(|()| self.writer.write_all(payload)),
        }
        .map_err(|e| err("write", e))?;
        let mut status = String::new();
        match self.reader.read_line(&mut status) {
            Ok(0) => return Err("read: closed before the answer".into()),
            Ok(_) => {}
            Err(e) => return Err(err("read", e)),
        }
        if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
            return Err(format!("status: {}", status.trim_end()));
        }
        let mut len = None;
        let mut backend = None;
        loop {
            let mut h = String::new();
            match self.reader.read_line(&mut h) {
                Ok(0) => return Err("read: closed inside the headers".into()),
                Ok(_) => {}
                Err(e) => return Err(err("read", e)),
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            } else if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("x-backend")
            {
                backend = Some(v.trim().to_owned());
            }
        }
        let len = len.ok_or("read: no Content-Length")?;
        let Some(payload) = echo else {
            let mut body = vec![0; len.min(4096)];
            self.reader
                .read_exact(&mut body)
                .map_err(|e| err("read", e))?;
            return Ok(String::from_utf8_lossy(&body).trim().to_owned());
        };
        if len != payload.len() {
            return Err(format!("echo: {len} bytes back for {} sent", payload.len()));
        }
        let mut body = vec![0; len];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| err("read", e))?;
        if let Some(at) = body.iter().zip(payload).position(|(a, b)| a != b) {
            return Err(format!("echo: byte {at} of {len} differs"));
        }
        backend.ok_or_else(|| "echo: no X-Backend header".to_owned())
    }
}

/// One datagram from a fresh socket; the answer is the backend's name.
fn udp_once(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind).map_err(|e| err("bind", e))?;
    s.connect(target).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| err("setsockopt", e))?;
    s.send(b"ks-client").map_err(|e| err("send", e))?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).map_err(|e| err("recv", e))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// One held connection: a request every `interval` until `until`, each answer printed
/// as it comes; after an error the connection is re-opened (a new generation).
fn hold(
    conn: u32,
    target: SocketAddr,
    timeout: Duration,
    interval: Duration,
    echo_bytes: usize,
    until: Instant,
    tally: &Mutex<Tally>,
) {
    let mut generation = 0;
    let mut seq = 0;
    let mut current: Option<HttpConn> = None;
    let mut payload = vec![0u8; echo_bytes];
    while Instant::now() < until {
        fill_payload(&mut payload, conn, seq);
        let echo = (echo_bytes > 0).then_some(payload.as_slice());
        let outcome = match current.as_mut() {
            Some(c) => c.request(echo),
            None => HttpConn::open(target, timeout).and_then(|mut c| {
                let r = c.request(echo);
                current = Some(c);
                r
            }),
        };
        if outcome.is_err() {
            current = None;
        }
        let event = HoldEvent {
            conn,
            generation,
            seq,
            outcome,
        };
        {
            let mut t = tally.lock().expect("tally");
            t.record(&event.outcome);
            if event.outcome.is_err() {
                t.reconnects += 1;
            }
            // Under the lock so lines never interleave; stdout is line-buffered.
            println!("{}", event.to_line());
        }
        if event.outcome.is_err() {
            generation += 1;
        }
        seq += 1;
        let left = until.saturating_duration_since(Instant::now());
        thread::sleep(interval.min(left));
    }
}

/// Bytes that differ from one request to the next (xorshift64 seeded by connection and
/// sequence number), so an answer cannot pass for the echo of another request.
fn fill_payload(buf: &mut [u8], conn: u32, seq: u64) {
    let mut x = (u64::from(conn) << 40) ^ seq ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}
