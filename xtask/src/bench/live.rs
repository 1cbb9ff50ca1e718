//! What bench control and bench scale share: the agent's pinned maps read from the
//! bench process (what the kernel holds, not what the agent says), the maps' kernel
//! memory, and a keep-alive HTTP client for the admin API inside the gateway
//! namespace (no curl process per call, so the API's own latency is what is timed).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use keystone_common::{Backend, Endpoint, VipInfo, maglev::MaglevBackend, names};
use nix::sched::{CloneFlags, setns};

/// The agent's pinned maps, opened once.
pub struct Pins {
    dir: PathBuf,
    vips: HashMap<MapData, Endpoint, VipInfo>,
    rings: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
}

impl Pins {
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<MapData> {
            MapData::from_pin(dir.join(name))
                .with_context(|| format!("opening pinned map {}/{name}", dir.display()))
        };
        Ok(Pins {
            dir: dir.to_owned(),
            vips: HashMap::try_from(Map::HashMap(open(names::VIPS)?))?,
            rings: Array::try_from(Map::Array(open(names::RINGS)?))?,
            backends: Array::try_from(Map::Array(open(names::BACKENDS)?))?,
        })
    }

    /// The VIPS entry the kernel holds for `vip` (one map lookup).
    pub fn vip(&self, vip: &Endpoint) -> Option<VipInfo> {
        self.vips.get(vip, 0).ok()
    }

    /// Every VIPS entry.
    pub fn all_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>> {
        Ok(self.vips.iter().collect::<Result<_, _>>()?)
    }

    /// The live table of `info`, as backend endpoints (entry → slot → BACKENDS).
    pub fn live_table(&self, info: &VipInfo) -> Result<Vec<Endpoint>> {
        let mut by_slot = std::collections::HashMap::new();
        (0..info.ring_size)
            .map(|i| {
                let slot = self.rings.get(&(info.ring_base + i), 0)?;
                if let Some(e) = by_slot.get(&slot) {
                    return Ok(*e);
                }
                let e = self.backends.get(&slot, 0)?.endpoint;
                by_slot.insert(slot, e);
                Ok(e)
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The table `build` (`keystone_common::maglev::build`, or `build_scan`, the same
/// table the way it was built before) makes for these (backend, weight) pairs, as the
/// agent orders them (by identity), as endpoints.
pub fn predicted_table_by(
    build: fn(&[MaglevBackend], u32) -> Vec<u32>,
    backends: &[(Endpoint, u32)],
    size: u32,
) -> Vec<Endpoint> {
    let mut sorted: Vec<(u64, u32, Endpoint)> = backends
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(e, w)| (e.identity(), *w, *e))
        .collect();
    sorted.sort_unstable_by_key(|&(id, w, _)| (id, w));
    let ids: Vec<MaglevBackend> = sorted
        .iter()
        .map(|&(id, weight, _)| MaglevBackend { id, weight })
        .collect();
    build(&ids, size)
        .into_iter()
        .map(|i| sorted[i as usize].2)
        .collect()
}

/// Polls `vip`'s VIPS entry (one lookup, then a yield) until `done` holds for it. Returns when it held and how
/// many lookups it took; fails after `timeout`.
pub fn poll_vip(
    pins: &Pins,
    vip: &Endpoint,
    timeout: Duration,
    mut done: impl FnMut(Option<VipInfo>) -> bool,
) -> Result<(Instant, u64)> {
    let deadline = Instant::now() + timeout;
    let mut polls = 0;
    loop {
        polls += 1;
        if done(pins.vip(vip)) {
            return Ok((Instant::now(), polls));
        }
        if Instant::now() > deadline {
            bail!(
                "VIP {} did not reach the expected state within {timeout:?}",
                vip.socket_addr()
            );
        }
        // Lets the agent run first when both want the CPU (2 cores shared); costs
        // nothing when the CPU is free.
        std::thread::yield_now();
    }
}

/// Kernel memory of a map as the kernel accounts it (`memlock:` in its fdinfo,
/// which is `bpf_map_memory_usage` on this kernel) and its max_entries.
pub fn map_memory(info: &MapInfo) -> Result<(u64, u32)> {
    let fd = info.fd()?;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
    let memlock = text
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .context("no memlock in fdinfo")?
        .trim()
        .parse()?;
    Ok((memlock, info.max_entries()))
}

/// Moves the calling thread into a named network namespace until dropped.
pub struct InNetns {
    home: File,
}

impl InNetns {
    pub fn enter(ns: &str) -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("network namespace {ns}"))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(InNetns { home })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        let _ = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// A keep-alive HTTP/1.1 connection to the admin API (or, without a token, to
/// another server in the namespace, e.g. etcd's HTTP gateway).
pub struct Admin {
    addr: String,
    token: Option<String>,
    stream: BufReader<TcpStream>,
}

impl Admin {
    pub fn connect(addr: &str, token: &str) -> Result<Self> {
        Admin::open(addr, Some(token))
    }

    /// A connection that sends no `Authorization` header.
    pub fn without_token(addr: &str) -> Result<Self> {
        Admin::open(addr, None)
    }

    fn open(addr: &str, token: Option<&str>) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("HTTP to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Admin {
            addr: addr.to_owned(),
            token: token.map(str::to_owned),
            stream: BufReader::new(stream),
        })
    }

    /// Writes a request without waiting for the answer.
    pub fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<()> {
        let body = body.unwrap_or("");
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        Ok(())
    }

    /// Reads one answer: (status, body), sized by `Content-Length` (axum) or chunked
    /// (etcd's gateway).
    pub fn receive(&mut self) -> Result<(u16, String)> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        let body = if chunked {
            self.read_chunks()?
        } else {
            let length: usize = length.context("answer without Content-Length")?;
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body)?;
            body
        };
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A chunked body up to its last chunk, then its trailers.
    fn read_chunks(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..])?;
            line.clear();
            self.stream.read_line(&mut line)?;
        }
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                return Ok(body);
            }
        }
    }

    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        self.send(method, path, body)?;
        self.receive()
    }

    /// `call`, failing unless the answer is 2xx.
    pub fn ok(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<String> {
        let (status, text) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        Ok(text)
    }
}

/// A process's resident set size in bytes (`VmRSS`).
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Polling resolution: the mean time of one `poll_vip` step (a VIPS lookup and a
/// yield), over `n` steps.
pub fn lookup_cost(pins: &Pins, vip: &Endpoint, n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(pins.vip(vip));
        std::thread::yield_now();
    }
    start.elapsed() / n
}
