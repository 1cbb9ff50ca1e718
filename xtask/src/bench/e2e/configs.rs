//! The configs `bench e2e` writes for the peers and the lab's helpers: every balancer's
//! from the same backend list ([`Member`]), so all of them get the same backends and weights.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

/// One backend as every balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: Ipv4Addr,
    pub weight: u32,
}

/// The balanced services: one VIP, the same port on the VIP and on the backends (DSR
/// cannot translate ports, so every case keeps them equal).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// HTTP (nginx on the backends), balanced by weight.
    pub http: u16,
    /// iperf3: one TCP stream, so always to the first backend (its control and data
    /// connections must meet the same iperf3 server).
    pub iperf: u16,
    /// UDP for the packet generator, balanced by weight; the backends drop it on arrival.
    pub udp: u16,
}

/// Weighted ranges over `numgen random mod <sum>`: each member with weight > 0 takes
/// `weight` consecutive values.
fn numgen_map(pool: &[Member]) -> Result<(u32, String)> {
    let total: u32 = pool.iter().map(|m| m.weight).sum();
    if total == 0 {
        bail!("every backend has weight 0: nothing to balance to");
    }
    let mut start = 0;
    let mut entries = Vec::new();
    for m in pool.iter().filter(|m| m.weight > 0) {
        let end = start + m.weight - 1;
        if start == end {
            entries.push(format!("{start} : {}", m.addr));
        } else {
            entries.push(format!("{start}-{end} : {}", m.addr));
        }
        start = end + 1;
    }
    Ok((total, entries.join(", ")))
}

/// The nftables table a Linux user would write instead of a load balancer: DNAT of
/// new connections to a backend picked by weighted `numgen random` (conntrack keeps
/// each flow on its backend and reverse-translates the replies).
pub fn nft_ruleset(table: &str, vip: Ipv4Addr, ports: Ports, pool: &[Member]) -> Result<String> {
    let (modulus, map) = numgen_map(pool)?;
    let first = pool.first().map(|m| m.addr).unwrap_or(vip);
    Ok(format!(
        "table ip {table} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} tcp dport {http} dnat to numgen random mod {modulus} map {{ {map} }}\n\
         \t\tip daddr {vip} udp dport {udp} dnat to numgen random mod {modulus} map {{ {map} }}\n\
         \t\tip daddr {vip} tcp dport {iperf} dnat to {first}\n\
         \t}}\n\
         }}\n",
        http = ports.http,
        udp = ports.udp,
        iperf = ports.iperf,
    ))
}

/// The largest server weight HAProxy accepts.
pub const HAPROXY_MAX_WEIGHT: u32 = 256;

/// HAProxy in TCP mode with the same weights (`balance roundrobin` honours them), the
/// threads it picks by itself (one per CPU), and no logging.
pub fn haproxy_config(vip: Ipv4Addr, ports: Ports, pool: &[Member]) -> Result<String> {
    if pool.iter().all(|m| m.weight == 0) {
        bail!("every backend has weight 0: nothing to balance to");
    }
    if let Some(m) = pool.iter().find(|m| m.weight > HAPROXY_MAX_WEIGHT) {
        bail!(
            "weight {} of {} is above HAProxy's maximum of {HAPROXY_MAX_WEIGHT}: give smaller weights with the same ratio",
            m.weight,
            m.name
        );
    }
    let mut servers = String::new();
    for m in pool {
        servers.push_str(&format!(
            "    server {name} {addr}:{port} weight {w}\n",
            name = m.name,
            addr = m.addr,
            port = ports.http,
            w = m.weight
        ));
    }
    let first = pool.first().map(|m| (m.name.as_str(), m.addr));
    let (first_name, first_addr) = first.unwrap_or(("none", vip));
    Ok(format!(
        "global\n\
         \x20   maxconn 8000\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         frontend http\n\
         \x20   bind {vip}:{http}\n\
         \x20   default_backend http\n\
         backend http\n\
         \x20   balance roundrobin\n\
         {servers}\
         frontend iperf\n\
         \x20   bind {vip}:{iperf}\n\
         \x20   default_backend iperf\n\
         backend iperf\n\
         \x20   server {first_name} {first_addr}:{iperf}\n",
        http = ports.http,
        iperf = ports.iperf,
    ))
}

/// nginx answering every request on `port` with 200 and the backend's name, one
/// worker per CPU (`reuseport` spreads connections over them, so one backend alone
/// can use every CPU), no access log, every file it writes under `dir`.
pub fn nginx_config(name: &str, dir: &str, port: u16) -> String {
    format!(
        "daemon off;\n\
         worker_processes auto;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   server {{\n\
         \x20       listen {port} reuseport backlog=4096;\n\
         \x20       location / {{ return 200 \"{name}\\n\"; }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// A netdev-ingress table on a backend's link that drops the generator's UDP as it
/// arrives (after the interface has counted it), so the backends spend next to
/// nothing on it and send no ICMP back through the gateway.
pub fn udp_sink_ruleset(table: &str, dev: &str, port: u16) -> String {
    format!(
        "table netdev {table} {{\n\
         \tchain ingress {{\n\
         \t\ttype filter hook ingress device \"{dev}\" priority 0; policy accept;\n\
         \t\tudp dport {port} drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Frame size without FCS: the Ethernet minimum, so the figure is packets, not bytes.
pub const FRAME_BYTES: u32 = 60;

/// trafgen's packet: 60-byte UDP frames from `src` to `dst:port`, the source port
/// cycling over `flows` values (so balancers see that many flows), checksums
/// computed by trafgen.
pub fn trafgen_config(
    dst_mac: &str,
    src_mac: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    flows: u16,
) -> String {
    const FIRST_PORT: u16 = 10_000;
    let payload = FRAME_BYTES - 14 - 20 - 8;
    format!(
        "{{\n\
         \x20 eth(da={dst_mac}, sa={src_mac}),\n\
         \x20 ipv4(sa={src}, da={dst}, ttl=64, df),\n\
         \x20 udp(sp=dinc({FIRST_PORT}, {last}), dp={port}),\n\
         \x20 fill(0x42, {payload})\n\
         }}\n",
        last = FIRST_PORT + flows - 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .zip(1u8..)
            .map(|(w, i)| Member {
                name: format!("b{i}"),
                addr: Ipv4Addr::new(198, 18, 10 + i, 2),
                weight: *w,
            })
            .collect()
    }

    const PORTS: Ports = Ports {
        http: 8080,
        iperf: 5201,
        udp: 8080,
    };
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    #[test]
    fn numgen_ranges_follow_the_weights_and_skip_zero() {
        assert_eq!(
            numgen_map(&pool(&[90, 10])).unwrap(),
            (100, "0-89 : 198.18.11.2, 90-99 : 198.18.12.2".into())
        );
        assert_eq!(
            numgen_map(&pool(&[1, 0, 2])).unwrap(),
            (3, "0 : 198.18.11.2, 1-2 : 198.18.13.2".into())
        );
        assert!(numgen_map(&pool(&[0, 0])).is_err());
    }

    #[test]
    fn nft_balances_http_and_udp_and_pins_iperf() {
        let r = nft_ruleset("t", VIP, PORTS, &pool(&[50, 50])).unwrap();
        let map = "numgen random mod 100 map { 0-49 : 198.18.11.2, 50-99 : 198.18.12.2 }";
        assert!(r.contains(&format!(
            "ip daddr 198.18.0.10 tcp dport 8080 dnat to {map}"
        )));
        assert!(r.contains(&format!(
            "ip daddr 198.18.0.10 udp dport 8080 dnat to {map}"
        )));
        assert!(r.contains("tcp dport 5201 dnat to 198.18.11.2\n"));
    }

    #[test]
    fn haproxy_gets_the_same_weights() {
        let c = haproxy_config(VIP, PORTS, &pool(&[90, 10])).unwrap();
        assert!(c.contains("bind 198.18.0.10:8080"));
        assert!(c.contains("server b1 198.18.11.2:8080 weight 90\n"));
        assert!(c.contains("server b2 198.18.12.2:8080 weight 10\n"));
        assert!(c.contains("server b1 198.18.11.2:5201\n"));
        let err = haproxy_config(VIP, PORTS, &pool(&[300, 1])).unwrap_err();
        assert!(err.to_string().contains("weight 300 of b1"), "{err}");
    }

    #[test]
    fn trafgen_frames_are_60_bytes_over_the_flows() {
        let c = trafgen_config(
            "aa:bb:cc:dd:ee:ff",
            "11:22:33:44:55:66",
            Ipv4Addr::new(198, 18, 1, 2),
            VIP,
            8080,
            1024,
        );
        assert!(c.contains("udp(sp=dinc(10000, 11023), dp=8080)"));
        assert!(c.contains("fill(0x42, 18)"));
    }
}
