//! The tables and ratios `bench e2e` prints from its cases' results.

use std::thread;

use super::{Bench, Case, CaseResult, FLOWS, configs};
use crate::bench::table::{Table, human, ratio};

impl Bench {
    pub(super) fn report(&self, results: &[CaseResult]) {
        let find = |c: Case| results.iter().find(|r| r.case == c);
        let (nat, dsr) = (find(Case::Nat), find(Case::Dsr));
        let cpus = thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_head = "CPU usr/sys/irq/idle %";
        // Keystone's figure over this row's, for both modes (n/a where not run).
        let ratios = |f: &dyn Fn(&CaseResult) -> Option<f64>, r: &CaseResult| -> [String; 2] {
            [nat, dsr].map(|k| match (k.and_then(f), f(r)) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "n/a".into(),
            })
        };

        println!(
            "\n## New TCP connections per second: wrk, `Connection: close`, {} connections, {} s",
            self.connections, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "conn/s",
            "errors",
            &format!("{} share", self.pool[0].name),
            cpu_head,
            "CPU µs/conn",
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let conn = |r: &CaseResult| Some(r.close.0.requests_per_sec);
        for r in results {
            let [n, d] = ratios(&conn, r);
            t.row(&[
                r.label.clone(),
                thousands(r.close.0.requests_per_sec),
                r.close.0.errors.to_string(),
                format!("{:.1} %", r.close.1.first_share()),
                r.close.1.cpu.to_string(),
                per_unit(r.close.1.cpu.busy_secs() * 1e6, r.close.0.requests as f64),
                n,
                d,
            ]);
        }
        t.print();

        println!("\n## Request latency, new connection per request (same run; lower is better)");
        let mut t = Table::new(&["case", "p50", "p99", "nat p99 ÷ case", "dsr p99 ÷ case"]);
        let p99 = |r: &CaseResult| Some(r.close.0.p99.as_secs_f64());
        for r in results {
            let [n, d] = ratios(&p99, r);
            t.row(&[
                r.label.clone(),
                human(r.close.0.p50),
                human(r.close.0.p99),
                n,
                d,
            ]);
        }
        t.print();

        println!(
            "\n## Where slow new connections went (same runs, sums over rounds: client and backends' TCP counters, the machine's backlog drops; CPU wait: share of the time some runnable task waited for a CPU, /proc/pressure/cpu)"
        );
        let mut t = Table::new(&[
            "case",
            "connections",
            "SYNs sent again",
            "per 10,000 conn",
            "segments sent again",
            "listen drops",
            "backlog drops",
            "CPU wait %",
        ]);
        for r in results {
            let (wrk, w) = &r.close;
            t.row(&[
                r.label.clone(),
                wrk.requests.to_string(),
                w.tcp.syn_retrans.to_string(),
                per_unit(w.tcp.syn_retrans as f64 * 1e4, wrk.requests as f64),
                w.tcp.retrans_segs.to_string(),
                w.tcp.listen_drops.to_string(),
                w.backlog_drops.to_string(),
                format!("{:.0} %", w.cpu_wait_share()),
            ]);
        }
        t.print();

        println!(
            "\n## Keep-alive requests: wrk, {} connections, {} s",
            self.connections, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "req/s",
            "p50",
            "p99",
            "errors",
            cpu_head,
            "nat ÷ case",
            "dsr ÷ case",
            "nat p99 ÷ case",
            "dsr p99 ÷ case",
        ]);
        let rps = |r: &CaseResult| Some(r.keepalive.0.requests_per_sec);
        let kp99 = |r: &CaseResult| Some(r.keepalive.0.p99.as_secs_f64());
        for r in results {
            let [n, d] = ratios(&rps, r);
            let [np, dp] = ratios(&kp99, r);
            t.row(&[
                r.label.clone(),
                thousands(r.keepalive.0.requests_per_sec),
                human(r.keepalive.0.p50),
                human(r.keepalive.0.p99),
                r.keepalive.0.errors.to_string(),
                r.keepalive.1.cpu.to_string(),
                n,
                d,
                np,
                dp,
            ]);
        }
        t.print();

        println!(
            "\n## Throughput: iperf3, one TCP stream to {}, {} s (first second omitted)",
            self.pool[0].name, self.secs
        );
        let mut t = Table::new(&[
            "case",
            "Gbit/s",
            "retransmits",
            cpu_head,
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let bps = |r: &CaseResult| Some(r.iperf.0.bits_per_second);
        for r in results {
            let [n, d] = ratios(&bps, r);
            t.row(&[
                r.label.clone(),
                format!("{:.2}", r.iperf.0.bits_per_second / 1e9),
                r.iperf.0.retransmits.to_string(),
                r.iperf.1.cpu.to_string(),
                n,
                d,
            ]);
        }
        t.print();

        println!(
            "\n## Packets per second forwarded: trafgen, one process, {}-byte UDP frames over {FLOWS} flows, counted at the backends' links, {} s",
            configs::FRAME_BYTES,
            self.secs
        );
        let mut t = Table::new(&[
            "case",
            "sent pps",
            "forwarded pps",
            "forwarded %",
            cpu_head,
            "CPU ns/packet",
            "gateway ns/packet",
            "nat ÷ case",
            "dsr ÷ case",
        ]);
        let fwd = |r: &CaseResult| r.pps.as_ref().map(|p| p.0.forwarded);
        for r in results {
            let [n, d] = ratios(&fwd, r);
            match &r.pps {
                Some((p, w)) => t.row(&[
                    r.label.clone(),
                    thousands(p.sent),
                    thousands(p.forwarded),
                    format!("{:.1} %", p.forwarded_share),
                    w.cpu.to_string(),
                    per_unit(w.cpu.busy_secs() * 1e9, w.backend_rx_total() as f64),
                    p.gateway_ns
                        .map_or_else(|| "n/a".to_owned(), |ns| format!("{ns:.0}")),
                    n,
                    d,
                ]),
                None => t.row(&[
                    r.label.clone(),
                    "n/a (no UDP)".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    "n/a".to_owned(),
                    n,
                    d,
                ]),
            }
        }
        t.print();

        println!(
            "\nCPU: user/system/irq+softirq/idle, percent of all {cpus} CPUs of the machine over the measurement (/proc/stat);\n\
             client, gateway and backends share them. CPU µs/conn and ns/packet: busy CPU time of the whole machine\n\
             (client, gateway and backends together; on a quiet machine) per connection or per packet forwarded.\n\
             gateway ns/packet: CPU time of the kernel thread that polls the gateway's client link (the gateway's\n\
             forwarding work, up to handing each packet to a backend's link) per packet forwarded.\n\
             `x ÷ case`: Keystone's figure over the row's."
        );
        println!("\n## Targets of issue #13 (measured here, not asserted)");
        type Figure = fn(&CaseResult) -> f64;
        let conn: Figure = |r| r.close.0.requests_per_sec;
        let p99: Figure = |r| r.close.0.p99.as_secs_f64();
        let keepalive: Figure = |r| r.keepalive.0.requests_per_sec;
        let gateway_ns: Figure = |r| {
            r.pps
                .as_ref()
                .and_then(|p| p.0.gateway_ns)
                .unwrap_or(f64::NAN)
        };
        // (Keystone case, what, its figure, peer, at least (true) or at most, target ratio)
        type Target<'a> = (
            Option<&'a CaseResult>,
            &'static str,
            Figure,
            Case,
            bool,
            f64,
        );
        let targets: [Target; 8] = [
            (nat, "new connections/s", conn, Case::Nftables, true, 1.25),
            (nat, "new connections/s", conn, Case::Direct, true, 0.95),
            (dsr, "new connections/s", conn, Case::Nftables, true, 1.3),
            (
                nat,
                "p99, new connection per request",
                p99,
                Case::Direct,
                false,
                1.2,
            ),
            (
                nat,
                "p99, new connection per request",
                p99,
                Case::Nftables,
                false,
                1.0,
            ),
            (
                nat,
                "keep-alive requests/s",
                keepalive,
                Case::Direct,
                true,
                0.95,
            ),
            (
                nat,
                "UDP flood gateway ns/packet",
                gateway_ns,
                Case::Nftables,
                false,
                0.8,
            ),
            (
                dsr,
                "UDP flood gateway ns/packet",
                gateway_ns,
                Case::Nftables,
                false,
                0.8,
            ),
        ];
        for (k, what, figure, peer, at_least, target) in targets {
            let (Some(k), Some(p)) = (k, find(peer)) else {
                continue;
            };
            let x = figure(k) / figure(p);
            let met = if at_least { x >= target } else { x <= target };
            println!(
                "{} ÷ {}, {what}: {x:.2}× (target {} {target:.2}×: {})",
                k.label,
                peer.label(),
                if at_least { "≥" } else { "≤" },
                if met { "met" } else { "missed" }
            );
        }
    }
}

/// `total / count` with one decimal, or n/a for no count.
fn per_unit(total: f64, count: f64) -> String {
    if count > 0.0 {
        format!("{:.1}", total / count)
    } else {
        "n/a".into()
    }
}

/// `12345.6` → `12,346`.
pub(super) fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12345.6), "12,346");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
