//! Where the lab finds the binaries it runs.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// Paths of the programs a lab runs. `cargo xtask build` puts all four in
/// `target/release/`.
#[derive(Clone, Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    pub backend: PathBuf,
    pub client: PathBuf,
}

impl Bins {
    /// All four binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            agent: dir.join("keystone-agent"),
            ctl: dir.join("keystone-ctl"),
            backend: dir.join("ks-backend"),
            client: dir.join("ks-client"),
        }
    }

    /// The binaries in the target directory of the running executable
    /// (`target/<profile>/`, also from a test binary in `target/<profile>/deps/`).
    /// `KEYSTONE_BIN_DIR` overrides it.
    pub fn beside_current_exe() -> Result<Self> {
        if let Some(dir) = std::env::var_os("KEYSTONE_BIN_DIR") {
            return Ok(Self::in_dir(Path::new(&dir)));
        }
        let exe = std::env::current_exe().map_err(|source| LabError::Io {
            what: "finding the running executable".into(),
            source,
        })?;
        let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Ok(Self::in_dir(&dir))
    }

    /// `path`, or an error telling how to build it.
    pub fn require(path: &Path) -> Result<&Path> {
        if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::MissingBinary {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: path.to_path_buf(),
            })
        }
    }
}

/// [`Bins::beside_current_exe`] with the lab tools of this package (`ks-backend`,
/// `ks-client`) as Cargo built them for the calling test.
#[macro_export]
macro_rules! test_bins {
    () => {{
        let mut bins = $crate::Bins::beside_current_exe().expect("target dir");
        bins.backend = env!("CARGO_BIN_EXE_ks-backend").into();
        bins.client = env!("CARGO_BIN_EXE_ks-client").into();
        bins
    }};
}
