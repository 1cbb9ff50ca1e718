//! Builds the XDP program (keystone-ebpf) for bpfel-unknown-none with aya-build and
//! leaves it in OUT_DIR, where `src/dataplane/object.rs` includes it.
//! `AYA_BUILD_SKIP=1` skips it (lint-only jobs); the agent then has no object.
//! It also sets `KEYSTONE_GIT_COMMIT` (for `--version` and `keystone_build_info`).

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    git_commit();
    println!("cargo:rustc-check-cfg=cfg(keystone_no_ebpf)");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rustc-cfg=keystone_no_ebpf");
    } else if which("bpf-linker").is_none() {
        bail!(
            "bpf-linker is not installed (needed to build the XDP program): run `cargo xtask setup`, \
             or set AYA_BUILD_SKIP=1 to build the agent without its eBPF object"
        );
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../keystone-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("keystone-ebpf not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .context("keystone-ebpf path is not UTF-8")?;
    // aya-build relays the inner cargo's stderr as build-script warnings; keep it to
    // real diagnostics (which cargo prints even when quiet).
    // SAFETY: build scripts are single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let package = Package {
        name: "keystone-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
    .context("building the XDP program (keystone-ebpf) failed; `cargo xtask setup` installs the toolchain it needs")?;
    ab_variants(root_dir)
}

/// `bench packet`'s A/B variants (keystone-ebpf's `ab` feature) into `OUT_DIR/ab`, so
/// they never replace the agent's object: aya-build writes to `OUT_DIR`, which is
/// pointed there for this one build.
fn ab_variants(root_dir: &str) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let ab_dir = out_dir.join("ab");
    std::fs::create_dir_all(&ab_dir).with_context(|| format!("mkdir {}", ab_dir.display()))?;
    // aya-build's cargo target dir is `OUT_DIR/aya-build`: share the first build's,
    // so core and the dependencies are not built twice.
    // The link is relative, so a copied target directory keeps working; one made by
    // an older build (absolute, perhaps into a directory since removed) is replaced.
    let shared = ab_dir.join("aya-build");
    let relative = std::path::Path::new("../aya-build");
    if std::fs::read_link(&shared).ok().as_deref() != Some(relative) {
        let _ = std::fs::remove_file(&shared);
        std::os::unix::fs::symlink(relative, &shared)
            .with_context(|| format!("symlink {}", shared.display()))?;
    }
    let package = Package {
        name: "keystone-ebpf",
        root_dir,
        features: &["ab"],
        ..Default::default()
    };
    // SAFETY: as above (single-threaded build script).
    unsafe { env::set_var("OUT_DIR", &ab_dir) };
    let built = aya_build::build_ebpf([package], Toolchain::default());
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built.context("building the A/B variants of the XDP program (keystone-ebpf, feature ab) failed")
}

/// `KEYSTONE_GIT_COMMIT`: the checkout's short commit, or `unknown` outside a git
/// checkout (a source tarball, a crate).
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        // Rerun when HEAD moves: HEAD itself, and the branch it names (a loose ref, or
        // packed-refs). Paths that do not exist are left out: cargo would rerun always.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for path in ["HEAD", branch.as_deref().unwrap_or("HEAD"), "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", path])
                && std::path::Path::new(&p).exists()
            {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEYSTONE_GIT_COMMIT={commit}");
}

fn which(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
