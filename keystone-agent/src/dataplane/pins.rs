//! Who owns a pin directory, and keeping its pins in place while the agent runs.
//!
//! One agent at a time: [`PinDirLock`] is an exclusive `flock` on the directory
//! itself, so the kernel releases it when the agent exits however it exits (SIGKILL
//! included) and a restart after a crash finds it free.
//!
//! The pins are what keeps forwarding going when the agent is gone: a link whose pin
//! was removed detaches when the agent exits. [`PinKeeper`] holds a spare reference
//! to every pinned object and pins again whatever disappeared (an `rm`, a bpffs
//! unmounted and mounted again), reporting it in [`PinWatch`].

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::MapData,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
    },
};
use aya_obj::programs::XdpAttachType;
use prometheus::{IntCounter, IntGauge, Registry};

use super::LoadError;

/// How long a held pin-directory lock is retried before another agent is assumed.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// An exclusive lock on a pin directory, held as long as this value (or a
/// [`PinDirLock::try_clone`] of it) lives.
#[derive(Debug)]
pub struct PinDirLock {
    dir: PathBuf,
    file: File,
}

impl PinDirLock {
    /// Locks `dir`, or fails with [`LoadError::PinDirInUse`] while another
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LoadError> {
        let pin_dir_err = |source| LoadError::PinDir {
            path: dir.to_owned(),
            source,
        };
        let file = File::open(dir).map_err(pin_dir_err)?;
        // A lock can be held for an instant by a process that no longer wants it: a
        // child forked (by this process or the one before it) holds a copy of the
        // descriptor until it execs. Only a holder that keeps it past the grace is
        // another agent.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(PinDirLock {
                        dir: dir.to_owned(),
                        file,
                    });
                }
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(LoadError::PinDirInUse {
                        path: dir.to_owned(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(pin_dir_err(e)),
            }
        }
    }

    /// Another handle on the same lock: it is released when every handle is gone.
    pub fn try_clone(&self) -> Result<Self, LoadError> {
        Ok(PinDirLock {
            dir: self.dir.clone(),
            file: self.file.try_clone().map_err(|source| LoadError::PinDir {
                path: self.dir.clone(),
                source,
            })?,
        })
    }

    /// Whether the directory now at the path is the one this lock is on (not removed
    /// and created again, or hidden by a bpffs mounted over it).
    fn still_at_path(&self) -> bool {
        match (self.file.metadata(), fs::metadata(&self.dir)) {
            (Ok(locked), Ok(now)) => locked.dev() == now.dev() && locked.ino() == now.ino(),
            _ => false,
        }
    }
}

/// A spare reference to one pinned object, to pin it again.
enum Spare {
    Map(MapData),
    Program(Box<Xdp>),
    /// `None` once a failed re-pin consumed it (`FdLink::pin` takes the link).
    Link(Option<FdLink>),
}

impl Spare {
    fn open(path: &Path, kind: PinKind) -> Result<Self, LoadError> {
        let opened = match kind {
            PinKind::Map => MapData::from_pin(path)
                .map(Spare::Map)
                .map_err(|e| e.to_string()),
            PinKind::Program => Xdp::from_pin(path, XdpAttachType::Interface)
                .map(|program| Spare::Program(Box::new(program)))
                .map_err(|e| e.to_string()),
            PinKind::Link => PinnedLink::from_pin(path)
                .map(|link| Spare::Link(Some(link.into())))
                .map_err(|e| e.to_string()),
        };
        opened.map_err(|reason| LoadError::Spare {
            path: path.to_owned(),
            reason,
        })
    }

    fn pin(&mut self, path: &Path) -> Result<(), String> {
        match self {
            Spare::Map(map) => map.pin(path).map_err(|e| e.to_string()),
            Spare::Program(program) => program.pin(path).map_err(|e| e.to_string()),
            Spare::Link(link) => {
                let spare = link
                    .take()
                    .ok_or("no reference to the link is left to pin it with")?;
                let pinned = spare.pin(path).map_err(|e| e.to_string())?;
                *link = Some(pinned.into());
                Ok(())
            }
        }
    }
}

/// What a pin holds.
#[derive(Clone, Copy, Debug)]
pub enum PinKind {
    Map,
    Program,
    Link,
}

/// The pins' state, for `/health` and `/metrics`.
#[derive(Debug)]
pub struct PinWatch {
    restored: IntCounter,
    missing: IntGauge,
    problem: Mutex<Option<String>>,
}

impl Default for PinWatch {
    fn default() -> Self {
        PinWatch {
            restored: IntCounter::new(
                "keystone_pins_restored_total",
                "Pins (maps, program, links) removed under the running agent and pinned again.",
            )
            .expect("metric definitions are static and valid"),
            missing: IntGauge::new(
                "keystone_pins_missing",
                "Pins that are gone and could not be pinned again: forwarding stops if the agent exits.",
            )
            .expect("metric definitions are static and valid"),
            problem: Mutex::new(None),
        }
    }
}

impl PinWatch {
    /// Why the data plane would not survive the agent's exit, if it would not.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .expect("pin watch lock poisoned")
            .clone()
    }

    /// Registers the pin metrics on `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.restored.clone()))?;
        registry.register(Box::new(self.missing.clone()))
    }
}

/// Spare references to every pin of a running data plane, and the lock on their
/// directory.
pub struct PinKeeper {
    lock: PinDirLock,
    pins: Vec<(PathBuf, Spare)>,
    watch: Arc<PinWatch>,
}

impl PinKeeper {
    /// Opens a spare reference to each of `pins` (which must all exist).
    pub fn open(
        lock: PinDirLock,
        pins: impl IntoIterator<Item = (PathBuf, PinKind)>,
    ) -> Result<Self, LoadError> {
        let pins = pins
            .into_iter()
            .map(|(path, kind)| Ok((path.clone(), Spare::open(&path, kind)?)))
            .collect::<Result<_, LoadError>>()?;
        Ok(PinKeeper {
            lock,
            pins,
            watch: Arc::default(),
        })
    }

    pub fn watch(&self) -> Arc<PinWatch> {
        self.watch.clone()
    }

    /// Stops keeping the pins (the data plane is being torn down): the spare
    /// references would otherwise keep unpinned links attached.
    pub fn forget(&mut self) {
        self.pins.clear();
    }

    /// Pins again whatever was removed; logs and records what it did in the watch.
    pub fn restore(&mut self) {
        if self.pins.is_empty() {
            return;
        }
        let mut problems = Vec::new();
        if let Err(problem) = self.relock() {
            problems.push(problem);
        }
        let mut restored = Vec::new();
        let mut missing = 0;
        if problems.is_empty() {
            for (path, spare) in &mut self.pins {
                if path.exists() {
                    continue;
                }
                match spare.pin(path) {
                    Ok(()) => restored.push(path.display().to_string()),
                    Err(e) => {
                        missing += 1;
                        problems.push(format!("cannot pin {} again: {e}", path.display()));
                    }
                }
            }
        } else {
            missing = self.pins.iter().filter(|(p, _)| !p.exists()).count();
        }
        if !restored.is_empty() {
            tracing::warn!(pins = ?restored, "pins were removed under the running agent; pinned them again");
            self.watch.restored.inc_by(restored.len() as u64);
        }
        let problem = (!problems.is_empty()).then(|| {
            format!(
                "the data plane's pins are incomplete, so forwarding stops if the agent exits: {}",
                problems.join("; ")
            )
        });
        if let Some(p) = &problem {
            tracing::error!("{p}");
        }
        self.watch.missing.set(missing as i64);
        *self.watch.problem.lock().expect("pin watch lock poisoned") = problem;
    }

    /// Makes sure the directory at the pin path exists and is the one locked: after
    /// it was removed, or a bpffs was mounted over it, a new one is locked (unless
    /// another agent holds it).
    fn relock(&mut self) -> Result<(), String> {
        if self.lock.still_at_path() {
            return Ok(());
        }
        let dir = self.lock.dir.clone();
        fs::create_dir_all(&dir)
            .map_err(|e| format!("pin directory {} is gone: {e}", dir.display()))?;
        super::aya_dataplane::check_bpffs(&dir).map_err(|e| e.to_string())?;
        self.lock = PinDirLock::acquire(&dir).map_err(|e| e.to_string())?;
        tracing::warn!(pin_dir = %dir.display(), "the pin directory was replaced; locked the new one");
        Ok(())
    }
}
