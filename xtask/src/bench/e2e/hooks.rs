//! Which hook Keystone's cases run at, and `--compare-hooks`: every hook as a case of
//! its own (a fresh lab each, in the same alternating order as the peers), so the
//! hooks are compared in one run under one load.

use super::{Bench, BridgeAttach, Case, CaseResult, report::thousands};
use crate::bench::table::{Table, human, ratio};

/// Where Keystone's program runs: the agent's `attach:` and, behind a bridge, the
/// devices it is attached to besides the client's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hook {
    pub attach: &'static str,
    pub on: BridgeAttach,
}

impl Hook {
    pub fn new(attach: &str, on: BridgeAttach) -> Hook {
        let attach = ATTACH
            .into_iter()
            .find(|a| *a == attach)
            .expect("clap checked --attach");
        Hook { attach, on }
    }

    fn describe(self, bridged: bool) -> String {
        match (bridged, self.on) {
            (false, _) => format!("at {}", self.attach),
            (true, BridgeAttach::Ports) => format!("at {} on the ports", self.attach),
            (true, BridgeAttach::Bridge) => format!("at {} on the bridge", self.attach),
        }
    }

    /// Native XDP cannot hand a dsr packet to a bridge (the agent refuses the config).
    fn serves(self, case: Case, bridged: bool) -> bool {
        !(bridged && self.attach == "xdp" && case == Case::Dsr)
    }
}

/// The agent's `attach:` values the bench takes.
pub(super) const ATTACH: [&str; 3] = ["xdp", "xdp-generic", "tc"];

/// One case as the bench runs it: a Keystone case with its hook, or a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub case: Case,
    pub hook: Hook,
    /// The row's name in every table (a Keystone case names its hook when hooks are compared).
    pub label: String,
}

/// The runs of one round: each case once, or with `compare`, each Keystone case once
/// per hook that serves it (tc, generic and native XDP on the ports, and behind a
/// bridge tc on the bridge device); `hook` is the one asked for otherwise. Cases a
/// hook cannot serve are left out, with a line saying why.
pub(super) fn runs(cases: &[Case], hook: Hook, compare: bool, bridged: bool) -> Vec<Run> {
    let hooks: Vec<Hook> = if compare {
        let mut h: Vec<Hook> = ["tc", "xdp-generic", "xdp"]
            .map(|a| Hook::new(a, BridgeAttach::Ports))
            .to_vec();
        if bridged {
            h.push(Hook::new("tc", BridgeAttach::Bridge));
        }
        h
    } else {
        vec![hook]
    };
    let mut out = Vec::new();
    for &case in cases {
        if case.keystone_mode().is_none() {
            let label = case.label().to_owned();
            out.push(Run { case, hook, label });
            continue;
        }
        for &h in &hooks {
            if !h.serves(case, bridged) {
                println!(
                    "bench e2e: {} {} is left out: behind a bridge native XDP cannot deliver a \
                     dsr packet (the agent refuses the config; use xdp-generic or tc)",
                    case.label(),
                    h.describe(bridged)
                );
                continue;
            }
            let label = if compare {
                format!("{} {}", case.label(), h.describe(bridged))
            } else {
                case.label().to_owned()
            };
            out.push(Run {
                case,
                hook: h,
                label,
            });
        }
    }
    out
}

impl Bench {
    /// With `--compare-hooks`: each Keystone hook's figures against the peers of the
    /// same run (new connections and UDP against nftables, the rest against direct).
    pub(super) fn report_hooks(&self, results: &[CaseResult]) {
        let peer = |c: Case| results.iter().find(|r| r.case == c);
        let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "n/a".to_owned(),
        };
        let conn = |r: Option<&CaseResult>| r.map(|r| r.close.0.requests_per_sec);
        let p99 = |r: Option<&CaseResult>| r.map(|r| r.close.0.p99.as_secs_f64());
        let keepalive = |r: Option<&CaseResult>| r.map(|r| r.keepalive.0.requests_per_sec);
        let udp_ns =
            |r: Option<&CaseResult>| r.and_then(|r| r.pps.as_ref().and_then(|p| p.0.gateway_ns));
        let (nft, direct) = (peer(Case::Nftables), peer(Case::Direct));
        println!("\n## Hooks compared (the same run; ratios to the peers above)");
        let mut t = Table::new(&[
            "Keystone case",
            "new conn/s",
            "÷ nftables",
            "÷ direct",
            "p99 (new conn)",
            "p99 ÷ direct",
            "keep-alive req/s",
            "÷ direct",
            "UDP gateway ns/packet",
            "÷ nftables",
            "errors",
            &format!("{} share", self.pool[0].name),
        ]);
        for r in results.iter().filter(|r| r.case.keystone_mode().is_some()) {
            let k = Some(r);
            t.row(&[
                r.label.clone(),
                thousands(r.close.0.requests_per_sec),
                over(conn(k), conn(nft)),
                over(conn(k), conn(direct)),
                human(r.close.0.p99),
                over(p99(k), p99(direct)),
                thousands(r.keepalive.0.requests_per_sec),
                over(keepalive(k), keepalive(direct)),
                udp_ns(k).map_or_else(|| "n/a".to_owned(), |ns| format!("{ns:.0}")),
                over(udp_ns(k), udp_ns(nft)),
                (r.close.0.errors + r.keepalive.0.errors).to_string(),
                format!("{:.1} %", r.close.1.first_share()),
            ]);
        }
        t.print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(runs: &[Run]) -> Vec<&str> {
        runs.iter().map(|r| r.label.as_str()).collect()
    }

    #[test]
    fn comparing_hooks_behind_a_bridge_runs_each_keystone_case_per_hook() {
        let asked = Hook::new("xdp", BridgeAttach::Ports);
        let r = runs(&[Case::Direct, Case::Nat, Case::Dsr], asked, true, true);
        assert_eq!(
            labels(&r),
            [
                "direct (gateway routes, no balancer)",
                "Keystone nat at tc on the ports",
                "Keystone nat at xdp-generic on the ports",
                "Keystone nat at xdp on the ports",
                "Keystone nat at tc on the bridge",
                "Keystone dsr at tc on the ports",
                "Keystone dsr at xdp-generic on the ports",
                "Keystone dsr at tc on the bridge",
            ]
        );
        assert_eq!(r[4].hook, Hook::new("tc", BridgeAttach::Bridge));
    }

    #[test]
    fn without_comparing_each_case_runs_once_at_the_hook_asked() {
        let asked = Hook::new("xdp", BridgeAttach::Ports);
        let r = runs(&[Case::Nat, Case::Dsr], asked, false, true);
        assert_eq!(labels(&r), ["Keystone nat"]);
        let r = runs(&[Case::Nat, Case::Dsr], asked, false, false);
        assert_eq!(labels(&r), ["Keystone nat", "Keystone dsr"]);
        assert!(r.iter().all(|r| r.hook == asked));
    }
}
