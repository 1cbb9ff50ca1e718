//! A service's backend address, from `address:` or `url:`, in the VIP's family.

use std::net::{IpAddr, SocketAddr};

use super::{Resolver, Service, service_url};

/// Resolves a service's `address:port` or `url`, preferring an address of the VIP's
/// family. Errors name the field (`address` or `url`) and the reason.
pub(super) fn resolve_service(
    service: &Service,
    vip_ip: Option<IpAddr>,
    resolve: &Resolver,
) -> Result<SocketAddr, (&'static str, String)> {
    let (field, host, port) = match (&service.address, &service.url) {
        (Some(_), Some(_)) => return Err(("url", "set either url or address, not both".into())),
        (None, None) => {
            return Err((
                "address",
                "required: address: host:port or url: http://host:port".into(),
            ));
        }
        (Some(address), None) => {
            if let Ok(addr) = address.parse::<SocketAddr>() {
                return check_family("address", addr, vip_ip);
            }
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(("address", format!("'{address}' is not host:port")));
            };
            let port = port.parse::<u16>().map_err(|_| {
                (
                    "address",
                    format!("'{port}' in '{address}' is not a port number"),
                )
            })?;
            ("address", host.trim_matches(['[', ']']).to_owned(), port)
        }
        (None, Some(text)) => {
            let (host, port) = service_url::host_port(text).map_err(|reason| ("url", reason))?;
            ("url", host, port)
        }
    };
    if port == 0 {
        return Err((field, "port must not be 0".into()));
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolve(&host, port)
            .map_err(|e| (field, format!("cannot resolve host '{host}': {e}")))?,
    };
    let preferred = addrs
        .iter()
        .find(|a| vip_ip.is_none_or(|v| v.is_ipv4() == a.is_ipv4()))
        .or(addrs.first())
        .copied()
        .ok_or((field, format!("host '{host}' resolved to no address")))?;
    check_family(field, preferred, vip_ip)
}

fn check_family(
    field: &'static str,
    addr: SocketAddr,
    vip_ip: Option<IpAddr>,
) -> Result<SocketAddr, (&'static str, String)> {
    if addr.port() == 0 {
        return Err((field, "port must not be 0".into()));
    }
    match vip_ip {
        Some(vip) if vip.is_ipv4() != addr.is_ipv4() => Err((
            field,
            format!(
                "backend {addr} and VIP {vip} are different address families; Keystone does not translate between IPv4 and IPv6"
            ),
        )),
        _ => Ok(addr),
    }
}
