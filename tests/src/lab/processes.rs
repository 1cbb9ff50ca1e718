//! The processes a lab runs: spawning, output, stopping and killing, the
//! backends, and failure diagnostics.

use super::*;

/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a backend gets to start listening.
const BACKEND_READY: Duration = Duration::from_secs(10);

/// A process the lab started, as recorded in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub ns: String,
    pub pid: u32,
    /// argv[0], checked against /proc before signalling a pid read back from disk.
    pub program: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Lab {
    /// Runs `program args…` inside `ns` to completion; returns stdout.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<String> {
        cmd::run(in_ns(ns, program).args(args))
    }

    /// Starts a long-lived `program args…` inside `ns` under `name`, with stdout and
    /// stderr in `<state dir>/<name>.out|.err`. It is stopped by [`Lab::stop`] or on drop.
    pub fn spawn<S: AsRef<OsStr>>(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[S],
    ) -> Result<u32> {
        if self.state.processes.iter().any(|p| p.name == name) {
            return Err(LabError::BadName {
                name: name.to_owned(),
                reason: "a process of that name is already running in this lab",
            });
        }
        let program = Bins::require(program)?;
        let stdout = self.state_dir.join(format!("{name}.out"));
        let stderr = self.state_dir.join(format!("{name}.err"));
        let open =
            |p: &Path| fs::File::create(p).map_err(io_err(format!("creating {}", p.display())));
        let mut c = in_ns(ns, program);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?);
        if self.detach {
            c.process_group(0);
        }
        let child = c.spawn().map_err(|source| LabError::Spawn {
            cmd: cmd::describe(&c),
            source,
        })?;
        let pid = child.id();
        self.children.insert(name.to_owned(), child);
        self.state.processes.push(ProcRecord {
            name: name.to_owned(),
            ns: ns.to_owned(),
            pid,
            program: program.to_string_lossy().into_owned(),
            stdout,
            stderr,
        });
        self.save()?;
        Ok(pid)
    }

    fn process_index(&self, name: &str) -> Result<usize> {
        self.state
            .processes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })
    }

    fn record(&self, name: &str) -> Result<&ProcRecord> {
        self.process_index(name).map(|i| &self.state.processes[i])
    }

    /// What the process has written to stdout so far.
    pub fn stdout_of(&self, name: &str) -> Result<String> {
        let p = self.record(name)?;
        read_lossy(&p.stdout)
    }

    /// What the process has written to stderr so far.
    pub fn stderr_of(&self, name: &str) -> Result<String> {
        let p = self.record(name)?;
        read_lossy(&p.stderr)
    }

    /// The file process `name`'s stderr goes to; it stays after the process is stopped.
    pub fn stderr_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.record(name)?.stderr.clone())
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let child = self
            .children
            .get_mut(name)
            .ok_or_else(|| LabError::NoProcess {
                name: name.to_owned(),
            })?;
        child
            .try_wait()
            .map_err(io_err(format!("waiting for {name}")))
    }

    /// An error if the process has exited (with its stderr), else `Ok`.
    pub fn ensure_running(&mut self, name: &str) -> Result<()> {
        match self.exited(name)? {
            None => Ok(()),
            Some(status) => Err(LabError::Exited {
                name: name.to_owned(),
                status: status.to_string(),
                stderr: tail(&self.stderr_of(name).unwrap_or_default(), 40),
            }),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; returns how it exited.
    pub fn stop(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let idx = self.process_index(name)?;
        let rec = self.state.processes[idx].clone();
        let status = stop_process(&rec, self.children.get_mut(name));
        self.children.remove(name);
        self.state.processes.remove(idx);
        self.save()?;
        Ok(status)
    }

    /// Starts `ks-backend --name <b> --port <port>` in every backend namespace and
    /// waits until each listens.
    pub fn start_backends(&mut self, port: u16) -> Result<()> {
        let backend_bin = self.bins.backend.clone();
        let port = port.to_string();
        for b in self.state.backends.clone() {
            self.spawn(
                &Self::backend_process(&b.name),
                &b.ns,
                &backend_bin,
                &["--name", &b.name, "--port", &port],
            )?;
        }
        for b in self.state.backends.clone() {
            self.wait_backend_listening(&b.name)?;
        }
        Ok(())
    }

    /// The process name of backend `name`'s ks-backend (`backend-<name>`).
    pub fn backend_process(name: &str) -> String {
        format!("backend-{name}")
    }

    /// Starts ks-backend in one backend's namespace (e.g. again, after
    /// [`Lab::stop_backend`]) and waits until it listens.
    pub fn start_backend(&mut self, name: &str, port: u16) -> Result<()> {
        let b = self.backend(name)?.clone();
        let backend_bin = self.bins.backend.clone();
        self.spawn(
            &Self::backend_process(name),
            &b.ns,
            &backend_bin,
            &["--name", name, "--port", &port.to_string()],
        )?;
        self.wait_backend_listening(name)
    }

    /// Stops one backend's ks-backend: its port is closed from then on (new
    /// connections are refused, health checks fail), the namespace stays.
    pub fn stop_backend(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        self.stop(&Self::backend_process(name))
    }

    fn wait_backend_listening(&mut self, name: &str) -> Result<()> {
        let pname = Self::backend_process(name);
        wait_for(
            &format!("ks-backend {name} to listen"),
            BACKEND_READY,
            || {
                self.ensure_running(&pname)?;
                let out = self.stdout_of(&pname)?;
                Ok(if out.contains("listening") {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(out)
                })
            },
        )
    }

    /// Kills the process with SIGKILL (no chance to clean up, as in a crash) and
    /// reaps it; returns how it exited.
    pub fn kill(&mut self, name: &str) -> Result<Option<ExitStatus>> {
        let idx = self.process_index(name)?;
        let status = match self.children.remove(name) {
            Some(mut child) => {
                // `ip netns exec` execs the program, so the child is the process itself.
                let _ = child.kill();
                Some(
                    child
                        .wait()
                        .map_err(io_err(format!("waiting for {name}")))?,
                )
            }
            None => {
                let _ = kill(
                    Pid::from_raw(self.state.processes[idx].pid as i32),
                    Signal::SIGKILL,
                );
                None
            }
        };
        self.state.processes.remove(idx);
        self.save()?;
        Ok(status)
    }

    /// The last lines of every process's output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "lab {} (state in {})\n",
            self.name(),
            self.state_dir.display()
        );
        for p in &self.state.processes {
            for (what, path) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
                let text = read_lossy(path).unwrap_or_default();
                if !text.trim().is_empty() {
                    s.push_str(&format!(
                        "--- {} ({}) {what}, last lines:\n{}\n",
                        p.name,
                        p.ns,
                        tail(&text, 30)
                    ));
                }
            }
        }
        s
    }
}

/// Stops one process: SIGTERM, wait up to `STOP_GRACE`, SIGKILL. Without a child
/// handle (state read back from disk), only a pid whose argv[0] still matches is signalled.
pub(super) fn stop_process(p: &ProcRecord, child: Option<&mut Child>) -> Option<ExitStatus> {
    let pid = Pid::from_raw(p.pid as i32);
    match child {
        Some(child) => {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "keystone-lab: {} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
                p.name, p.pid
            );
            let _ = child.kill();
            child.wait().ok()
        }
        None => {
            if !same_process(p) {
                return None;
            }
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !alive(p.pid) {
                    return None;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(pid, Signal::SIGKILL);
            None
        }
    }
}

fn same_process(p: &ProcRecord) -> bool {
    fs::read(format!("/proc/{}/cmdline", p.pid))
        .map(|c| c.split(|b| *b == 0).next() == Some(p.program.as_bytes()))
        .unwrap_or(false)
}

/// Running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn read_lossy(path: &Path) -> Result<String> {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(io_err(format!("reading {}", path.display())))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
