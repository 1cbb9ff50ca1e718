//! Forged TCP segments sent from inside the lab's client namespace through a raw
//! socket: packets the client's kernel never sent for one of its own connections
//! (what a spoofing attacker, or a confused middlebox, puts on the wire).

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{Lab, LabError, Result, error::io_err};

impl Lab {
    /// The client addresses (address:port) of the client namespace's established TCP
    /// connections to `peer`, from `ss`.
    pub fn client_connections_to(&self, peer: SocketAddr) -> Result<Vec<SocketAddr>> {
        let out = self.exec(self.client_ns(), "ss", &["-Htn", "state", "established"])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().rev();
                let remote: SocketAddr = fields.next()?.parse().ok()?;
                let local: SocketAddr = fields.next()?.parse().ok()?;
                (remote == peer).then_some(local)
            })
            .collect())
    }

    /// The kernel's `TcpExt` counter `name` (e.g. `TCPSYNChallenge`: SYNs received
    /// on established connections) in namespace `ns`, from `/proc/net/netstat`.
    pub fn tcp_ext_counter(&self, ns: &str, name: &str) -> Result<u64> {
        let netstat = self.exec(ns, "cat", &["/proc/net/netstat"])?;
        let mut rows = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (rows.next().unwrap_or(""), rows.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| LabError::Io {
                what: format!("reading TcpExt {name} in {ns}"),
                source: std::io::Error::other(format!("not in /proc/net/netstat:\n{netstat}")),
            })
    }

    /// Sends one TCP SYN (ACK clear, a fresh sequence number) from each IPv4 address
    /// in `from` to `to`, from inside the client namespace: a SYN on the 4-tuple of
    /// whatever connection `from` already has.
    pub fn forge_syns(&self, from: &[SocketAddr], to: SocketAddrV4) -> Result<()> {
        self.forge_segments(from, to, TCP_SYN)
    }

    /// As [`Lab::forge_syns`], with TCP `flags` (e.g. [`TCP_ACK`]: a mid-flow packet).
    pub fn forge_segments(&self, from: &[SocketAddr], to: SocketAddrV4, flags: u8) -> Result<()> {
        let from: Vec<SocketAddrV4> = from
            .iter()
            .map(|a| match a {
                SocketAddr::V4(a) => Ok(*a),
                SocketAddr::V6(_) => Err(LabError::Io {
                    what: format!("forging a SYN from {a}"),
                    source: std::io::Error::other("only IPv4 sources are supported"),
                }),
            })
            .collect::<Result<_>>()?;
        let netns = format!("/run/netns/{}", self.client_ns());
        let ns = File::open(&netns).map_err(io_err(format!("opening {netns}")))?;
        // A thread of its own enters the namespace, so the caller's stays where it is.
        thread::scope(|s| {
            s.spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Sys {
                    what: format!("entering {netns}"),
                    source,
                })?;
                from.iter()
                    .try_for_each(|src| send_segment(*src, to, flags))
            })
            .join()
            .expect("the SYN-forging thread panicked")
        })
    }
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// One TCP segment with `flags` from `src` to `dst` through a raw IPPROTO_TCP socket
/// bound to `src`'s address (the kernel writes the IP header).
fn send_segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Result<()> {
    let what = format!("sending a forged TCP segment (flags {flags:#x}) {src} -> {dst}");
    let socket =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).map_err(io_err(what.clone()))?;
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(*src.ip(), 0)))
        .map_err(io_err(what.clone()))?;
    let segment = segment(src, dst, flags);
    let to = SockAddr::from(SocketAddr::new(IpAddr::V4(*dst.ip()), 0));
    socket.send_to(&segment, &to).map_err(io_err(what))?;
    Ok(())
}

/// A 20-byte TCP header with `flags` and a valid checksum.
fn segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> [u8; 20] {
    let seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ u32::from(src.port()) << 16;
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&src.port().to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = flags;
    h[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
    let mut pseudo = Vec::with_capacity(12 + h.len());
    pseudo.extend(src.ip().octets());
    pseudo.extend(dst.ip().octets());
    pseudo.extend([0, 6, 0, h.len() as u8]); // zero, protocol TCP, TCP length
    pseudo.extend(h);
    h[16..18].copy_from_slice(&internet_checksum(&pseudo).to_be_bytes());
    h
}

/// RFC 1071 checksum of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_syn_has_a_valid_checksum() {
        let src: SocketAddrV4 = "198.18.0.2:40000".parse().unwrap();
        let dst: SocketAddrV4 = "198.18.0.10:80".parse().unwrap();
        let h = segment(src, dst, TCP_SYN);
        let mut pseudo = Vec::new();
        pseudo.extend(src.ip().octets());
        pseudo.extend(dst.ip().octets());
        pseudo.extend([0, 6, 0, 20]);
        pseudo.extend(h);
        assert_eq!(internet_checksum(&pseudo), 0, "checksum over the segment");
        assert_eq!((h[13], u16::from_be_bytes([h[0], h[1]])), (0x02, 40000));
    }
}
