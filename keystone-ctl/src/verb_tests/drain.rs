//! `drain` and `undrain`: the requests, the wait, what they print and their exit codes.

use super::*;

/// `status.announce` (or a drain answer) in `state` with the VIP withdrawn or not.
fn announce(state: &str, announced: bool, reason: &str) -> Value {
    json!({"drain": state, "sessions": [],
           "vips": [{"address": "198.18.0.10", "announced": announced, "reason": reason}]})
}

fn vip_line(announced: &str, reason: &str) -> String {
    format!("{:<40} {announced:<10} {reason}\n", "198.18.0.10")
}

#[test]
fn drain_sends_its_timeout_and_waits_until_drained() {
    let (result, out, requests) = run_against(
        vec![
            (202, announce("draining", false, "draining")),
            (
                200,
                json!({"announce": announce("drained", false, "draining")}),
            ),
        ],
        &["drain", "--timeout", "45s"],
    );
    assert_eq!(result.unwrap(), exit::OK, "{out}");
    let lines: Vec<&str> = requests.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(lines, ["POST /admin/drain", "GET /status"]);
    assert_eq!(
        serde_json::from_str::<Value>(&requests[0].1).unwrap(),
        json!({"timeout_seconds": 45.0})
    );
    assert_eq!(
        out,
        format!("drain: drained\n{}", vip_line("withdrawn", "draining"))
    );
}

#[test]
fn drain_no_wait_returns_once_withdrawn() {
    let (result, out, requests) = run_against(
        vec![(202, announce("draining", false, "draining"))],
        &["drain", "--no-wait"],
    );
    assert_eq!(result.unwrap(), exit::OK, "{out}");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&requests[0].1).unwrap(),
        json!({}),
        "without --timeout the agent's bgp.drain_timeout applies"
    );
    assert_eq!(
        out,
        format!("drain: draining\n{}", vip_line("withdrawn", "draining"))
    );
}

#[test]
fn a_drain_that_times_out_exits_12_saying_how_to_undo_it() {
    let (result, _, _) = run_against(
        vec![
            (202, announce("draining", false, "draining")),
            (
                200,
                json!({"announce": announce("drain_timeout", false, "draining")}),
            ),
        ],
        &["drain", "--timeout", "1s"],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code, exit::TIMED_OUT);
    assert_eq!(
        e.message,
        "drain_timeout: new connections still arrived when the timeout ran out \
         (the routes stay withdrawn; `keystone-ctl undrain` announces them again)"
    );
}

#[test]
fn drain_refusals_exit_1_with_the_agents_reason() {
    let (result, _, _) = run_against(
        vec![(
            409,
            json!({"error": "this agent announces no VIPs: its config has no `bgp:` block"}),
        )],
        &["drain"],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code, exit::REFUSED);
    assert_eq!(
        e.message,
        "the agent answered 409: this agent announces no VIPs: its config has no `bgp:` block"
    );
    // The `bgp:` block reloaded away while drain waits.
    let (result, _, _) = run_against(
        vec![
            (202, announce("draining", false, "draining")),
            (200, json!({"tenants": []})),
        ],
        &["drain"],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code, exit::REFUSED);
    assert_eq!(
        e.message,
        "the agent stopped announcing (its `bgp:` block is gone)"
    );
    let (result, _, _) = run_against(
        vec![(401, json!({"error": "wrong bearer token"}))],
        &["undrain"],
    );
    assert_eq!(result.unwrap_err().code, exit::AUTH);
}

#[test]
fn undrain_prints_the_vips_announced_again() {
    let (result, out, requests) = run_against(
        vec![(202, announce("serving", true, "ready"))],
        &["undrain"],
    );
    assert_eq!(result.unwrap(), exit::OK, "{out}");
    assert_eq!(requests[0].0, "POST /admin/undrain");
    assert_eq!(
        out,
        format!("drain: serving\n{}", vip_line("announced", "ready"))
    );
}
