//! `wait` and `status --watch --until-done`: poll a deployment until it finishes,
//! printing a line whenever its progress changes, and exit with a code CI can act on.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use keystone_api::{DeployState, Deployment, Verdict};
use serde_json::{Value, json};

use crate::{
    client::{Client, Failure, fail, segment, typed},
    exit,
    output::Output,
    render,
};

/// The exit code a deployment in `state` ends `wait` with, or None while it runs.
pub fn exit_code_for_state(state: DeployState) -> Option<u8> {
    match state {
        DeployState::Completed => Some(exit::OK),
        DeployState::RolledBack | DeployState::Aborted | DeployState::Failed => {
            Some(exit::ROLLED_BACK)
        }
        DeployState::Paused | DeployState::AwaitingApproval => Some(exit::PAUSED),
        // progressing, or a state this ctl does not know yet: keep waiting.
        DeployState::Progressing | DeployState::Unknown => None,
    }
}

/// What a progress line reports; a new line is printed when any of it changes.
type ProgressKey = (DeployState, f64, Option<f64>, u64, Option<Verdict>, String);

fn progress_key(d: &Deployment) -> ProgressKey {
    (
        d.state,
        d.canary_percent,
        d.analysis.success_rate,
        d.analysis.samples,
        d.analysis.verdict,
        render::last_reason(d),
    )
}

fn progress_line(d: &Deployment, elapsed: Duration) -> String {
    format!(
        "[+{:>5.1}s] {:<17} {} {:>6}  success {}  {}",
        elapsed.as_secs_f64(),
        d.state.name(),
        render::traffic_word(d.strategy),
        render::percent(d.canary_percent),
        render::analysis(&d.analysis),
        render::last_reason(d),
    )
}

fn progress_json(d: &Deployment, elapsed: Duration) -> Value {
    json!({
        "elapsed_seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "deployment_id": d.id,
        "state": d.state,
        "canary_percent": d.canary_percent,
        "success_rate": d.analysis.success_rate,
        "samples": d.analysis.samples,
        "verdict": d.analysis.verdict,
        "reason": render::last_reason(d),
    })
}

pub struct WaitOptions {
    pub timeout: Duration,
    pub interval: Duration,
    pub output: Output,
}

/// Polls `GET /deployments/{id}` until it ends, pauses, or `timeout` passes.
/// `before_poll` runs first on every round (status --watch prints the status there).
/// Returns the exit code: 0 completed, 10 rolled back/aborted/failed, 11 paused or
/// awaiting approval, 12 still progressing at the timeout. An unreachable agent is
/// retried until the timeout (it may be restarting), then exits 3; so is one whose
/// answers are marked stale (a fleet member cut off from its fleet).
pub fn wait(
    client: &Client,
    id: &str,
    options: &WaitOptions,
    out: &mut dyn Write,
    before_poll: impl FnMut(&mut dyn Write) -> Result<(), Failure>,
) -> Result<u8, Failure> {
    wait_for(client, id, options, out, before_poll).map(|(code, _)| code)
}

/// [`wait`], returning the deployment as last seen too.
pub fn wait_for(
    client: &Client,
    id: &str,
    options: &WaitOptions,
    out: &mut dyn Write,
    mut before_poll: impl FnMut(&mut dyn Write) -> Result<(), Failure>,
) -> Result<(u8, Deployment), Failure> {
    let started = Instant::now();
    let path = format!("/deployments/{}", segment(id));
    let mut last_key: Option<ProgressKey> = None;
    // The answer as sent (`-o json` prints it) and as read.
    let mut last_seen: Option<(Value, Deployment)> = None;
    let mut outage: Option<Failure> = None;
    // A stale gateway's answer is never the end of a wait: its state may be behind.
    let mut stale: Option<String> = None;
    loop {
        before_poll(out)?;
        match client.get(&path) {
            Ok(raw) => {
                let d: Deployment = typed(&raw)?;
                if outage.take().is_some() && options.output.is_human() {
                    eprintln!("keystone-ctl: the agent answers again");
                }
                let key = progress_key(&d);
                if last_key.as_ref() != Some(&key) {
                    let json = progress_json(&d, started.elapsed());
                    let text = options
                        .output
                        .item(&json)
                        .unwrap_or_else(|| progress_line(&d, started.elapsed()) + "\n");
                    out.write_all(text.as_bytes()).ok();
                    last_key = Some(key);
                }
                stale = client.last_stale();
                if stale.is_none()
                    && let Some(code) = exit_code_for_state(d.state)
                {
                    finish(out, options.output, (&raw, &d), code, None);
                    return Ok((code, d));
                }
                last_seen = Some((raw, d));
            }
            Err(f) if f.code == exit::UNREACHABLE => {
                if outage.is_none() && options.output.is_human() {
                    eprintln!("keystone-ctl: {}; retrying until the timeout", f.message);
                }
                outage = Some(f);
            }
            Err(f) => return Err(f),
        }
        let elapsed = started.elapsed();
        if elapsed >= options.timeout {
            if let Some(f) = outage {
                return Err(f);
            }
            if let Some(reason) = stale {
                return Err(fail(
                    exit::UNREACHABLE,
                    format!(
                        "the agent's answers were stale until the timeout ({reason}); \
                         ask another gateway of the fleet"
                    ),
                ));
            }
            let (raw, d) = last_seen.unwrap_or_default();
            finish(
                out,
                options.output,
                (&raw, &d),
                exit::TIMED_OUT,
                Some(options.timeout),
            );
            return Ok((exit::TIMED_OUT, d));
        }
        std::thread::sleep(options.interval.min(options.timeout - elapsed));
    }
}

fn finish(
    out: &mut dyn Write,
    output: Output,
    (raw, d): (&Value, &Deployment),
    code: u8,
    timeout: Option<Duration>,
) {
    if let Some(text) = output.item(raw) {
        out.write_all(text.as_bytes()).ok();
        return;
    }
    let (id, state) = (&d.id, d.state);
    let what = match (code, timeout) {
        (_, Some(t)) => format!(
            "deployment {id} is still {state} after {}",
            humantime::format_duration(t)
        ),
        (exit::OK, _) => format!("deployment {id} completed"),
        (exit::PAUSED, _) => format!(
            "deployment {id} is {state}: promote, resume or abort it (keystone-ctl canary promote {id})"
        ),
        _ => format!("deployment {id} ended {state}"),
    };
    writeln!(
        out,
        "{what}: {} {} ({}) — exit {code}",
        render::traffic_word(d.strategy),
        render::percent(d.canary_percent),
        render::last_reason(d)
    )
    .ok();
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::test_server::canned;

    /// A state as the agent spells it.
    fn state(s: &str) -> DeployState {
        serde_json::from_value(json!(s)).unwrap()
    }

    #[test]
    fn states_map_to_exit_codes() {
        assert_eq!(exit_code_for_state(state("completed")), Some(0));
        for s in ["rolled_back", "aborted", "failed"] {
            assert_eq!(exit_code_for_state(state(s)), Some(10), "{s}");
        }
        for s in ["paused", "awaiting_approval"] {
            assert_eq!(exit_code_for_state(state(s)), Some(11), "{s}");
        }
        assert_eq!(exit_code_for_state(state("progressing")), None);
        assert_eq!(exit_code_for_state(state("something_new")), None);
    }

    fn deployment(state: &str, percent: f64, reason: &str) -> Value {
        json!({
            "id": "d-1", "tenant": "api", "strategy": "canary", "version": "1.24.0",
            "state": state, "canary_percent": percent,
            "analysis": {"success_rate": 1.0, "samples": 10, "verdict": "pass", "source": "probes"},
            "history": [{"at": "2026-11-21T21:00:00Z", "canary_percent": percent, "state": state, "reason": reason}],
        })
    }

    fn run_wait(bodies: Vec<Value>, output: Output, timeout_ms: u64) -> (u8, String, Vec<String>) {
        let (url, requests) = canned(bodies.into_iter().map(|b| (200, b)).collect());
        let client = Client::new(&url, Some("t0ken".into()));
        let options = WaitOptions {
            timeout: Duration::from_millis(timeout_ms),
            interval: Duration::from_millis(5),
            output,
        };
        let mut out = Vec::new();
        let code = wait(&client, "d-1", &options, &mut out, |_| Ok(())).unwrap_or_else(|f| {
            panic!("wait failed: {} ({})", f.message, f.code);
        });
        let requests = requests
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        (code, String::from_utf8(out).unwrap(), requests)
    }

    #[test]
    fn completed_exits_0_printing_each_change_once() {
        let (code, out, requests) = run_wait(
            vec![
                deployment("progressing", 10.0, "started at 10%"),
                deployment("progressing", 10.0, "started at 10%"),
                deployment("progressing", 20.0, "step to 20%"),
                deployment("completed", 100.0, "promoted"),
            ],
            Output::Human,
            10_000,
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(requests.len(), 4);
        assert!(
            requests.iter().all(|r| r == "GET /deployments/d-1"),
            "{requests:?}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].contains("progressing") && lines[0].contains("canary    10%"),
            "{out}"
        );
        assert!(
            lines[1].contains("20%") && lines[1].contains("step to 20%"),
            "{out}"
        );
        assert!(
            lines[2].contains("completed") && lines[2].contains("success 100% of 10 (pass)"),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "deployment d-1 completed: canary 100% (promoted) — exit 0"
        );
    }

    #[test]
    fn rolled_back_aborted_failed_exit_10() {
        for state in ["rolled_back", "aborted", "failed"] {
            let (code, out, _) = run_wait(
                vec![
                    deployment("progressing", 10.0, "started"),
                    deployment(state, 0.0, "success rate 0.5 below 0.9"),
                ],
                Output::Human,
                10_000,
            );
            assert_eq!(code, 10, "{state}: {out}");
            assert!(out.ends_with(&format!(
                "deployment d-1 ended {state}: canary 0% (success rate 0.5 below 0.9) — exit 10\n"
            )), "{out}");
        }
    }

    #[test]
    fn paused_or_awaiting_approval_exit_11() {
        for state in ["paused", "awaiting_approval"] {
            let (code, out, _) = run_wait(
                vec![deployment(state, 50.0, "reached max_traffic")],
                Output::Human,
                10_000,
            );
            assert_eq!(code, 11, "{state}: {out}");
            assert!(out.contains("keystone-ctl canary promote d-1"), "{out}");
        }
    }

    #[test]
    fn still_progressing_at_the_timeout_exits_12() {
        let (code, out, requests) = run_wait(
            vec![deployment("progressing", 10.0, "started")],
            Output::Human,
            150,
        );
        assert_eq!(code, 12, "{out}");
        assert!(requests.len() > 1, "polled more than once");
        assert_eq!(
            out.lines().count(),
            2,
            "no change, one progress line: {out}"
        );
        assert!(out.contains("is still progressing after 150ms"), "{out}");
    }

    #[test]
    fn json_output_is_one_object_per_change_then_the_deployment() {
        let (code, out, _) = run_wait(
            vec![
                deployment("progressing", 10.0, "started"),
                deployment("rolled_back", 0.0, "rolled back"),
            ],
            Output::Json,
            10_000,
        );
        assert_eq!(code, 10);
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0]["state"], "progressing");
        assert_eq!(lines[0]["canary_percent"], 10.0);
        assert_eq!(lines[1]["state"], "rolled_back");
        assert_eq!(lines[2], deployment("rolled_back", 0.0, "rolled back"));
    }

    #[test]
    fn unreachable_agent_exits_3_after_the_timeout() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = Client::new(&format!("http://{dead}"), None);
        let options = WaitOptions {
            timeout: Duration::from_millis(100),
            interval: Duration::from_millis(20),
            output: Output::Json,
        };
        let e = wait(&client, "d-1", &options, &mut Vec::new(), |_| Ok(())).unwrap_err();
        assert_eq!(e.code, exit::UNREACHABLE);
    }
}
