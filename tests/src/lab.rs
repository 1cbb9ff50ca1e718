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

mod addresses;
mod cleanup;
mod processes;
pub(crate) mod topology;

pub use addresses::{Backend, CLIENT4, CLIENT6, GW_CLIENT4, GW_CLIENT6, VIP4, VIP6};
pub use cleanup::{Owner, RUN_ENV};
pub use processes::{ProcRecord, tail};

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
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
        let (prefix, name) = checked_names(self.name, &self.backends)?;
        let bins = match self.bins {
            Some(b) => b,
            None => Bins::beside_current_exe()?,
        };
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
        let mut lab = Lab::open(state, bins, self.detach)?;
        lab.create()?;
        Ok(lab)
    }
}

impl Lab {
    /// A lab with `state` and nothing created yet: its state directory made and the
    /// state saved, so that from here on dropping it removes whatever it records.
    pub(crate) fn open(state: LabState, bins: Bins, detach: bool) -> Result<Lab> {
        let state_dir = Path::new(STATE_ROOT).join(&state.name);
        if state_dir.join("state.json").exists() {
            return Err(LabError::Exists {
                name: state.name,
                dir: state_dir,
            });
        }
        fs::create_dir_all(&state_dir)
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
        let lab = Lab {
            state,
            state_dir,
            children: BTreeMap::new(),
            keep: false,
            detach,
            bins,
        };
        lab.save()?;
        Ok(lab)
    }
}

/// Checks that we run as root and that the lab's and the backends' names are usable;
/// returns the prefix of the lab's namespaces and the lab's name (default: the prefix).
pub(crate) fn checked_names(name: Option<String>, backends: &[String]) -> Result<(String, String)> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let prefix = format!(
        "ks{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let name = name.unwrap_or_else(|| prefix.clone());
    check_name(&name, 40, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })?;
    if backends.is_empty() || backends.len() > 40 {
        return Err(LabError::BadName {
            name: backends.join(","),
            reason: "a lab needs 1 to 40 backends",
        });
    }
    for b in backends {
        check_name(b, 11, |c| c.is_ascii_lowercase() || c.is_ascii_digit())?;
        if b == "client" || b == "gw" || backends.iter().filter(|x| *x == b).count() > 1 {
            return Err(LabError::BadName {
                name: b.clone(),
                reason: "backend names must be unique and not client or gw",
            });
        }
    }
    Ok((prefix, name))
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

    /// Records a mount the lab made, to be unmounted (in reverse order) on teardown.
    pub(crate) fn record_mount(&mut self, path: PathBuf) -> Result<()> {
        self.state.mounts.push(path);
        self.save()
    }
}
