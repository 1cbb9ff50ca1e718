//! The namespace topology and the guard that removes it.
//!
//! ```text
//!  client ns                gateway ns (XDP + agent)                 backend ns (one per backend)
//!  eth-gw 198.18.1.2 ─── eth-client 198.18.1.1
//!         2001:2:0:1::2            2001:2:0:1::1
//!                          eth-<b>  198.18.(10+i).1 ───────────────── eth-gw 198.18.(10+i).2
//!                                   2001:2:0:(10+i)::1                       2001:2:0:(10+i)::2
//! ```
//!
//! VIPs are 198.18.0.10 and 2001:2::10, reached from the client through its
//! default route via the gateway. Every backend link is point-to-point, so
//! backends are L2-adjacent to the gateway (DSR rewrites only MACs); in DSR
//! mode the backends hold the VIPs on `lo`. Nothing here touches the host
//! namespace's interfaces, routes or firewall: veths are created inside the
//! gateway namespace with their peer placed straight into the other one.
//!
//! The bridged variant ([`LabBuilder::bridged`]) puts the backends' links into one
//! Linux bridge, `br-back`, in the gateway namespace, as many gateway hosts do:
//!
//! ```text
//!                          br-back 198.18.10.1 / 2001:2:0:10::1
//!                            ├─ eth-<b> (bridge port) ─────────────── eth-gw 198.18.10.(10+i)
//!                            └─ …                                            2001:2:0:10::(10+i)
//! ```

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, MsFlags},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::{
    bins::Bins,
    cmd::{self, in_ns},
    error::{LabError, Result, io_err},
    wait::{Probe, wait_for},
};

/// Where every lab keeps its state, logs and bpffs mount.
pub const STATE_ROOT: &str = "/run/keystone-lab";
/// The IPv4 VIP.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10);
/// The gateway's and client's addresses on their link.
pub const GW_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const GW_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);

/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a backend gets to start listening.
const BACKEND_READY: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Forwarding mode the lab is wired for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Backends answer through the gateway, which reverse-translates.
    #[default]
    Nat,
    /// Backends hold the VIP on `lo` and answer the client directly.
    Dsr,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
        }
    }
}

/// The bridge of the bridged variant, in the gateway namespace.
pub const BRIDGE: &str = "br-back";

/// One backend namespace and its link to the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    pub ns: String,
    /// 1-based: backend i uses 198.18.(10+i).0/24.
    pub index: u32,
    /// The backend's own addresses.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The gateway's addresses on this backend's link.
    pub gw_ipv4: Ipv4Addr,
    pub gw_ipv6: Ipv6Addr,
    /// The gateway's interface towards this backend (a bridge port when bridged).
    pub gw_if: String,
}

impl Backend {
    fn new(prefix: &str, name: &str, index: u32, bridged: bool) -> Self {
        let octet = 10 + index as u8;
        let hextet = u16::from_str_radix(&(10 + index).to_string(), 16).expect("index < 90");
        let (ipv4, ipv6, gw_ipv4, gw_ipv6) = if bridged {
            // One subnet behind the bridge: backend i is host 10+i of 198.18.10.0/24.
            (
                Ipv4Addr::new(198, 18, 10, octet),
                Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, hextet),
                Ipv4Addr::new(198, 18, 10, 1),
                Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 1),
            )
        } else {
            (
                Ipv4Addr::new(198, 18, octet, 2),
                Ipv6Addr::new(0x2001, 2, 0, hextet, 0, 0, 0, 2),
                Ipv4Addr::new(198, 18, octet, 1),
                Ipv6Addr::new(0x2001, 2, 0, hextet, 0, 0, 0, 1),
            )
        };
        Self {
            name: name.to_owned(),
            ns: format!("{prefix}-{name}"),
            index,
            ipv4,
            ipv6,
            gw_ipv4,
            gw_ipv6,
            gw_if: format!("eth-{name}"),
        }
    }
}

/// A process the lab started, as recorded in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub ns: String,
    pub pid: u32,
    /// argv[0], checked against /proc before signalling a pid read back from disk.
    pub program: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// The environment variable naming the run a lab belongs to (`.ci/run` sets it), so a
/// run's cleanup takes its own labs only: lab names are machine-wide.
pub const RUN_ENV: &str = "KEYSTONE_LAB_RUN";

/// The process that created a lab: a lab whose creator still runs is in use (it removes
/// it on drop), one whose creator is gone was left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// When that pid started (clock ticks after boot), so a reused pid does not count.
    pub start_time: u64,
    /// The creating run's [`RUN_ENV`], if it had one.
    pub run: Option<String>,
}

impl Owner {
    fn current(run: Option<String>) -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: start_time(pid).unwrap_or_default(),
            run,
        }
    }

    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Everything a lab created, persisted after every change so `lab down` can undo it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// Who created it (absent in labs from before owners were recorded).
    #[serde(default)]
    pub owner: Option<Owner>,
    pub mode: Mode,
    pub client_ns: String,
    pub gateway_ns: String,
    pub backends: Vec<Backend>,
    /// The bridged variant's bridge ([`BRIDGE`]); `None` for point-to-point links.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Namespaces in creation order (only those that exist).
    pub namespaces: Vec<String>,
    /// Mount points to unmount.
    pub mounts: Vec<PathBuf>,
    pub processes: Vec<ProcRecord>,
    /// Free-form facts for `lab up`'s users (config path, admin address, …).
    pub notes: BTreeMap<String, String>,
}

/// Builds a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    name: Option<String>,
    backends: Vec<String>,
    mode: Mode,
    bridged: bool,
    detach: bool,
    bins: Option<Bins>,
    run: Option<String>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            name: None,
            backends: vec!["blue".into(), "green".into()],
            mode: Mode::Nat,
            bridged: false,
            detach: false,
            bins: None,
            run: std::env::var(RUN_ENV).ok().filter(|r| !r.is_empty()),
        }
    }
}

impl LabBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lab's name (its state directory). Default: `ks<pid>-<counter>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Backend names (default blue, green): lowercase letters and digits, ≤ 11 characters.
    pub fn backends(mut self, names: &[&str]) -> Self {
        self.backends = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Put the backends behind one Linux bridge in the gateway namespace ([`BRIDGE`],
    /// the backends' links its ports) instead of a routed link each.
    pub fn bridged(mut self, bridged: bool) -> Self {
        self.bridged = bridged;
        self
    }

    /// Start processes in their own process group so they outlive the caller (`lab up`).
    pub fn detach_processes(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }

    /// The run this lab belongs to (default: [`RUN_ENV`]), for `lab down --run`.
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Where the binaries are (default: [`Bins::beside_current_exe`]).
    pub fn bins(mut self, bins: Bins) -> Self {
        self.bins = Some(bins);
        self
    }

    /// Creates the namespaces, links, addresses, routes and bpffs. On error,
    /// whatever was created is removed again.
    pub fn build(self) -> Result<Lab> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let prefix = format!(
            "ks{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = self.name.unwrap_or_else(|| prefix.clone());
        check_name(&name, 40, |c| {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        })?;
        if self.backends.is_empty() || self.backends.len() > 40 {
            return Err(LabError::BadName {
                name: self.backends.join(","),
                reason: "a lab needs 1 to 40 backends",
            });
        }
        for b in &self.backends {
            check_name(b, 11, |c| c.is_ascii_lowercase() || c.is_ascii_digit())?;
            if b == "client" || b == "gw" || self.backends.iter().filter(|x| *x == b).count() > 1 {
                return Err(LabError::BadName {
                    name: b.clone(),
                    reason: "backend names must be unique and not client or gw",
                });
            }
        }
        let bins = match self.bins {
            Some(b) => b,
            None => Bins::beside_current_exe()?,
        };
        let state_dir = Path::new(STATE_ROOT).join(&name);
        if state_dir.join("state.json").exists() {
            return Err(LabError::Exists {
                name,
                dir: state_dir,
            });
        }
        fs::create_dir_all(&state_dir)
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
        let state = LabState {
            name,
            owner: Some(Owner::current(self.run)),
            mode: self.mode,
            client_ns: format!("{prefix}-client"),
            gateway_ns: format!("{prefix}-gw"),
            backends: self
                .backends
                .iter()
                .zip(1..)
                .map(|(b, i)| Backend::new(&prefix, b, i, self.bridged))
                .collect(),
            bridge: self.bridged.then(|| BRIDGE.to_owned()),
            ..LabState::default()
        };
        let mut lab = Lab {
            state,
            state_dir,
            children: BTreeMap::new(),
            keep: false,
            detach: self.detach,
            bins,
        };
        lab.save()?;
        lab.create()?;
        Ok(lab)
    }
}

fn check_name(name: &str, max: usize, ok: impl Fn(char) -> bool) -> Result<()> {
    if name.is_empty() || name.len() > max || !name.chars().all(ok) {
        return Err(LabError::BadName {
            name: name.to_owned(),
            reason: "use 1 to 11 (backend) or 40 (lab) letters, digits or dashes",
        });
    }
    Ok(())
}

/// A running lab; dropping it removes everything it created.
pub struct Lab {
    state: LabState,
    state_dir: PathBuf,
    /// Child handles of processes this `Lab` started, by name.
    children: BTreeMap<String, Child>,
    keep: bool,
    detach: bool,
    bins: Bins,
}

impl Lab {
    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn mode(&self) -> Mode {
        self.state.mode
    }
    pub fn state(&self) -> &LabState {
        &self.state
    }
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    pub fn bins(&self) -> &Bins {
        &self.bins
    }
    /// The lab's own bpffs, for the agent's `--pin-dir`.
    pub fn pin_dir(&self) -> PathBuf {
        self.state_dir.join("bpf")
    }
    pub fn client_ns(&self) -> &str {
        &self.state.client_ns
    }
    pub fn gateway_ns(&self) -> &str {
        &self.state.gateway_ns
    }
    pub fn backends(&self) -> &[Backend] {
        &self.state.backends
    }
    pub fn backend(&self, name: &str) -> Result<&Backend> {
        self.state
            .backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| LabError::NoBackend {
                name: name.to_owned(),
            })
    }
    /// The bridged variant's bridge, if this lab has one.
    pub fn bridge(&self) -> Option<&str> {
        self.state.bridge.as_deref()
    }
    /// The gateway device that holds backend `b`'s neighbour entry: its link, or the
    /// bridge.
    fn neighbour_dev<'a>(&'a self, b: &'a Backend) -> &'a str {
        self.bridge().unwrap_or(&b.gw_if)
    }
    /// Every gateway interface (client side first): the agent attaches XDP to all.
    /// In the bridged variant the backends' links are the bridge's ports.
    pub fn gateway_interfaces(&self) -> Vec<String> {
        std::iter::once("eth-client".to_owned())
            .chain(self.state.backends.iter().map(|b| b.gw_if.clone()))
            .collect()
    }
    /// Records a fact in the state file (shown by `lab up`).
    pub fn note(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        self.state.notes.insert(key.to_owned(), value.into());
        self.save()
    }

    fn save(&self) -> Result<()> {
        let path = self.state_dir.join("state.json");
        let tmp = self.state_dir.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(&self.state).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, json).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))
    }

    fn create(&mut self) -> Result<()> {
        let (gw, client) = (self.state.gateway_ns.clone(), self.state.client_ns.clone());
        let backends = self.state.backends.clone();
        let dsr = self.state.mode == Mode::Dsr;

        let mut all = vec![gw.clone(), client.clone()];
        all.extend(backends.iter().map(|b| b.ns.clone()));
        for ns in &all {
            cmd::run(Command::new("ip").args(["netns", "add", ns]))?;
            self.state.namespaces.push(ns.clone());
            self.save()?;
        }

        // Links: created in the gateway namespace, the peer placed into the other one.
        cmd::run(Command::new("ip").args([
            "-n",
            &gw,
            "link",
            "add",
            "eth-client",
            "type",
            "veth",
            "peer",
            "name",
            "eth-gw",
            "netns",
            &client,
        ]))?;
        for b in &backends {
            cmd::run(Command::new("ip").args([
                "-n", &gw, "link", "add", &b.gw_if, "type", "veth", "peer", "name", "eth-gw",
                "netns", &b.ns,
            ]))?;
        }
        let bridge = self.state.bridge.clone();
        if let Some(br) = &bridge {
            let mut batch = format!("link add {br} type bridge\n");
            for b in &backends {
                batch.push_str(&format!("link set {} master {br}\n", b.gw_if));
            }
            ip_batch(&gw, &batch)?;
        }

        // Sysctls: forwarding on the gateway, no reverse-path filtering anywhere,
        // and for DSR backends no ARP answers for the VIP held on lo.
        let mut gw_sys = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            "net.ipv6.conf.all.forwarding=1".to_owned(),
        ];
        gw_sys.extend(rp_filter_off(
            std::iter::once("eth-client")
                .chain(bridge.as_deref())
                .chain(backends.iter().map(|b| b.gw_if.as_str())),
        ));
        sysctl(&gw, &gw_sys)?;
        sysctl(&client, &rp_filter_off(["eth-gw"]))?;
        for b in &backends {
            let mut s = rp_filter_off(["eth-gw"]);
            if dsr {
                s.extend(
                    [
                        "net.ipv4.conf.all.arp_ignore=1",
                        "net.ipv4.conf.all.arp_announce=2",
                        "net.ipv4.conf.eth-gw.arp_ignore=1",
                        "net.ipv4.conf.eth-gw.arp_announce=2",
                    ]
                    .map(String::from),
                );
            }
            sysctl(&b.ns, &s)?;
        }

        // Addresses and links up, then routes (once every link has its carrier).
        let mut gw_batch = format!(
            "link set lo up\n\
             addr add {GW_CLIENT4}/24 dev eth-client\n\
             addr add {GW_CLIENT6}/64 dev eth-client nodad\n\
             link set eth-client up\n"
        );
        match (&bridge, backends.first()) {
            (Some(br), Some(first)) => {
                gw_batch.push_str(&format!(
                    "addr add {}/24 dev {br}\naddr add {}/64 dev {br} nodad\nlink set {br} up\n",
                    first.gw_ipv4, first.gw_ipv6
                ));
                for b in &backends {
                    gw_batch.push_str(&format!("link set {} up\n", b.gw_if));
                }
            }
            _ => {
                for b in &backends {
                    gw_batch.push_str(&format!(
                        "addr add {}/24 dev {if_}\naddr add {}/64 dev {if_} nodad\nlink set {if_} up\n",
                        b.gw_ipv4,
                        b.gw_ipv6,
                        if_ = b.gw_if
                    ));
                }
            }
        }
        ip_batch(&gw, &gw_batch)?;
        ip_batch(
            &client,
            &format!(
                "link set lo up\n\
                 addr add {CLIENT4}/24 dev eth-gw\n\
                 addr add {CLIENT6}/64 dev eth-gw nodad\n\
                 link set eth-gw up\n"
            ),
        )?;
        for b in &backends {
            let mut batch = format!(
                "link set lo up\n\
                 addr add {}/24 dev eth-gw\n\
                 addr add {}/64 dev eth-gw nodad\n\
                 link set eth-gw up\n",
                b.ipv4, b.ipv6
            );
            if dsr {
                batch.push_str(&format!(
                    "addr add {VIP4}/32 dev lo\naddr add {VIP6}/128 dev lo nodad\n"
                ));
            }
            ip_batch(&b.ns, &batch)?;
        }
        ip_batch(
            &client,
            &format!("route add default via {GW_CLIENT4}\nroute add ::/0 via {GW_CLIENT6}\n"),
        )?;
        for b in &backends {
            ip_batch(
                &b.ns,
                &format!(
                    "route add default via {}\nroute add ::/0 via {}\n",
                    b.gw_ipv4, b.gw_ipv6
                ),
            )?;
        }

        // veth facts (DESIGN.md): XDP_REDIRECT into a veth needs GRO on the receiving
        // peer, and TX checksum offload leaves partial checksums XDP cannot fix up.
        for ns in std::iter::once(&client).chain(backends.iter().map(|b| &b.ns)) {
            cmd::run(in_ns(ns, "ethtool").args(["-K", "eth-gw", "gro", "on", "tx", "off"]))?;
        }

        // A bpffs of its own: `ip netns exec` hides /sys/fs/bpf, and pins must not
        // collide between labs.
        let pin_dir = self.pin_dir();
        fs::create_dir_all(&pin_dir).map_err(io_err(format!("creating {}", pin_dir.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &pin_dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| LabError::Sys {
            what: format!("mounting bpffs on {}", pin_dir.display()),
            source,
        })?;
        self.state.mounts.push(pin_dir);
        self.save()
    }

    /// Records a mount the lab made, to be unmounted (in reverse order) on teardown.
    pub(crate) fn record_mount(&mut self, path: PathBuf) -> Result<()> {
        self.state.mounts.push(path);
        self.save()
    }

    /// Runs `program args…` inside `ns` to completion; returns stdout.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<String> {
        cmd::run(in_ns(ns, program).args(args))
    }

    /// Starts a long-lived `program args…` inside `ns` under `name`, with stdout and
    /// stderr in `<state dir>/<name>.out|.err`. It is stopped by [`Lab::stop`] or on drop.
    pub fn spawn<S: AsRef<OsStr>>(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[S],
    ) -> Result<u32> {
        if self.state.processes.iter().any(|p| p.name == name) {
            return Err(LabError::BadName {
                name: name.to_owned(),
                reason: "a process of that name is already running in this lab",
            });
        }
        let program = Bins::require(program)?;
        let stdout = self.state_dir.join(format!("{name}.out"));
        let stderr = self.state_dir.join(format!("{name}.err"));
        let open =
            |p: &Path| fs::File::create(p).map_err(io_err(format!("creating {}", p.display())));
        let mut c = in_ns(ns, program);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?);
        if self.detach {
            c.process_group(0);
        }
        let child = c.spawn().map_err(|source| LabError::Spawn {
            cmd: cmd::describe(&c),
            source,
        })?;
        let pid = child.id();
        self.children.insert(name.to_owned(), child);
        self.state.processes.push(ProcRecord {
            name: name.to_owned(),
            ns: ns.to_owned(),
            pid,
            program: program.to_string_lossy().into_owned(),
            stdout,
            stderr,
        });
        self.save()?;
        Ok(pid)
    }

    fn record(&self, name: &str) -> Result<&ProcRecord> {
        self.state
            .processes
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })
    }

    /// What the process has written to stdout so far.
    pub fn stdout_of(&self, name: &str) -> Result<String> {
        let p = self.record(name)?;
        read_lossy(&p.stdout)
    }

    /// What the process has written to stderr so far.
    pub fn stderr_of(&self, name: &str) -> Result<String> {
        let p = self.record(name)?;
        read_lossy(&p.stderr)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let child = self
            .children
            .get_mut(name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })?;
        child
            .try_wait()
            .map_err(io_err(format!("waiting for {name}")))
    }

    /// An error if the process has exited (with its stderr), else `Ok`.
    pub fn ensure_running(&mut self, name: &str) -> Result<()> {
        match self.exited(name)? {
            None => Ok(()),
            Some(status) => Err(LabError::Exited {
                name: name.to_owned(),
                status: status.to_string(),
                stderr: tail(&self.stderr_of(name).unwrap_or_default(), 40),
            }),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; returns how it exited.
    pub fn stop(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let idx = self
            .state
            .processes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })?;
        let rec = self.state.processes[idx].clone();
        let status = stop_process(&rec, self.children.get_mut(name));
        self.children.remove(name);
        self.state.processes.remove(idx);
        self.save()?;
        Ok(status)
    }

    /// Starts `ks-backend --name <b> --port <port>` in every backend namespace and
    /// waits until each listens.
    pub fn start_backends(&mut self, port: u16) -> Result<()> {
        let backend_bin = self.bins.backend.clone();
        let port = port.to_string();
        for b in self.state.backends.clone() {
            self.spawn(
                &Self::backend_process(&b.name),
                &b.ns,
                &backend_bin,
                &["--name", &b.name, "--port", &port],
            )?;
        }
        for b in self.state.backends.clone() {
            self.wait_backend_listening(&b.name)?;
        }
        Ok(())
    }

    /// The process name of backend `name`'s ks-backend (`backend-<name>`).
    pub fn backend_process(name: &str) -> String {
        format!("backend-{name}")
    }

    /// Starts ks-backend in one backend's namespace (e.g. again, after
    /// [`Lab::stop_backend`]) and waits until it listens.
    pub fn start_backend(&mut self, name: &str, port: u16) -> Result<()> {
        let b = self.backend(name)?.clone();
        let backend_bin = self.bins.backend.clone();
        self.spawn(
            &Self::backend_process(name),
            &b.ns,
            &backend_bin,
            &["--name", name, "--port", &port.to_string()],
        )?;
        self.wait_backend_listening(name)
    }

    /// Stops one backend's ks-backend: its port is closed from then on (new
    /// connections are refused, health checks fail), the namespace stays.
    pub fn stop_backend(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        self.stop(&Self::backend_process(name))
    }

    fn wait_backend_listening(&mut self, name: &str) -> Result<()> {
        let pname = Self::backend_process(name);
        wait_for(
            &format!("ks-backend {name} to listen"),
            BACKEND_READY,
            || {
                self.ensure_running(&pname)?;
                let out = self.stdout_of(&pname)?;
                Ok(if out.contains("listening") {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(out)
                })
            },
        )
    }

    /// Kills the process with SIGKILL (no chance to clean up, as in a crash) and
    /// reaps it; returns how it exited.
    pub fn kill(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let idx = self
            .state
            .processes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })?;
        let status = match self.children.remove(name) {
            Some(mut child) => {
                // `ip netns exec` execs the program, so the child is the process itself.
                let _ = child.kill();
                Some(
                    child
                        .wait()
                        .map_err(io_err(format!("waiting for {name}")))?,
                )
            }
            None => {
                let _ = kill(
                    Pid::from_raw(self.state.processes[idx].pid as i32),
                    Signal::SIGKILL,
                );
                None
            }
        };
        self.state.processes.remove(idx);
        self.save()?;
        Ok(status)
    }

    /// Makes the gateway know the MAC of the client and of every backend (v4 and v6),
    /// by sending one UDP datagram from the gateway to port 9 of each (answered by an
    /// ICMP port-unreachable, which also teaches the peer the gateway's MAC), until
    /// each shows up in the gateway's neighbour table.
    ///
    /// The XDP program needs the next hop's MAC to redirect; without it, it hands the
    /// packet to the kernel, which works for NAT over IPv4 but not for DSR (the
    /// kernel has no route for the VIP) and costs IPv6 a retransmission.
    pub fn warm_neighbours(&self) -> Result<()> {
        let client = Bins::require(&self.bins.client)?.to_path_buf();
        let gw = self.state.gateway_ns.clone();
        let mut peers: Vec<(String, &str)> = vec![
            (CLIENT4.to_string(), "eth-client"),
            (CLIENT6.to_string(), "eth-client"),
        ];
        for b in &self.state.backends {
            peers.push((b.ipv4.to_string(), self.neighbour_dev(b)));
            peers.push((b.ipv6.to_string(), self.neighbour_dev(b)));
        }
        for (addr, dev) in peers {
            let target = if addr.contains(':') {
                format!("[{addr}]:9")
            } else {
                format!("{addr}:9")
            };
            wait_for(
                &format!("the gateway to learn the MAC of {addr}"),
                Duration::from_secs(10),
                || {
                    let neigh = cmd::run(
                        Command::new("ip")
                            .args(["-n", &gw, "neigh", "show", "to", &addr, "dev", dev]),
                    )?;
                    if neigh.contains("lladdr") {
                        return Ok(Probe::Ready(()));
                    }
                    cmd::run(in_ns(&gw, &client).args([
                        "--target",
                        &target,
                        "--udp",
                        "1",
                        "--timeout-ms",
                        "200",
                    ]))?;
                    Ok(Probe::NotYet(neigh))
                },
            )?;
        }
        Ok(())
    }

    /// The last lines of every process's output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "lab {} (state in {})\n",
            self.name(),
            self.state_dir.display()
        );
        for p in &self.state.processes {
            for (what, path) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
                let text = read_lossy(path).unwrap_or_default();
                if !text.trim().is_empty() {
                    s.push_str(&format!(
                        "--- {} ({}) {what}, last lines:\n{}\n",
                        p.name,
                        p.ns,
                        tail(&text, 30)
                    ));
                }
            }
        }
        s
    }

    /// Leaves everything running (processes, namespaces) for `cargo xtask lab down`.
    pub fn keep(mut self) -> Result<LabState> {
        self.keep = true;
        self.save()?;
        Ok(self.state.clone())
    }

    /// Tears down the lab recorded under `STATE_ROOT/<name>` (processes, mounts,
    /// namespaces, state directory). Returns what it removed.
    pub fn down(name: &str) -> Result<Vec<String>> {
        let mut state = Lab::read_state(name)?;
        let done = teardown(&mut state, &mut BTreeMap::new());
        remove_state_dir(&Path::new(STATE_ROOT).join(name));
        Ok(done)
    }

    /// The state recorded for lab `name`.
    pub fn read_state(name: &str) -> Result<LabState> {
        let path = Path::new(STATE_ROOT).join(name).join("state.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NoState { path });
            }
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    /// Labs left behind: their creator is gone (a lab whose creator runs is in use,
    /// maybe by another user's run) and, with `run`, it was that run's.
    pub fn left_behind(run: Option<&str>) -> Vec<String> {
        Lab::list()
            .into_iter()
            .filter(|name| match Lab::read_state(name) {
                Ok(state) => is_left_behind(state.owner.as_ref(), run),
                // Unreadable: nobody can be shown to own it; only a machine-wide sweep takes it.
                Err(_) => run.is_none(),
            })
            .collect()
    }

    /// Names of the labs with a state directory.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(STATE_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        teardown(&mut self.state, &mut self.children);
        remove_state_dir(&self.state_dir);
    }
}

/// Undoes `state` in reverse order; reports problems on stderr and carries on.
fn teardown(state: &mut LabState, children: &mut BTreeMap<String, Child>) -> Vec<String> {
    let mut done = Vec::new();
    for p in state.processes.drain(..).rev() {
        stop_process(&p, children.get_mut(&p.name));
        done.push(format!("process {} (pid {})", p.name, p.pid));
    }
    for m in state.mounts.drain(..).rev() {
        let r = nix::mount::umount2(&m, MntFlags::empty())
            .or_else(|_| nix::mount::umount2(&m, MntFlags::MNT_DETACH));
        match r {
            Ok(()) => done.push(format!("mount {}", m.display())),
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(e) => eprintln!("keystone-lab: unmounting {}: {e}", m.display()),
        }
    }
    for ns in state.namespaces.drain(..).rev() {
        match cmd::run(Command::new("ip").args(["netns", "del", &ns])) {
            Ok(_) => done.push(format!("namespace {ns}")),
            Err(e) => eprintln!("keystone-lab: {e}"),
        }
    }
    done
}

fn remove_state_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("keystone-lab: removing {}: {e}", dir.display());
    }
}

/// Stops one process: SIGTERM, wait up to `STOP_GRACE`, SIGKILL. Without a child
/// handle (state read back from disk), only a pid whose argv[0] still matches is signalled.
fn stop_process(p: &ProcRecord, child: Option<&mut Child>) -> Option<ExitStatus> {
    let pid = Pid::from_raw(p.pid as i32);
    match child {
        Some(child) => {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "keystone-lab: {} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
                p.name, p.pid
            );
            let _ = child.kill();
            child.wait().ok()
        }
        None => {
            if !same_process(p) {
                return None;
            }
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !alive(p.pid) {
                    return None;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(pid, Signal::SIGKILL);
            None
        }
    }
}

fn is_left_behind(owner: Option<&Owner>, run: Option<&str>) -> bool {
    match (owner, run) {
        (Some(owner), _) if owner.is_alive() => false,
        (Some(owner), Some(run)) => owner.run.as_deref() == Some(run),
        (None, Some(_)) => false,
        (_, None) => true,
    }
}

/// Field 22 of /proc/<pid>/stat; None for a process that is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

fn same_process(p: &ProcRecord) -> bool {
    fs::read(format!("/proc/{}/cmdline", p.pid))
        .map(|c| c.split(|b| *b == 0).next() == Some(p.program.as_bytes()))
        .unwrap_or(false)
}

/// Running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn rp_filter_off<'a>(ifaces: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = ["all", "default"]
        .iter()
        .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0"))
        .collect();
    v.extend(
        ifaces
            .into_iter()
            .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0")),
    );
    v
}

fn sysctl(ns: &str, settings: &[String]) -> Result<()> {
    cmd::run(in_ns(ns, "sysctl").arg("-qw").args(settings)).map(drop)
}

fn ip_batch(ns: &str, batch: &str) -> Result<()> {
    cmd::run_with_stdin(Command::new("ip").args(["-n", ns, "-batch", "-"]), batch).map(drop)
}

fn read_lossy(path: &Path) -> Result<String> {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(io_err(format!("reading {}", path.display())))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_follow_the_plan() {
        let b = Backend::new("ks1-0", "blue", 1, false);
        assert_eq!(b.ns, "ks1-0-blue");
        assert_eq!(b.ipv4, Ipv4Addr::new(198, 18, 11, 2));
        assert_eq!(b.gw_ipv4, Ipv4Addr::new(198, 18, 11, 1));
        assert_eq!(b.ipv6.to_string(), "2001:2:0:11::2");
        assert_eq!(b.gw_ipv6.to_string(), "2001:2:0:11::1");
        assert_eq!(b.gw_if, "eth-blue");
        assert_eq!(VIP6.to_string(), "2001:2::10");
        let b = Backend::new("ks1-0", "green", 2, true);
        assert_eq!(b.ipv4, Ipv4Addr::new(198, 18, 10, 12));
        assert_eq!(b.gw_ipv4, Ipv4Addr::new(198, 18, 10, 1));
        assert_eq!(b.ipv6.to_string(), "2001:2:0:10::12");
        assert_eq!(b.gw_if, "eth-green");
    }

    #[test]
    fn only_labs_of_gone_creators_are_left_behind() {
        let me = Owner::current(Some("run-a".into()));
        assert!(me.is_alive());
        let gone = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(
            !gone.is_alive(),
            "a pid that started at another time is not the creator"
        );
        assert!(
            !is_left_behind(Some(&me), None),
            "a live creator's lab is in use"
        );
        assert!(!is_left_behind(Some(&me), Some("run-a")));
        assert!(is_left_behind(Some(&gone), None));
        assert!(is_left_behind(Some(&gone), Some("run-a")));
        assert!(!is_left_behind(Some(&gone), Some("run-b")), "another run's");
        assert!(
            is_left_behind(None, None),
            "a lab from before owners were recorded"
        );
        assert!(!is_left_behind(None, Some("run-a")));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
