//! The admin API against its own OpenAPI document: schemathesis (installed by `cargo
//! xtask setup`) generates requests from `GET /openapi.yaml` — valid, invalid and
//! chained — and checks every answer: no 5xx, status codes, content types, headers
//! and bodies as documented. The agent runs for real in a lab gateway, with the
//! webhook on, so signatures, deployments and reloads are all exercised.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, Bins, LabBuilder, Mode, Protocol, WebhookConfig,
    cmd::in_ns,
    tools::{SCHEMATHESIS_VERSION, schemathesis},
};

/// Examples per operation and phase: enough to reach every documented status of
/// every operation, bounded so the run stays well under a minute.
const MAX_EXAMPLES: &str = "40";
/// The default seed; `KEYSTONE_SCHEMATHESIS_SEED` replays another run.
const SEED: &str = "20261121";
const BACKEND_PORT: u16 = 8080;

#[test]
fn the_admin_api_keeps_its_openapi_contract() {
    let program = schemathesis().expect("CARGO_HOME or HOME is set");
    assert!(
        program.is_file(),
        "schemathesis {SCHEMATHESIS_VERSION} is not installed at {}: run `cargo xtask setup`",
        program.display()
    );
    let mut bins = Bins::beside_current_exe().expect("target dir");
    bins.backend = env!("CARGO_BIN_EXE_ks-backend").into();
    bins.client = env!("CARGO_BIN_EXE_ks-client").into();
    let mut lab = LabBuilder::new()
        .mode(Mode::Nat)
        .backends(&["blue", "green"])
        .bins(bins)
        .build()
        .unwrap_or_else(|e| panic!("building the lab: {e}"));
    let started = lab.start_with_config(BACKEND_PORT, &[], |lab| {
        let vip = SocketAddr::new(IpAddr::V4(keystone_lab::VIP4), 80);
        let tenant = lab.tenant(
            "web",
            vip,
            Protocol::Tcp,
            Mode::Nat,
            BACKEND_PORT,
            &[("blue", 90), ("green", 10)],
        )?;
        let mut cfg = lab.agent_config(vec![tenant]);
        cfg.webhook = Some(WebhookConfig {
            secret: "schema-test-webhook-secret".into(),
            tolerance: "5m".into(),
        });
        Ok(cfg)
    });
    if let Err(e) = started {
        panic!("starting the lab: {e}\n{}", lab.diagnostics());
    }

    let seed = std::env::var("KEYSTONE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let base = format!("http://{ADMIN_LISTEN}");
    let report = lab.state_dir().join("schemathesis-report");
    let began = Instant::now();
    let out = in_ns(lab.gateway_ns(), &program)
        // Its example cache (.schemathesis/) goes with the lab, not into the checkout.
        .current_dir(lab.state_dir())
        .arg("run")
        .arg(format!("{base}/openapi.yaml"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        // Every check but one: a schema-valid body may still name a tenant, service or
        // version the config does not have, which the API rightly refuses (404/422).
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        .args(["--request-timeout", "10", "--no-color"])
        .arg("--report-dir")
        .arg(&report)
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "{stdout}\n(schemathesis took {:.1?}, seed {seed})",
        began.elapsed()
    );
    assert!(
        out.status.success(),
        "schemathesis found the API off its OpenAPI contract (seed {seed}; replay with \
         KEYSTONE_SCHEMATHESIS_SEED={seed}):\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics()
    );
    // Every operation in the document was reached, not skipped.
    let count = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| {
                rest.trim()
                    .split('/')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| panic!("no '{label}' line in schemathesis' summary:\n{stdout}"))
    };
    let selected = count("Selected:");
    let tested = count("Tested:");
    assert_eq!(selected.len(), 2, "{selected:?}");
    assert!(
        selected[0] == selected[1] && tested[0] == selected[1],
        "schemathesis selected {selected:?} and tested {tested:?} operations:\n{stdout}"
    );
}
