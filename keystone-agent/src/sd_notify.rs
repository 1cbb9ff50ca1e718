//! systemd's readiness protocol (sd_notify(3)): one datagram such as `READY=1` to the
//! socket named in `NOTIFY_SOCKET`, so a `Type=notify` unit is "started" only once the
//! data plane is programmed and the API listens.

use std::{ffi::OsStr, io, os::unix::net::UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to `NOTIFY_SOCKET` if it is set; without it (not
/// started by systemd) there is nobody to tell and nothing is sent.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) => send(&socket, state),
        None => Ok(()),
    }
}

/// Sends `state` to `socket`: a path, or an abstract name written `@name`.
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sender = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sender.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(listener: &UnixDatagram) -> String {
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_the_state_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(received(&listener), "READY=1");
    }

    #[test]
    fn sends_the_state_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("keystone-sd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(received(&listener), "READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let err = send(OsStr::new("/nonexistent/keystone-notify"), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
