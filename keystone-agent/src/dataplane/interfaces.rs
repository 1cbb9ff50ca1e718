//! What the agent knows about network devices, from sysfs and /proc/net of its own
//! namespace: ifindexes, what kind of device each is, the route to an address, and
//! from those the program's per-interface flags (`names::IFACES`) and the check that
//! refuses dsr backends XDP cannot reach.

use std::{
    collections::BTreeSet,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use keystone_common::{iface_flags, mode};

use super::{ApplyError, AttachMode, VipSpec};

mod auto;

const SYS_NET: &str = "/sys/class/net";

/// What kind of device an interface is, as far as XDP is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Bond,
    Vlan,
    /// A veth (or another device whose link is another device, e.g. a tunnel).
    Veth,
    /// A device with a bus device behind it: a real NIC.
    Nic,
    Other,
}

impl Kind {
    /// Whether native XDP can attach to it at all (a bridge, bond of such devices
    /// or VLAN device has no driver hook; the kernel falls back to generic XDP).
    fn has_native_xdp(self) -> bool {
        matches!(self, Kind::Veth | Kind::Nic)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Bridge => "a bridge",
            Kind::Bond => "a bond",
            Kind::Vlan => "a VLAN device",
            Kind::Veth => "a veth",
            Kind::Nic => "a NIC",
            Kind::Other => "a virtual device",
        })
    }
}

fn sys(name: &str, file: &str) -> Option<String> {
    fs::read_to_string(Path::new(SYS_NET).join(name).join(file))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The interface's ifindex in this process's network namespace (sysfs shows the
/// namespace it was mounted in, which need not be ours).
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// What kind of device `name` is, from sysfs (`Other` if it does not say; a veth
/// when sysfs does not know the device at all, as in a namespace entered without
/// remounting /sys: the common case for an attached interface).
pub fn kind(name: &str) -> Kind {
    let dir = Path::new(SYS_NET).join(name);
    if !dir.exists() {
        return Kind::Veth;
    }
    let devtype = sys(name, "uevent").and_then(|u| {
        u.lines()
            .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_owned))
    });
    match devtype.as_deref() {
        Some("bridge") => Kind::Bridge,
        Some("bond") => Kind::Bond,
        Some("vlan") => Kind::Vlan,
        _ if dir.join("device").exists() => Kind::Nic,
        _ if sys(name, "iflink").is_some() && sys(name, "iflink") != sys(name, "ifindex") => {
            Kind::Veth
        }
        _ => Kind::Other,
    }
}

/// The device the main routing table sends `ip` out of (longest prefix), from
/// /proc/net/route or /proc/net/ipv6_route.
pub fn route_device(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(ip) => best_route(&fs::read_to_string("/proc/net/route").ok()?, |l| {
            route4(l, ip)
        }),
        IpAddr::V6(ip) => best_route(&fs::read_to_string("/proc/net/ipv6_route").ok()?, |l| {
            route6(l, ip)
        }),
    }
}

/// The device of the matching line with the longest prefix.
fn best_route(table: &str, matches: impl Fn(&str) -> Option<(u32, String)>) -> Option<String> {
    table
        .lines()
        .filter_map(matches)
        .max_by_key(|(len, _)| *len)
        .map(|(_, dev)| dev)
}

/// A /proc/net/route line (`Iface Destination Gateway Flags … Mask …`, addresses as
/// little-endian hex words) that covers `ip`: (prefix length, device).
fn route4(line: &str, ip: Ipv4Addr) -> Option<(u32, String)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
    let (dest, mask) = (word(f.get(1)?)?, word(f.get(7)?)?);
    (u32::from(ip) & mask == dest).then(|| (mask.count_ones(), f[0].to_owned()))
}

/// A /proc/net/ipv6_route line (`dest prefixlen src srclen next-hop metric refcnt use
/// flags device`, addresses as 32 hex digits) that covers `ip`.
fn route6(line: &str, ip: Ipv6Addr) -> Option<(u32, String)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let dest = u128::from_str_radix(f.first()?, 16).ok()?;
    let len = u32::from_str_radix(f.get(1)?, 16).ok()?;
    let dev = f.get(9)?;
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len.min(128))
    };
    (*dev != "lo" && u128::from(ip) & mask == dest).then(|| (len, (*dev).to_owned()))
}

/// The `iface_flags` for an interface the program was just attached to in `native`
/// or generic mode.
pub fn flags(native: bool) -> u32 {
    if native {
        iface_flags::REDIRECT_TARGET
    } else {
        iface_flags::GENERIC
    }
}

/// The flags of an interface whose XDP link a previous agent pinned (its mode is
/// not known here): native where the device has a native XDP hook, as the attach
/// fallback would have chosen.
pub fn guessed_flags(name: &str) -> u32 {
    predicted_flags(&[(name.to_owned(), AttachMode::Driver)])[0].1
}

/// The first kernel with the tcx hook `attach: tc` attaches to (Linux 6.6).
pub const TCX_KERNEL: (u32, u32) = (6, 6);
/// Makes the agent take the kernel for the version it names (`5.15`) when it asks
/// whether tcx is there: for tests of what an older kernel gets.
pub const KERNEL_VERSION_ENV: &str = "KEYSTONE_KERNEL_VERSION";

/// `major.minor` of a kernel release (`6.18.44-fc` → (6, 18)).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The running kernel's release (or `KERNEL_VERSION_ENV`'s), as written.
fn kernel_release() -> String {
    std::env::var(KERNEL_VERSION_ENV)
        .or_else(|_| fs::read_to_string("/proc/sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether the kernel has tcx (an unreadable version counts as having it: the
/// attach then says what failed).
fn has_tcx(release: &str) -> bool {
    major_minor(release).is_none_or(|v| v >= TCX_KERNEL)
}

/// `attach: tc` on a kernel without tcx, refused before anything is attached. There
/// is no clsact (cls_bpf) fallback: the agent's restarts and upgrades swap the
/// program inside pinned links, which cls_bpf filters are not.
#[derive(Debug, thiserror::Error)]
#[error(
    "interface {interface}: `attach: tc` needs the tcx hook of Linux {}.{} or later, and this kernel is {kernel}: use `attach: xdp-generic` (or `xdp`) for it",
    TCX_KERNEL.0,
    TCX_KERNEL.1
)]
pub struct NoTcx {
    pub interface: String,
    pub kernel: String,
}

/// Refuses an interface whose `attach:` is `tc` on a kernel without tcx (`auto`
/// picks XDP there, see `auto::hook`).
pub fn check_tcx(interfaces: &[(String, AttachMode)]) -> Result<(), NoTcx> {
    let kernel = kernel_release();
    if has_tcx(&kernel) {
        return Ok(());
    }
    match interfaces.iter().find(|(_, m)| *m == AttachMode::Tc) {
        Some((interface, _)) => Err(NoTcx {
            interface: interface.clone(),
            kernel,
        }),
        None => Ok(()),
    }
}

/// `mode` for `name`, with `auto` decided (`auto::hook`).
pub fn resolved(name: &str, mode: AttachMode) -> AttachMode {
    match mode {
        AttachMode::Auto => auto::hook(&auto::Device::of(name)),
        mode => mode,
    }
}

/// The flags `interfaces` (name, `attach:`) will get when attached: native where
/// `xdp` and the device has a native XDP hook (as the attach fallback chooses),
/// else generic (`xdp-generic` and `tc` take skbs). For checking a config before
/// anything is attached.
pub fn predicted_flags(interfaces: &[(String, AttachMode)]) -> Vec<(String, u32)> {
    interfaces
        .iter()
        .map(|(i, mode)| {
            let native = resolved(i, *mode) == AttachMode::Driver && kind(i).has_native_xdp();
            (i.clone(), flags(native))
        })
        .collect()
}

/// Refuses dsr backends XDP cannot reach: a dsr packet keeps the VIP as its
/// destination, so the kernel cannot forward it, and only a redirect gets it to the
/// backend. Each backend's route device must take a redirect from every interface
/// (`iface_flags`): it has the program natively attached, or every attachment is
/// generic. `attached` is (interface, flags). Backends in `checked` are skipped
/// (checked when first applied), and those that pass are added.
pub fn check_dsr_backends(
    vips: &[VipSpec],
    attached: &[(String, u32)],
    checked: &mut BTreeSet<(String, IpAddr)>,
) -> Result<(), ApplyError> {
    let all_generic = attached.iter().all(|(_, f)| f & iface_flags::GENERIC != 0);
    for vip in vips.iter().filter(|v| v.mode == mode::DSR) {
        for b in &vip.backends {
            let ip = b.endpoint.ip();
            let key = (vip.name.clone(), ip);
            if checked.contains(&key) {
                continue;
            }
            if let Some(device) = route_device(ip) {
                let redirect_target = attached
                    .iter()
                    .any(|(i, f)| *i == device && f & iface_flags::REDIRECT_TARGET != 0);
                if !redirect_target && !all_generic {
                    return Err(ApplyError::DsrEgress {
                        tenant: vip.name.clone(),
                        backend: b.name.clone(),
                        address: ip,
                        device: format!("{device} ({})", kind(&device)),
                    });
                }
            }
            checked.insert(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcx_is_there_from_linux_6_6() {
        assert_eq!(major_minor("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(major_minor("5.15.0-91-generic\n"), Some((5, 15)));
        assert!(has_tcx("6.6.0") && has_tcx("7.0") && has_tcx("unknown"));
        assert!(!has_tcx("6.1.0") && !has_tcx("5.15.0-91-generic"));
    }

    #[test]
    fn ipv4_routes_match_by_longest_prefix() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     br0\t000A12C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let dev = |ip: &str| best_route(table, |l| route4(l, ip.parse().unwrap()));
        assert_eq!(dev("198.18.10.11").as_deref(), Some("br0"));
        assert_eq!(dev("203.0.113.1").as_deref(), Some("eth0"));
    }

    #[test]
    fn ipv6_routes_match_by_longest_prefix_and_skip_lo() {
        let table = "20010002000000100000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   br0\n\
                     00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010002000000010000000000000001 00000400 00000001 00000000 00000003     eth0\n\
                     20010002000000100000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";
        let dev = |ip: &str| best_route(table, |l| route6(l, ip.parse().unwrap()));
        assert_eq!(dev("2001:2:0:10::11").as_deref(), Some("br0"));
        assert_eq!(dev("2001:2:0:10::1").as_deref(), Some("br0"));
        assert_eq!(dev("2001:db8::1").as_deref(), Some("eth0"));
    }
}
