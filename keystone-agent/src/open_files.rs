//! The agent's open-files budget. One descriptor per admin connection, health probe,
//! notification and map: if clients could take them all, health checks would fail
//! with EMFILE and every backend would be marked down. So the agent raises its soft
//! limit to the hard one at start, caps admin connections below what is left after
//! a reserve for everything else, and never blames a backend for this host running
//! out of something ([`is_local`]).

use std::io;

use nix::{
    errno::Errno,
    sys::resource::{Resource, getrlimit, setrlimit},
};

/// Descriptors kept for everything but admin connections: maps and links, health
/// probes (one per checked backend while it runs), notifications, state files.
pub const RESERVED_FOR_AGENT: u64 = 512;
/// Most admin connections at once, however high the limit.
pub const MAX_ADMIN_CONNECTIONS: usize = 256;
/// Fewest admin connections at once, however low the limit.
const MIN_ADMIN_CONNECTIONS: usize = 8;

/// RLIMIT_NOFILE before and after [`raise_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one (systemd starts services at a
/// soft 1,024 with a much higher hard limit).
pub fn raise_limit() -> nix::Result<OpenFilesLimit> {
    let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFilesLimit {
        soft_before,
        soft,
        hard,
    })
}

/// How many admin connections may be open at once under an open-files limit of
/// `open_files`: what is left after [`RESERVED_FOR_AGENT`], within bounds.
pub fn admin_connection_limit(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FOR_AGENT))
        .unwrap_or(usize::MAX)
        .clamp(MIN_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS)
}

/// Whether `e` says this host ran out of something (descriptors, buffers, memory,
/// local ports) rather than that the other end failed.
pub fn is_local(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM | Errno::EADDRNOTAVAIL
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_are_told_from_the_peers() {
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(
                is_local(&io::Error::from_raw_os_error(errno as i32)),
                "{errno}"
            );
        }
        for errno in [Errno::ECONNREFUSED, Errno::EHOSTUNREACH, Errno::ETIMEDOUT] {
            assert!(
                !is_local(&io::Error::from_raw_os_error(errno as i32)),
                "{errno}"
            );
        }
        assert!(!is_local(&io::Error::other("no OS error")));
    }

    #[test]
    fn admin_connections_leave_the_reserve() {
        assert_eq!(admin_connection_limit(1024), 256);
        assert_eq!(admin_connection_limit(600), 88);
        assert_eq!(admin_connection_limit(100), 8);
        assert_eq!(admin_connection_limit(u64::MAX), 256);
    }
}
