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

/// An exclusive lock on a pin directory, held as long as this value (or a clone
/// of it) lives.
#[derive(Clone, Debug)]
pub struct PinDirLock(Arc<LockedDir>);

#[derive(Debug)]
struct LockedDir {
    dir: PathBuf,
    file: File,
}

impl Drop for LockedDir {
    /// Unlocks before closing: a `flock` lives as long as any copy of the
    /// descriptor, and a child another thread forked holds one until it execs.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
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
        // child the one before this one forked holds a copy of the descriptor until
        // it execs (or exits). Only a holder that keeps it past the grace is another
        // agent.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(PinDirLock(Arc::new(LockedDir {
                        dir: dir.to_owned(),
                        file,
                    })));
                }
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(LoadError::PinDirInUse {
                        path: dir.to_owned(),
                        holder: file.metadata().ok().and_then(|m| lock_holder(&m)),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(pin_dir_err(e)),
            }
        }
    }

    fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// Whether the directory now at the path is the one this lock is on (not removed
    /// and created again, or hidden by a bpffs mounted over it).
    fn still_at_path(&self) -> bool {
        match (self.0.file.metadata(), fs::metadata(self.dir())) {
            (Ok(locked), Ok(now)) => locked.dev() == now.dev() && locked.ino() == now.ino(),
            _ => false,
        }
    }
}

/// The pid that holds a `flock` on the file of `meta`, from `/proc/locks` (lines
/// like `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`; the device's major and
/// minor in hex, the inode in decimal). `None` when it cannot be told.
fn lock_holder(meta: &fs::Metadata) -> Option<u32> {
    let dev = meta.dev();
    // glibc's major()/minor() encoding of st_dev.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[1] == "FLOCK" && f[5] == file)
        .and_then(|f| f[4].parse().ok())
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
        let dir = self.lock.dir().to_owned();
        fs::create_dir_all(&dir)
            .map_err(|e| format!("pin directory {} is gone: {e}", dir.display()))?;
        super::aya_dataplane::check_bpffs(&dir).map_err(|e| e.to_string())?;
        self.lock = PinDirLock::acquire(&dir).map_err(|e| e.to_string())?;
        tracing::warn!(pin_dir = %dir.display(), "the pin directory was replaced; locked the new one");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    /// Kills and reaps the child on every path.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// What the child's descriptors point at (`/proc/<pid>/fd`).
    fn fd_targets(child: &Child) -> Vec<PathBuf> {
        fs::read_dir(format!("/proc/{}/fd", child.id()))
            .expect("/proc/<child>/fd")
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .collect()
    }

    /// The lock is the agent's, not its descriptor's: a child does not get the
    /// descriptor (close-on-exec), and a copy still open when the agent lets go (a
    /// child another thread forked and that has not exec'd yet) does not keep the
    /// directory locked — before, the next agent was refused "in use" (the packet
    /// test `a_load_that_fails_part_way_undoes_itself` did, once, under load).
    #[test]
    fn the_lock_goes_with_the_agent_not_with_a_copy_of_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PinDirLock::acquire(dir.path()).unwrap();

        let plain = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        assert!(
            !fd_targets(&plain.0).contains(&dir.path().to_owned()),
            "a spawned child holds the lock's descriptor: {:?}",
            fd_targets(&plain.0)
        );

        // The child's stdin: the same open file description as the lock's.
        let copy = lock.0.file.try_clone().unwrap();
        let _holder = Reaped(Command::new("sleep").arg("30").stdin(copy).spawn().unwrap());
        drop(lock);
        PinDirLock::acquire(dir.path())
            .expect("the lock once its agent let go, with a copy of the descriptor open");
    }

    /// A second lock on a held directory is refused, naming the holder.
    #[test]
    fn a_held_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = PinDirLock::acquire(dir.path()).unwrap();
        let err = PinDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "pin directory {} is in use by another keystone-agent (pid {} holds its lock): \
                 stop that agent first, or give this one its own --pin-dir",
                dir.path().display(),
                std::process::id()
            )
        );
    }
}
