//! The kernel's TCP and backlog counters around a measurement: where a slow or
//! late connection went (a SYN sent again, a full accept queue, a full per-CPU
//! backlog), so a p99 can be explained by counts, not guessed.

use std::collections::HashMap;

use anyhow::{Context, Result};
use keystone_lab::cmd::{self, in_ns};

/// The counters one namespace's `/proc/net/snmp` and `/proc/net/netstat` give, or
/// their difference over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// SYNs sent again (`TcpExt: TCPSynRetrans`): a connection that waited ≥ 1 s.
    pub syn_retrans: u64,
    /// Segments sent again (`Tcp: RetransSegs`), SYNs included.
    pub retrans_segs: u64,
    /// SYNs or handshakes a listener dropped (`TcpExt: ListenDrops`).
    pub listen_drops: u64,
}

impl TcpCounters {
    /// The counters of namespace `ns`, read by a process inside it.
    pub fn of(ns: &str) -> Result<Self> {
        let text = cmd::run(in_ns(ns, "cat").args(["/proc/net/snmp", "/proc/net/netstat"]))?;
        Self::parse(&text).with_context(|| format!("TCP counters of {ns}"))
    }

    fn parse(text: &str) -> Result<Self> {
        let values = named_values(text);
        let get = |name: &str| {
            values
                .get(name)
                .copied()
                .with_context(|| format!("no counter {name}"))
        };
        Ok(TcpCounters {
            syn_retrans: get("TcpExt:TCPSynRetrans")?,
            retrans_segs: get("Tcp:RetransSegs")?,
            listen_drops: get("TcpExt:ListenDrops")?,
        })
    }

    pub fn since(&self, earlier: &TcpCounters) -> TcpCounters {
        TcpCounters {
            syn_retrans: self.syn_retrans.saturating_sub(earlier.syn_retrans),
            retrans_segs: self.retrans_segs.saturating_sub(earlier.retrans_segs),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
        }
    }

    pub fn plus(&self, other: &TcpCounters) -> TcpCounters {
        TcpCounters {
            syn_retrans: self.syn_retrans + other.syn_retrans,
            retrans_segs: self.retrans_segs + other.retrans_segs,
            listen_drops: self.listen_drops + other.listen_drops,
        }
    }
}

/// `Group:Name` → value from the header/value line pairs of /proc/net/snmp and
/// /proc/net/netstat (`Tcp: RtoAlgorithm RtoMin …` then `Tcp: 1 200 …`).
fn named_values(text: &str) -> HashMap<String, u64> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = HashMap::new();
    for pair in lines.windows(2) {
        let (Some((group, names)), Some((group2, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        if group != group2 || names.split_whitespace().next().is_none_or(is_number) {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<i64>() {
                out.insert(format!("{group}:{name}"), v.max(0) as u64);
            }
        }
    }
    out
}

fn is_number(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

/// Packets dropped because a CPU's input backlog was full (`netdev_max_backlog`),
/// summed over CPUs: the second column of /proc/net/softnet_stat (hex; one line
/// per CPU, for the whole machine, not a namespace).
pub fn backlog_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")?;
    parse_backlog_drops(&text)
}

fn parse_backlog_drops(text: &str) -> Result<u64> {
    text.lines()
        .map(|l| {
            let column = l
                .split_whitespace()
                .nth(1)
                .context("short softnet_stat line")?;
            u64::from_str_radix(column, 16).context("softnet_stat column is not hex")
        })
        .sum()
}

/// Microseconds during which some task of the machine waited for a CPU (the `some`
/// line's `total` in /proc/pressure/cpu; 0 where the kernel has no PSI): over a
/// window, how much of it a runnable wrk, nginx or softirq thread could not run.
pub fn cpu_wait_us() -> u64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| parse_cpu_wait_us(&t))
        .unwrap_or(0)
}

fn parse_cpu_wait_us(text: &str) -> Option<u64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_and_netstat_pairs_are_read_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin ActiveOpens RetransSegs\nTcp: 1 200 5000 42\n\
                    TcpExt: SyncookiesSent ListenDrops TCPSynRetrans\nTcpExt: 0 7 3\n";
        let c = TcpCounters::parse(text).unwrap();
        assert_eq!(
            c,
            TcpCounters {
                syn_retrans: 3,
                retrans_segs: 42,
                listen_drops: 7
            }
        );
        let later = TcpCounters {
            syn_retrans: 5,
            ..c
        };
        assert_eq!(later.since(&c).syn_retrans, 2);
        assert!(
            TcpCounters::parse("Tcp: RetransSegs\nTcp: 1\n")
                .unwrap_err()
                .to_string()
                .contains("TCPSynRetrans")
        );
    }

    #[test]
    fn cpu_pressure_total_is_read_from_the_some_line() {
        let text = "some avg10=84.82 avg60=96.17 avg300=98.56 total=29577125132\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=12\n";
        assert_eq!(parse_cpu_wait_us(text), Some(29_577_125_132));
        assert_eq!(parse_cpu_wait_us(""), None);
    }

    #[test]
    fn backlog_drops_sum_the_second_column() {
        let text = "0000a000 00000002 00000000 00000000\n0000b000 0000000f 00000001 00000000\n";
        assert_eq!(parse_backlog_drops(text).unwrap(), 17);
    }
}
