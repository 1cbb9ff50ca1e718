//! Which VIP addresses to announce, and why (pure: inputs in, decisions out).

use std::{collections::BTreeSet, net::IpAddr};

use keystone_api::AnnounceReason;

/// A backend's health as announcing sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Its check says up, or it has no check.
    Up,
    Down,
    /// Its check has not finished yet.
    Unknown,
}

/// What the data plane holds for a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// No table written (yet).
    Missing,
    /// A table that sends new flows nowhere.
    Empty,
    Live,
}

/// One tenant's part in the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantInput {
    pub address: IpAddr,
    pub table: Table,
    pub backends: Vec<Health>,
}

/// One decision per address, in address order: announced exactly when the reason
/// [`AnnounceReason::announces`]. Only addresses in `listed` count when it is given;
/// `withdraw_all` (a drain, a stop) withdraws everything with that reason. An address
/// in `kept` (what a previous agent left announced) whose health is not known yet
/// stays announced while its table is live. An address several tenants share is
/// announced while any of them is; otherwise the first tenant's reason is given.
pub fn decide(
    tenants: &[TenantInput],
    listed: Option<&[IpAddr]>,
    withdraw_all: Option<AnnounceReason>,
    kept: &BTreeSet<IpAddr>,
) -> Vec<(IpAddr, AnnounceReason)> {
    let mut decisions: Vec<(IpAddr, AnnounceReason)> = Vec::new();
    for t in tenants {
        if listed.is_some_and(|l| !l.contains(&t.address)) {
            continue;
        }
        let reason = withdraw_all.unwrap_or_else(|| tenant_reason(t, kept));
        match decisions.iter_mut().find(|(a, _)| *a == t.address) {
            Some((_, r)) if reason.announces() && *r != AnnounceReason::Ready => *r = reason,
            Some(_) => {}
            None => decisions.push((t.address, reason)),
        }
    }
    decisions.sort_by_key(|(a, _)| *a);
    decisions
}

fn tenant_reason(t: &TenantInput, kept: &BTreeSet<IpAddr>) -> AnnounceReason {
    if !t.backends.contains(&Health::Up) {
        return if t.backends.contains(&Health::Unknown) {
            if t.table == Table::Live && kept.contains(&t.address) {
                AnnounceReason::KeptUntilHealthKnown
            } else {
                AnnounceReason::HealthUnknown
            }
        } else {
            AnnounceReason::AllBackendsDown
        };
    }
    match t.table {
        Table::Missing => AnnounceReason::NotProgrammed,
        Table::Empty => AnnounceReason::EmptyTable,
        Table::Live => AnnounceReason::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AnnounceReason::*;
    use Health::{Down, Unknown, Up};

    fn t(address: &str, table: Table, backends: &[Health]) -> TenantInput {
        TenantInput {
            address: address.parse().expect("address"),
            table,
            backends: backends.to_vec(),
        }
    }

    fn reasons(d: Vec<(IpAddr, AnnounceReason)>) -> Vec<(String, AnnounceReason)> {
        d.into_iter().map(|(a, r)| (a.to_string(), r)).collect()
    }

    #[test]
    fn one_tenant_each_reason() {
        let cases = [
            (Table::Live, vec![Up, Down], Ready),
            (Table::Live, vec![Unknown, Down], HealthUnknown),
            (Table::Live, vec![Down, Down], AllBackendsDown),
            (Table::Live, vec![], AllBackendsDown),
            (Table::Missing, vec![Up], NotProgrammed),
            (Table::Empty, vec![Up], EmptyTable),
            (Table::Missing, vec![Unknown], HealthUnknown),
        ];
        for (table, backends, want) in cases {
            let input = [t("198.18.1.10", table, &backends)];
            assert_eq!(
                reasons(decide(&input, None, None, &BTreeSet::new())),
                [("198.18.1.10".to_string(), want)],
                "{table:?} {backends:?}"
            );
        }
    }

    #[test]
    fn shared_address_is_announced_while_any_tenant_is_ready() {
        let input = [
            t("198.18.1.10", Table::Live, &[Down]),
            t("198.18.1.10", Table::Live, &[Up]),
            t("2001:2::10", Table::Live, &[Unknown]),
            t("2001:2::10", Table::Missing, &[Down]),
        ];
        assert_eq!(
            reasons(decide(&input, None, None, &BTreeSet::new())),
            [
                ("198.18.1.10".to_string(), Ready),
                ("2001:2::10".to_string(), HealthUnknown)
            ]
        );
    }

    #[test]
    fn listed_addresses_only_and_withdraw_all() {
        let input = [
            t("198.18.1.11", Table::Live, &[Up]),
            t("198.18.1.10", Table::Live, &[Up]),
        ];
        let listed = ["198.18.1.10".parse().expect("address")];
        assert_eq!(
            reasons(decide(&input, Some(&listed), None, &BTreeSet::new())),
            [("198.18.1.10".to_string(), Ready)]
        );
        assert_eq!(
            reasons(decide(&input, None, Some(Draining), &BTreeSet::new())),
            [
                ("198.18.1.10".to_string(), Draining),
                ("198.18.1.11".to_string(), Draining)
            ],
            "sorted by address, every one withdrawn"
        );
    }

    #[test]
    fn a_kept_address_stays_announced_only_while_its_health_is_unknown_and_its_table_live() {
        let kept: BTreeSet<IpAddr> = ["198.18.1.10".parse().expect("address")].into();
        let cases = [
            (Table::Live, vec![Unknown], KeptUntilHealthKnown),
            (Table::Missing, vec![Unknown], HealthUnknown),
            (Table::Live, vec![Down], AllBackendsDown),
            (Table::Live, vec![Up], Ready),
        ];
        for (table, backends, want) in cases {
            let input = [
                t("198.18.1.10", table, &backends),
                t("198.18.1.11", table, &backends),
            ];
            let d = reasons(decide(&input, None, None, &kept));
            assert_eq!(
                d[0],
                ("198.18.1.10".to_string(), want),
                "{table:?} {backends:?}"
            );
            assert_ne!(d[1].1, KeptUntilHealthKnown, "198.18.1.11 was not kept");
        }
        let input = [t("198.18.1.10", Table::Live, &[Unknown])];
        assert_eq!(
            reasons(decide(&input, None, Some(Draining), &kept)),
            [("198.18.1.10".to_string(), Draining)],
            "a drain withdraws a kept address too"
        );
    }
}
