//! The lab's address plan: the VIPs, the client's link, and each backend's link.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The IPv4 VIP.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10);
/// The gateway's and client's addresses on their link.
pub const GW_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const GW_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);

/// One backend namespace and its link to the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    pub ns: String,
    /// 1-based: backend i uses 198.18.(10+i).0/24.
    pub index: u32,
    /// The backend's own addresses.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The gateway's addresses on this backend's link.
    pub gw_ipv4: Ipv4Addr,
    pub gw_ipv6: Ipv6Addr,
    /// The gateway's interface towards this backend (a bridge port when bridged).
    pub gw_if: String,
}

impl Backend {
    pub(crate) fn new(prefix: &str, name: &str, index: u32, bridged: bool) -> Self {
        let octet = 10 + index as u8;
        let hextet = u16::from_str_radix(&(10 + index).to_string(), 16).expect("index < 90");
        let (ipv4, ipv6, gw_ipv4, gw_ipv6) = if bridged {
            // One subnet behind the bridge: backend i is host 10+i of 198.18.10.0/24.
            (
                Ipv4Addr::new(198, 18, 10, octet),
                Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, hextet),
                Ipv4Addr::new(198, 18, 10, 1),
                Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 1),
            )
        } else {
            (
                Ipv4Addr::new(198, 18, octet, 2),
                Ipv6Addr::new(0x2001, 2, 0, hextet, 0, 0, 0, 2),
                Ipv4Addr::new(198, 18, octet, 1),
                Ipv6Addr::new(0x2001, 2, 0, hextet, 0, 0, 0, 1),
            )
        };
        Self {
            name: name.to_owned(),
            ns: format!("{prefix}-{name}"),
            index,
            ipv4,
            ipv6,
            gw_ipv4,
            gw_ipv6,
            gw_if: format!("eth-{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_follow_the_plan() {
        let b = Backend::new("ks1-0", "blue", 1, false);
        assert_eq!(b.ns, "ks1-0-blue");
        assert_eq!(b.ipv4, Ipv4Addr::new(198, 18, 11, 2));
        assert_eq!(b.gw_ipv4, Ipv4Addr::new(198, 18, 11, 1));
        assert_eq!(b.ipv6.to_string(), "2001:2:0:11::2");
        assert_eq!(b.gw_ipv6.to_string(), "2001:2:0:11::1");
        assert_eq!(b.gw_if, "eth-blue");
        assert_eq!(VIP6.to_string(), "2001:2::10");
        let b = Backend::new("ks1-0", "green", 2, true);
        assert_eq!(b.ipv4, Ipv4Addr::new(198, 18, 10, 12));
        assert_eq!(b.gw_ipv4, Ipv4Addr::new(198, 18, 10, 1));
        assert_eq!(b.ipv6.to_string(), "2001:2:0:10::12");
        assert_eq!(b.gw_if, "eth-green");
    }
}
