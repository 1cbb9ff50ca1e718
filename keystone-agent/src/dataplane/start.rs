//! One start of the data plane, undone unless it is committed.
//!
//! A start that fails must leave nothing behind, and a data plane an earlier agent
//! left pinned and forwarding (`--keep-forwarding`, a crash) exactly as it was. So
//! [`Start`] records what the start changed in the pin directory as it goes: pins it
//! created, pins it replaced (with a reference to the previous object), links into
//! which it swapped its program. Dropping a `Start` that was not committed undoes all
//! of that in reverse; [`Start::commit`] keeps it and removes what the new data plane
//! replaced for good (pins of older map layouts).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapData,
    programs::{
        SchedClassifier, Xdp,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;

use super::{
    LoadError,
    aya_dataplane::{self, Hook},
    pins::PinDirLock,
};

/// A program an earlier agent pinned, to pin back and swap back into its links.
enum Previous {
    Xdp(Xdp),
    Tc(SchedClassifier),
}

impl Previous {
    fn open(path: &Path, hook: Hook) -> Result<Self, aya::programs::ProgramError> {
        Ok(match hook {
            Hook::Xdp => Previous::Xdp(Xdp::from_pin(path, XdpAttachType::Interface)?),
            Hook::Tc => Previous::Tc(SchedClassifier::from_pin(path)?),
        })
    }

    fn hook(&self) -> Hook {
        match self {
            Previous::Xdp(_) => Hook::Xdp,
            Previous::Tc(_) => Hook::Tc,
        }
    }

    /// Puts this program back into the pinned link at `link`.
    fn swap_back(&mut self, link: &Path) -> Result<(), String> {
        let link = FdLink::from(PinnedLink::from_pin(link).map_err(|e| e.to_string())?);
        match self {
            Previous::Xdp(p) => XdpLink::try_from(link)
                .map_err(|e| e.to_string())
                .and_then(|l| p.attach_to_link(l).map(drop).map_err(|e| e.to_string())),
            Previous::Tc(p) => SchedClassifierLink::try_from(link)
                .map_err(|e| e.to_string())
                .and_then(|l| p.attach_to_link(l).map(drop).map_err(|e| e.to_string())),
        }
    }

    fn pin(&mut self, path: &Path) -> Result<(), String> {
        match self {
            Previous::Xdp(p) => p.pin(path),
            Previous::Tc(p) => p.pin(path),
        }
        .map_err(|e| e.to_string())
    }
}

pub struct Start {
    pin_dir: PathBuf,
    lock: PinDirLock,
    /// The pin directory did not exist before this start.
    created_dir: bool,
    /// Names in the pin directory before this start touched it.
    existing: BTreeSet<String>,
    /// Pins this start created, in order.
    created: Vec<PathBuf>,
    /// Pins this start replaced, with the map that was pinned there.
    replaced_maps: Vec<(PathBuf, MapData)>,
    /// The programs an earlier agent pinned, replaced by this start's.
    previous_programs: Vec<(PathBuf, Previous)>,
    /// Pinned links that now run this start's program (at that hook) instead of
    /// the previous one.
    swapped_links: Vec<(PathBuf, Hook)>,
    /// Pins to remove once the start is committed.
    unpin_on_commit: Vec<PathBuf>,
    committed: bool,
}

impl Start {
    /// Claims `pin_dir` for this start: creates it if needed, checks it is on a bpffs
    /// and locks it (refused while another agent holds it).
    pub fn begin(pin_dir: &Path) -> Result<Start, LoadError> {
        let created_dir = !pin_dir.exists();
        let claimed = fs::create_dir_all(pin_dir)
            .map_err(|source| LoadError::PinDir {
                path: pin_dir.to_owned(),
                source,
            })
            .and_then(|()| aya_dataplane::check_bpffs(pin_dir))
            .and_then(|()| PinDirLock::acquire(pin_dir));
        let lock = match claimed {
            Ok(lock) => lock,
            Err(e) => {
                if created_dir {
                    let _ = fs::remove_dir(pin_dir);
                }
                return Err(bpffs_hint(pin_dir, e));
            }
        };
        let existing = fs::read_dir(pin_dir)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .map_err(|source| LoadError::PinDir {
                path: pin_dir.to_owned(),
                source,
            })?;
        Ok(Start {
            pin_dir: pin_dir.to_owned(),
            lock,
            created_dir,
            existing,
            created: Vec::new(),
            replaced_maps: Vec::new(),
            previous_programs: Vec::new(),
            swapped_links: Vec::new(),
            unpin_on_commit: Vec::new(),
            committed: false,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn lock(&self) -> PinDirLock {
        self.lock.clone()
    }

    /// Whether `name` was pinned before this start.
    pub fn existed(&self, name: &str) -> bool {
        self.existing.contains(name)
    }

    /// Records a pin this start created.
    pub fn created(&mut self, path: PathBuf) {
        self.created.push(path);
    }

    /// Unpins the map at `path` so the loader creates a new one there, keeping the old
    /// map to pin back if the start fails.
    pub fn replace_map(&mut self, path: &Path, old: MapData) -> Result<(), LoadError> {
        aya_dataplane::remove_if_exists(path)?;
        self.replaced_maps.push((path.to_owned(), old));
        Ok(())
    }

    /// Unpins the program at `path` (if any) for this start's, keeping the old one to
    /// pin back, and to swap back into the links, if the start fails.
    pub fn replace_program(&mut self, path: &Path, hook: Hook) -> Result<(), LoadError> {
        if !path.exists() {
            self.created(path.to_owned());
            return Ok(());
        }
        let old = Previous::open(path, hook).map_err(|source| LoadError::Program {
            what: "open the pinned previous",
            source,
        })?;
        aya_dataplane::remove_if_exists(path)?;
        self.previous_programs.push((path.to_owned(), old));
        Ok(())
    }

    /// Records a pinned link (at `hook`) that now runs this start's program.
    pub fn swapped_link(&mut self, path: PathBuf, hook: Hook) {
        self.swapped_links.push((path, hook));
    }

    /// Records a pin the new data plane makes obsolete once it is committed.
    pub fn unpin_on_commit(&mut self, path: PathBuf) {
        self.unpin_on_commit.push(path);
    }

    /// Keeps what this start did.
    pub fn commit(mut self) -> Result<(), LoadError> {
        self.committed = true;
        for path in &self.unpin_on_commit {
            aya_dataplane::remove_if_exists(path)?;
        }
        Ok(())
    }

    /// Undoes the start, most recent change first. Best effort: every step is tried,
    /// failures are logged.
    fn undo(&mut self) {
        let warn = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            tracing::error!(path = %path.display(), error = %e, "failed start: cannot {what}");
        };
        for (link, hook) in self.swapped_links.drain(..).rev() {
            let previous = self
                .previous_programs
                .iter_mut()
                .find(|(_, p)| p.hook() == hook);
            let Some((_, previous)) = previous else {
                warn(
                    "give the link back its program",
                    &link,
                    &"no previous program is pinned",
                );
                continue;
            };
            match previous.swap_back(&link) {
                Ok(()) => {
                    tracing::info!(link = %link.display(), "failed start: the link runs its previous program again")
                }
                Err(e) => warn("give the link back its program", &link, &e),
            }
        }
        for path in self.created.drain(..).rev() {
            if let Err(e) = aya_dataplane::remove_if_exists(&path) {
                warn("remove the pin", &path, &e);
            }
        }
        for (path, mut previous) in self.previous_programs.drain(..).rev() {
            let restored = aya_dataplane::remove_if_exists(&path)
                .map_err(|e| e.to_string())
                .and_then(|()| previous.pin(&path));
            if let Err(e) = restored {
                warn("pin the previous program back", &path, &e);
            }
        }
        for (path, old) in self.replaced_maps.drain(..).rev() {
            let restored = aya_dataplane::remove_if_exists(&path)
                .map_err(|e| e.to_string())
                .and_then(|()| old.pin(&path).map_err(|e| e.to_string()));
            if let Err(e) = restored {
                warn("pin the previous map back", &path, &e);
            }
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.pin_dir);
        }
        tracing::info!(pin_dir = %self.pin_dir.display(), "failed start undone");
    }
}

impl Drop for Start {
    fn drop(&mut self) {
        if !self.committed {
            self.undo();
        }
    }
}

/// `e`, or for a pin directory that is not (or cannot be made) on a bpffs, the one
/// command that fixes it. Under the conventional `/sys/fs/bpf` that is mounting the
/// bpffs there, which most distributions do at boot and minimal hosts do not.
fn bpffs_hint(pin_dir: &Path, e: LoadError) -> LoadError {
    let on_bpffs = pin_dir
        .ancestors()
        .find(|dir| dir.exists())
        .is_some_and(|dir| aya_dataplane::check_bpffs(dir).is_ok());
    match e {
        LoadError::PinDirInUse { .. } => e,
        _ if on_bpffs => e,
        _ => {
            let mount_point = Path::new(BPFFS_ROOT);
            LoadError::NotBpffs {
                path: pin_dir.to_owned(),
                mount_point: if pin_dir.starts_with(mount_point) {
                    mount_point.to_owned()
                } else {
                    pin_dir.to_owned()
                },
            }
        }
    }
}

/// Where distributions mount the bpf filesystem.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
