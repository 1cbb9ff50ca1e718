//! The `bgp:` block: VIPs announced through a BIRD 2 daemon (see `announce`).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::DurationSpec;

/// How long `drain` waits for new connections to stop when the config does not say.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BgpConfig {
    /// BIRD's control socket, passed as `birdc -s <socket>`.
    pub control_socket: PathBuf,
    /// The routes file the agent owns and BIRD's config includes.
    pub routes_file: PathBuf,
    /// The `birdc` program: a path, or a name looked up on `PATH` (default `birdc`).
    #[serde(default)]
    pub birdc: Option<PathBuf>,
    /// Addresses to announce (default: every tenant's listen address).
    #[serde(default)]
    pub vips: Option<Vec<IpAddr>>,
    /// The bound on `drain` (default 30s).
    #[serde(default)]
    pub drain_timeout: Option<DurationSpec>,
}

impl BgpConfig {
    pub fn birdc(&self) -> PathBuf {
        self.birdc.clone().unwrap_or_else(|| "birdc".into())
    }

    /// `drain_timeout` (validated when the config was loaded).
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
            .as_ref()
            .and_then(|d| d.parse().ok())
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT)
    }

    /// What makes the block unusable on this host, as (field under `bgp.`, reason):
    /// checked at start and at every reload, so a missing BIRD is refused loudly
    /// rather than found at the first announcement. `listen` are the tenants'
    /// addresses.
    pub fn problems(&self, listen: &[IpAddr]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push =
            |field: &str, reason: String| problems.push((format!("bgp.{field}"), reason));
        match parent(&self.control_socket) {
            Some(dir) if dir.is_dir() => {}
            dir => push(
                "control_socket",
                format!(
                    "the socket's directory {} does not exist (is BIRD installed and \
                     running with this control socket?)",
                    dir.unwrap_or(Path::new("")).display()
                ),
            ),
        }
        match parent(&self.routes_file) {
            Some(dir) => {
                if let Err(e) = probe_writable(dir) {
                    push(
                        "routes_file",
                        format!("cannot write in its directory {}: {e}", dir.display()),
                    );
                }
            }
            None => push("routes_file", "needs a file name".into()),
        }
        let birdc = self.birdc();
        if find_program(&birdc).is_none() {
            push(
                "birdc",
                format!(
                    "program {} not found{} (install BIRD 2: Debian package bird2)",
                    birdc.display(),
                    if birdc.components().count() > 1 {
                        ""
                    } else {
                        " on PATH"
                    }
                ),
            );
        }
        for (i, vip) in self.vips.iter().flatten().enumerate() {
            if !listen.contains(vip) {
                push(
                    &format!("vips[{i}]"),
                    format!("{vip} is no tenant's listen address"),
                );
            }
        }
        if let Some(Err(reason)) = self.drain_timeout.as_ref().map(DurationSpec::parse) {
            push("drain_timeout", reason);
        }
        problems
    }
}

/// The directory a file is in (`.` for a bare name).
fn parent(file: &Path) -> Option<&Path> {
    file.file_name()?;
    Some(match file.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("/"),
    })
}

/// Creates and removes a file in `dir`: the one test of writability that also holds
/// for root without `CAP_DAC_OVERRIDE` and for read-only mounts.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".keystone-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// `program` itself if it names a path, else the first executable of that name on
/// `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, LoadedConfig};

    fn problems(bgp: &str) -> Vec<(String, Option<usize>, String)> {
        let text = format!(
            "interfaces: [eth0]\ntenants:\n  - name: web\n    listen: 198.18.1.10:80\n    \
             services:\n      - name: blue\n        address: 198.18.11.2:8080\nbgp:\n{bgp}"
        );
        match LoadedConfig::parse(std::path::Path::new("k.yaml"), &text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| (p.field, p.line, p.reason))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_bird_that_cannot_work_is_refused_by_field_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok_dir = dir.path().display();
        let got = problems(
            "  control_socket: /nonexistent/bird/bird.ctl\n  \
             routes_file: /proc/keystone-routes.conf\n  birdc: /nonexistent/birdc\n  \
             vips: [198.18.1.10, 198.18.1.99]\n  drain_timeout: soon\n",
        );
        let fields: Vec<(&str, Option<usize>)> =
            got.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
        assert_eq!(
            fields,
            [
                ("bgp.control_socket", Some(9)),
                ("bgp.routes_file", Some(10)),
                ("bgp.birdc", Some(11)),
                ("bgp.vips[1]", Some(12)),
                ("bgp.drain_timeout", Some(13)),
            ],
            "{got:?}"
        );
        assert!(
            got[0].2.contains("/nonexistent/bird does not exist"),
            "{got:?}"
        );
        assert!(
            got[2].2.contains("program /nonexistent/birdc not found"),
            "{got:?}"
        );
        assert_eq!(got[3].2, "198.18.1.99 is no tenant's listen address");

        let missing = problems(&format!("  routes_file: {ok_dir}/r.conf\n"));
        assert_eq!(missing[0].0, "bgp.control_socket");
        assert_eq!(missing[0].2, "required");
    }
}
