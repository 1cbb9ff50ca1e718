//! The cleanup guard: who owns a lab, tearing it down on drop or with `lab down`,
//! and finding labs left behind.

use super::processes::stop_process;
use super::*;

/// The environment variable naming the run a lab belongs to (`.ci/run` sets it), so a
/// run's cleanup takes its own labs only: lab names are machine-wide.
pub const RUN_ENV: &str = "KEYSTONE_LAB_RUN";

/// The process that created a lab: a lab whose creator still runs is in use (it removes
/// it on drop), one whose creator is gone was left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// When that pid started (clock ticks after boot), so a reused pid does not count.
    pub start_time: u64,
    /// The creating run's [`RUN_ENV`], if it had one.
    pub run: Option<String>,
}

impl Owner {
    pub(crate) fn current(run: Option<String>) -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: start_time(pid).unwrap_or_default(),
            run,
        }
    }

    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

impl Lab {
    /// Leaves everything running (processes, namespaces) for `cargo xtask lab down`.
    pub fn keep(mut self) -> Result<LabState> {
        self.keep = true;
        self.save()?;
        Ok(self.state.clone())
    }

    /// Tears down the lab recorded under `STATE_ROOT/<name>` (processes, mounts,
    /// namespaces, state directory). Returns what it removed.
    pub fn down(name: &str) -> Result<Vec<String>> {
        let mut state = Lab::read_state(name)?;
        let done = teardown(&mut state, &mut BTreeMap::new());
        remove_state_dir(&Path::new(STATE_ROOT).join(name));
        Ok(done)
    }

    /// The state recorded for lab `name`.
    pub fn read_state(name: &str) -> Result<LabState> {
        let path = Path::new(STATE_ROOT).join(name).join("state.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NoState { path });
            }
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    /// Labs left behind: their creator is gone (a lab whose creator runs is in use,
    /// maybe by another user's run) and, with `run`, it was that run's.
    pub fn left_behind(run: Option<&str>) -> Vec<String> {
        Lab::list()
            .into_iter()
            .filter(|name| match Lab::read_state(name) {
                Ok(state) => is_left_behind(state.owner.as_ref(), run),
                // Unreadable: nobody can be shown to own it; only a machine-wide sweep takes it.
                Err(_) => run.is_none(),
            })
            .collect()
    }

    /// Names of the labs with a state directory.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(STATE_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        teardown(&mut self.state, &mut self.children);
        remove_state_dir(&self.state_dir);
    }
}

/// Undoes `state` in reverse order; reports problems on stderr and carries on.
fn teardown(state: &mut LabState, children: &mut BTreeMap<String, Child>) -> Vec<String> {
    let mut done = Vec::new();
    for p in state.processes.drain(..).rev() {
        stop_process(&p, children.get_mut(&p.name));
        done.push(format!("process {} (pid {})", p.name, p.pid));
    }
    for m in state.mounts.drain(..).rev() {
        let r = nix::mount::umount2(&m, MntFlags::empty())
            .or_else(|_| nix::mount::umount2(&m, MntFlags::MNT_DETACH));
        match r {
            Ok(()) => done.push(format!("mount {}", m.display())),
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(e) => eprintln!("keystone-lab: unmounting {}: {e}", m.display()),
        }
    }
    for ns in state.namespaces.drain(..).rev() {
        match cmd::run(Command::new("ip").args(["netns", "del", &ns])) {
            Ok(_) => done.push(format!("namespace {ns}")),
            Err(e) => eprintln!("keystone-lab: {e}"),
        }
    }
    done
}

fn remove_state_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("keystone-lab: removing {}: {e}", dir.display());
    }
}

fn is_left_behind(owner: Option<&Owner>, run: Option<&str>) -> bool {
    match (owner, run) {
        (Some(owner), _) if owner.is_alive() => false,
        (Some(owner), Some(run)) => owner.run.as_deref() == Some(run),
        (None, Some(_)) => false,
        (_, None) => true,
    }
}

/// Field 22 of /proc/<pid>/stat; None for a process that is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_labs_of_gone_creators_are_left_behind() {
        let me = Owner::current(Some("run-a".into()));
        assert!(me.is_alive());
        let gone = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(
            !gone.is_alive(),
            "a pid that started at another time is not the creator"
        );
        assert!(
            !is_left_behind(Some(&me), None),
            "a live creator's lab is in use"
        );
        assert!(!is_left_behind(Some(&me), Some("run-a")));
        assert!(is_left_behind(Some(&gone), None));
        assert!(is_left_behind(Some(&gone), Some("run-a")));
        assert!(!is_left_behind(Some(&gone), Some("run-b")), "another run's");
        assert!(
            is_left_behind(None, None),
            "a lab from before owners were recorded"
        );
        assert!(!is_left_behind(None, Some("run-a")));
    }
}
