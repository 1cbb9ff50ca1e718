//! The `attach: auto` rule: which hook a device gets, from what sysfs says it is.
//! The rule follows BENCHMARKS.md ("Behind a bridge", "xdp or tc"); README "The tc
//! hook" states it for users.

use std::{fs, path::Path};

use super::{Kind, SYS_NET, has_tcx, kernel_release, kind};
use crate::dataplane::AttachMode;

/// What the rule looks at for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub kind: Kind,
    /// The kind of the device it is enslaved to (a bridge's port, a bond's member).
    pub master: Option<Kind>,
    /// Whether the kernel has the tcx hook (Linux 6.6 or later).
    pub tcx: bool,
}

impl Device {
    /// `name` as sysfs of this namespace shows it.
    pub fn of(name: &str) -> Device {
        let master = fs::read_link(Path::new(SYS_NET).join(name).join("master"))
            .ok()
            .and_then(|p| p.file_name().map(|n| kind(&n.to_string_lossy())));
        Device {
            kind: kind(name),
            master,
            tcx: has_tcx(&kernel_release()),
        }
    }
}

/// Native XDP on a NIC of its own (nothing in front of the driver's hook, the case
/// native XDP is built for); tc everywhere else. On a veth native XDP pays an skb →
/// XDP buffer copy per packet; a bridge, bond or VLAN device has no native hook at
/// all; and a port of a bridge or bond (a NIC included) hands its packets to that
/// device, which a native XDP redirect cannot reach (dsr is refused there). Among
/// the hooks that serve a bridge, tc on the ports served every case in the measured
/// run (BENCHMARKS.md, "Behind a bridge"). Without tcx it is XDP everywhere (the
/// attach falls back to generic XDP where the driver has no native hook).
pub fn hook(device: &Device) -> AttachMode {
    match (device.kind, device.master) {
        _ if !device.tcx => AttachMode::Driver,
        (Kind::Nic, None) => AttachMode::Driver,
        _ => AttachMode::Tc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(kind: Kind, master: Option<Kind>) -> Device {
        Device {
            kind,
            master,
            tcx: true,
        }
    }

    #[test]
    fn auto_is_native_xdp_only_on_a_nic_of_its_own() {
        let cases = [
            ("veth", device(Kind::Veth, None), AttachMode::Tc),
            (
                "a veth bridge port",
                device(Kind::Veth, Some(Kind::Bridge)),
                AttachMode::Tc,
            ),
            ("a bridge", device(Kind::Bridge, None), AttachMode::Tc),
            ("a bond", device(Kind::Bond, None), AttachMode::Tc),
            ("a VLAN device", device(Kind::Vlan, None), AttachMode::Tc),
            (
                "a VLAN device on a bridge",
                device(Kind::Vlan, Some(Kind::Bridge)),
                AttachMode::Tc,
            ),
            ("a NIC", device(Kind::Nic, None), AttachMode::Driver),
            (
                "a NIC in a bond",
                device(Kind::Nic, Some(Kind::Bond)),
                AttachMode::Tc,
            ),
            (
                "a NIC as a bridge port",
                device(Kind::Nic, Some(Kind::Bridge)),
                AttachMode::Tc,
            ),
            (
                "another virtual device",
                device(Kind::Other, None),
                AttachMode::Tc,
            ),
        ];
        for (what, d, want) in cases {
            assert_eq!(hook(&d), want, "{what}: {d:?}");
        }
    }

    #[test]
    fn without_tcx_auto_is_xdp_everywhere() {
        for kind in [Kind::Veth, Kind::Bridge, Kind::Nic] {
            let d = Device {
                tcx: false,
                ..device(kind, None)
            };
            assert_eq!(hook(&d), AttachMode::Driver, "{d:?}");
        }
    }

    #[test]
    fn sysfs_names_the_lo_device_and_no_master() {
        // Every namespace has lo: no bus device, not enslaved.
        let lo = Device::of("lo");
        assert_eq!((lo.kind, lo.master), (Kind::Other, None));
    }
}
