//! The pin directory's filesystem.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::dataplane::LoadError;

pub(in crate::dataplane) fn remove_if_exists(path: &Path) -> Result<(), LoadError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoadError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Fails unless `dir` is on a bpf filesystem, going by /proc/self/mountinfo (the
/// longest mount point containing `dir`).
pub(in crate::dataplane) fn check_bpffs(dir: &Path) -> Result<(), LoadError> {
    let dir = dir.canonicalize().map_err(|source| LoadError::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|source| LoadError::PinDir {
            path: dir.clone(),
            source,
        })?;
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        let fstype = right.split(' ').next().unwrap_or_default();
        if dir.starts_with(&mount_point) {
            let depth = mount_point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fstype == "bpf"));
            }
        }
    }
    match best {
        Some((_, true)) => Ok(()),
        _ => Err(LoadError::NotBpffs {
            path: dir.clone(),
            mount_point: dir,
        }),
    }
}
