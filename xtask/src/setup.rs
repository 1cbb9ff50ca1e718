//! `cargo xtask setup`: installs, idempotently, what building and testing Keystone
//! needs and a fresh machine lacks. Each step checks first and says what it did.

use std::{fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, cargo_home, path_env, run, which};

/// The bpf-linker release Keystone builds with (DESIGN.md "Toolchain facts").
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-deb release `cargo xtask package` builds the Debian package with (it
/// builds with rustc 1.95).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages the lab and tests use, by the program that shows each is there.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
    ("sysctl", "procps"),
    // examples/ci/keystone-webhook.sh signs with it; the tests run that script.
    ("openssl", "openssl"),
    // examples/ci/keystone-lib.sh reads `keystone-ctl tenants -o json` with it.
    ("jq", "jq"),
    // `cargo xtask bench e2e`: the peers Keystone is measured against, the backends'
    // HTTP server and the measuring tools (HAProxy and nginx stay out of the host: see
    // `quiet_bench_services`).
    ("nft", "nftables"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("trafgen", "netsniff-ng"),
    // The package test lints the .deb it builds.
    ("lintian", "lintian"),
    // tests/tests/prometheus.rs runs the shipped dashboard's queries and alert rules
    // in a real Prometheus; promtool checks and unit-tests the rules.
    ("prometheus", "prometheus"),
    // tests/tests/page.rs loads the agent's status page in headless Chromium.
    ("chromium", "chromium"),
    // The fleet lab: BIRD announces VIPs to the lab router (BGP + BFD, ECMP), etcd
    // coordinates one rollout across gateways, and etcd-client's build needs protoc.
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("protoc", "protobuf-compiler"),
    // protoc's well-known types (descriptor.proto), which etcd-client's protos import;
    // a path, not a program (`which` of an absolute path checks that file).
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

/// Packages (by program) whose Debian install starts a host service that the benches
/// and tests never use: they run their own copies (in the lab's namespaces, or the
/// Prometheus test's temp dir).
const BENCH_SERVICES: &[&str] = &["haproxy", "nginx", "prometheus", "bird", "etcd"];

/// What setup did, one line per step.
type Report = Vec<String>;

pub fn setup() -> Result<()> {
    let mut report = Report::new();
    rust_src(&mut report)?;
    bpf_linker(&mut report)?;
    let fresh_services: Vec<&str> = BENCH_SERVICES
        .iter()
        .copied()
        .filter(|program| which(program).is_none())
        .collect();
    debian_packages(&mut report)?;
    quiet_bench_services(&fresh_services, &mut report);
    schemathesis(&mut report)?;
    for line in &report {
        println!("setup: {line}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let what = keystone_lab::cmd::describe(cmd);
    let out = cmd
        .env("PATH", path_env()?)
        .output()
        .with_context(|| format!("starting `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly toolchain with rust-src (for `-Z build-std=core`).
fn rust_src(report: &mut Report) -> Result<()> {
    if which("rustup").is_none() {
        bail!(
            "rustup is missing: install Rust with rustup (stable and nightly toolchains), then run `cargo xtask setup` again"
        );
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain (rustup toolchain install nightly)");
        run(Command::new("rustup")
            .env("PATH", path_env()?)
            .args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]))
            .context("the nightly toolchain is missing and could not be installed: run `rustup toolchain install nightly --component rust-src`")?;
        report.push("installed the nightly toolchain with rust-src".into());
        return Ok(());
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        report.push("rust-src for nightly: already installed".into());
        return Ok(());
    }
    run(Command::new("rustup").env("PATH", path_env()?).args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("could not add rust-src: run `rustup component add rust-src --toolchain nightly`")?;
    report.push("installed rust-src for nightly".into());
    Ok(())
}

/// bpf-linker, linked against the nightly toolchain's own libLLVM (no system LLVM).
fn bpf_linker(report: &mut Report) -> Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if let Some(bin) = which("bpf-linker") {
        match output(Command::new(&bin).arg("--version")) {
            Ok(v) if v.trim() == want => {
                report.push(format!("{want}: already installed ({})", bin.display()));
                return Ok(());
            }
            Ok(v) => println!(
                "setup: {} is {}, not {want}: reinstalling",
                bin.display(),
                v.trim()
            ),
            Err(e) => println!("setup: {} does not run ({e}): reinstalling", bin.display()),
        }
    }

    // The nightly toolchain ships libLLVM.so.<major>.<minor>-rust-<version>; bpf-linker
    // links against it through a prefix whose lib/ holds it under both names it is
    // looked up by. The prefix stays (the binary keeps an rpath to it).
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib_dir = sysroot.join("lib");
    let llvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
                && p.metadata().is_ok_and(|m| m.len() > 1 << 20)
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: run `rustup component add llvm-tools --toolchain nightly` or reinstall nightly",
                lib_dir.display()
            )
        })?;
    let soname = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("libLLVM name")?
        .to_owned();
    let major: String = soname["libLLVM.so.".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot read the LLVM version from {soname}");
    }
    let prefix = cargo_home()?.join("keystone-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}; about a minute)",
        llvm.display()
    );
    run(cargo()?
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")]))
    .with_context(|| {
        format!(
            "bpf-linker did not build: run `LLVM_PREFIX={} cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-{major}` and read its error",
            prefix.display()
        )
    })?;
    let v = output(Command::new("bpf-linker").arg("--version"))?;
    if v.trim() != want {
        bail!("installed bpf-linker reports {:?}, not {want:?}", v.trim());
    }
    report.push(format!(
        "installed {want} (LLVM {major} from the nightly toolchain, prefix {})",
        prefix.display()
    ));
    Ok(())
}

/// cargo-deb, for `cargo xtask package` (only that command needs it, so `setup` does
/// not install it).
pub fn cargo_deb() -> Result<()> {
    let want = format!("cargo-deb {CARGO_DEB_VERSION}");
    if which("cargo-deb").is_some()
        && let Ok(v) = output(Command::new("cargo-deb").arg("--version"))
        && v.trim() == want
    {
        return Ok(());
    }
    println!("setup: installing {want} from crates.io (a few minutes)");
    run(cargo()?.args(["install", "cargo-deb", "--version", CARGO_DEB_VERSION, "--locked"]))
        .with_context(|| {
            format!("cargo-deb did not install: run `cargo install cargo-deb --version {CARGO_DEB_VERSION} --locked`")
        })
}

/// The Debian packages the lab uses: apt-get update once, and only if one is missing.
fn debian_packages(report: &mut Report) -> Result<()> {
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    // One package can ship several of the programs (bird2: bird and birdc).
    missing.dedup();
    if missing.is_empty() {
        let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(_, p)| *p).collect();
        report.push(format!(
            "Debian packages {}: already installed",
            names.join(", ")
        ));
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    if which("apt-get").is_none() || !nix::unistd::geteuid().is_root() {
        bail!(
            "missing packages {}: install them as root (`{install}` on Debian/Ubuntu)",
            missing.join(", ")
        );
    }
    println!("setup: installing {} with apt-get", missing.join(", "));
    run(Command::new("apt-get").arg("update").arg("-q"))
        .with_context(|| format!("apt-get update failed: run `apt-get update && {install}`"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
    .with_context(|| format!("apt-get install failed: run `{install}`"))?;
    report.push(format!("installed Debian packages {}", missing.join(", ")));
    Ok(())
}

/// schemathesis (PyPI) in its own virtualenv, for the API schema test.
fn schemathesis(report: &mut Report) -> Result<()> {
    let version = keystone_lab::tools::SCHEMATHESIS_VERSION;
    let venv =
        keystone_lab::tools::schemathesis_venv().context("neither CARGO_HOME nor HOME is set")?;
    let bin = venv.join("bin").join("schemathesis");
    if let Ok(v) = output(Command::new(&bin).arg("--version"))
        && v.contains(version)
    {
        report.push(format!(
            "schemathesis {version}: already installed ({})",
            bin.display()
        ));
        return Ok(());
    }
    let python = which("python3").context(
        "python3 is missing (needed for schemathesis): install Python 3 (`apt-get install python3 python3-venv`)",
    )?;
    println!(
        "setup: installing schemathesis {version} into {}",
        venv.display()
    );
    run(Command::new(&python)
        .arg("-m")
        .arg("venv")
        .arg("--clear")
        .arg(&venv))
    .with_context(|| {
        format!(
            "creating a Python virtualenv at {} failed: is python3-venv installed?",
            venv.display()
        )
    })?;
    run(Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={version}")))
    .with_context(|| {
        format!("pip could not install schemathesis=={version} (is PyPI reachable?)")
    })?;
    report.push(format!(
        "installed schemathesis {version} ({})",
        bin.display()
    ));
    Ok(())
}

/// Stops and disables the host services that installing `services` just started (on
/// machines whose package installs start services): the benches start their own in
/// namespaces, and a stock nginx on the host's port 80 is nobody's intent. Services that
/// were installed before setup ran are never touched.
fn quiet_bench_services(services: &[&str], report: &mut Report) {
    for service in services {
        if which(service).is_none() {
            continue;
        }
        let stopped = if std::path::Path::new("/run/systemd/system").is_dir() {
            Command::new("systemctl")
                .args(["disable", "--now", "--quiet", service])
                .status()
        } else {
            // Without systemd: honours policy-rc.d like the install did.
            Command::new("invoke-rc.d")
                .args(["--quiet", service, "stop"])
                .status()
        };
        match stopped {
            Ok(s) if s.success() => report.push(format!(
                "stopped the host's {service} service that its package started (the benches run their own)"
            )),
            _ => {}
        }
    }
}
