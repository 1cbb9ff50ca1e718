//! What the agent gives up once its data plane is loaded and its admin port bound,
//! before it serves HTTP: every capability but [`RUNTIME_CAPABILITIES`] (from the
//! effective, permitted, inheritable, ambient and bounding sets), and the right to
//! gain any back (`PR_SET_NO_NEW_PRIVS`).
//!
//! Capabilities belong to threads, and a thread starts with its creator's: call
//! [`drop_privileges`] while the process has one thread, before the async runtime
//! starts its workers.

use caps::{CapSet, Capability, CapsHashSet};

/// What the running agent still needs. Maps, links and pins are used through the file
/// descriptors it already holds; on kernels before 6.5 every `bpf()` call (map reads
/// and writes included) needs `CAP_BPF` when unprivileged BPF is disabled, the
/// distributions' default. Loading and attaching programs, creating maps and binding
/// a privileged port happen before the drop; changes that need them (interfaces,
/// `limits:`, `admin.listen`) are refused by a reload and need a restart.
pub const RUNTIME_CAPABILITIES: [Capability; 1] = [Capability::CAP_BPF];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot {what}: {source}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set NoNewPrivs: {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// Drops every capability of the calling thread but [`RUNTIME_CAPABILITIES`] (those
/// it has), and sets NoNewPrivs. Returns the capabilities kept.
pub fn drop_privileges() -> Result<CapsHashSet, PrivilegeError> {
    let err = |what| move |source| PrivilegeError::Caps { what, source };
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("read capabilities"))?;
    let keep: CapsHashSet = RUNTIME_CAPABILITIES
        .into_iter()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set can only shrink with CAP_SETPCAP, so it goes first.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(err("read capabilities"))?
    {
        for cap in caps::runtime::thread_all_supported().difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(err("shrink the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clear ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clear inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(err("drop effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("drop permitted capabilities"))?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    Ok(keep)
}
