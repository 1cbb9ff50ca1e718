//! `status` of a gateway in a fleet: the fleet's section of the human view.

use super::*;

fn fleet(stale: Option<&str>, mismatch: &[&str]) -> Value {
    json!({"config_path": "k.yaml", "tenants": [], "fleet": {
    "gateway_id": "b", "prefix": "/keystone/prod", "leader": "a",
    "revision": 12, "applied_revision": 11,
    "stale": stale.is_some(), "stale_reason": stale, "config_mismatch": mismatch,
    "members": [
        {"gateway_id": "a", "leader": true, "applied_revision": 12, "lag": 0},
        {"gateway_id": "b", "leader": false, "applied_revision": 11, "lag": 1},
    ]}})
}

#[test]
fn status_shows_the_leader_and_each_members_applied_revision_and_lag() {
    let (result, out, _) = run_against(vec![(200, fleet(None, &[]))], &["status"]);
    assert_eq!(result.unwrap(), exit::OK, "{out}");
    let section = out
        .split_once("\nfleet ")
        .map(|(_, s)| s)
        .unwrap_or_default();
    assert_eq!(
        section,
        "/keystone/prod (this gateway b, leader a, revision 12, applied 11)\n\
         \x20 GATEWAY  LEADER  APPLIED  LAG\n\
         \x20 a        yes     12       0\n\
         \x20 b        no      11       1\n",
        "{out}"
    );
}

#[test]
fn status_says_when_the_gateway_is_stale_or_configs_differ() {
    let (result, out, _) = run_against(
        vec![(
            200,
            fleet(
                Some("etcd (http://127.0.0.2:2379) has not answered for 4s"),
                &["web: a has 1f2e, b has 9c0d"],
            ),
        )],
        &["status"],
    );
    assert_eq!(result.unwrap(), exit::OK, "{out}");
    assert!(
        out.contains("  STALE: etcd (http://127.0.0.2:2379) has not answered for 4s\n"),
        "{out}"
    );
    assert!(
        out.contains("  CONFIG MISMATCH: web: a has 1f2e, b has 9c0d\n"),
        "{out}"
    );
}
