//! Filesystems under the lab's own directories for tests of what the agent does when
//! its state cannot be written: a small tmpfs, to fill or to make read-only.
//! Both are recorded like the lab's bpffs and unmounted on teardown; nothing outside
//! the lab's state directory is ever mounted over.

use std::{fs, io::Write, path::Path};

use nix::mount::{MsFlags, mount};

use crate::{
    error::{LabError, Result, io_err},
    lab::Lab,
};

impl Lab {
    /// Mounts a tmpfs of `bytes` bytes on `dir` (created if missing), which must lie
    /// inside the lab's state directory.
    pub fn mount_tmpfs(&mut self, dir: &Path, bytes: u64) -> Result<()> {
        self.own_dir(dir)?;
        let options = format!("size={bytes},mode=0700");
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|source| LabError::Sys {
            what: format!("mounting a {bytes}-byte tmpfs on {}", dir.display()),
            source,
        })?;
        self.record_mount(dir.to_owned())
    }

    /// Remounts the filesystem mounted on `dir` read-only, or read-write again. The
    /// flag is the filesystem's own, so every mount namespace that sees it (the
    /// agent's under `ip netns exec` too) sees the change at once.
    pub fn set_read_only(&self, dir: &Path, read_only: bool) -> Result<()> {
        self.own_dir(dir)?;
        let flags = if read_only {
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY
        } else {
            MsFlags::MS_REMOUNT
        };
        mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).map_err(|source| {
            LabError::Sys {
                what: format!("remounting {} (read-only: {read_only})", dir.display()),
                source,
            }
        })
    }

    fn own_dir(&self, dir: &Path) -> Result<()> {
        if !dir.starts_with(self.state_dir()) {
            return Err(LabError::BadName {
                name: dir.display().to_string(),
                reason: "the lab mounts only inside its own state directory",
            });
        }
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))
    }
}

/// Writes zeros to `path` until its filesystem is full (at most `limit` bytes);
/// returns how many were written.
pub fn fill_filesystem(path: &Path, limit: u64) -> Result<u64> {
    let mut file =
        fs::File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    let chunk = [0u8; 4096];
    let mut written = 0;
    while written < limit {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    Ok(written)
}
