//! `keystone-agent --check` as CI runs it: every error and warning on stdout in one
//! run, exit 64 when invalid, and `--strict` failing on warnings.

use std::process::Command;

fn check(config: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystone.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keystone-agent"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env_remove("KEYSTONE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout)
        .unwrap()
        .replace(&path.display().to_string(), "keystone.yaml");
    (out.status.code().unwrap_or(-1), stdout)
}

const WARNED: &str = "tenants:
  - name: api
    listen: 198.18.0.10:80
    path_prefix: /api/
    services:
      - name: a
        address: 198.18.11.2:8080
";

#[test]
fn check_prints_warnings_on_stdout_and_strict_fails_on_them() {
    let (code, stdout) = check(WARNED, &[]);
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(
            "warning: line 4: tenants[0].path_prefix: ignored: Keystone balances at L4"
        ),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        "keystone.yaml: valid, 1 tenant(s), 0 error(s), 1 warning(s)"
    );
    let (code, stdout) = check(WARNED, &["--strict"]);
    assert_eq!(code, 64, "{stdout}");
    assert!(stdout.ends_with("keystone.yaml: invalid with --strict: 0 error(s), 1 warning(s)\n"));
}

#[test]
fn check_reports_every_type_error_and_the_warnings_in_one_run() {
    let config = format!(
        "{}        weight: lots\n        health: {{interval: [1]}}\n  - name: web\n    listen: 198.18.0.11:80\n    protocol: sctp\n    services:\n      - name: b\n        address: 198.18.12.2:8080\n",
        WARNED
    );
    let (code, stdout) = check(&config, &[]);
    assert_eq!(code, 64, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        "error: line 8: tenants[0].services[0].weight: invalid type: string \"lots\", expected u32",
        "error: line 9: tenants[0].services[0].health.interval: invalid type: sequence, expected a duration like 30s or 1m30s, or a number of seconds",
        "error: line 12: tenants[1].protocol: unknown variant `sctp`, expected `tcp` or `udp`",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{stdout}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: line 4: tenants[0].path_prefix:"))
    );
    assert_eq!(
        lines.last(),
        Some(&"keystone.yaml: invalid: 3 error(s), 1 warning(s)")
    );
}

#[test]
fn check_refuses_a_misspelt_tenants_key() {
    let (code, stdout) = check(&WARNED.replace("tenants:", "tenant:"), &[]);
    assert_eq!(code, 64, "{stdout}");
    assert!(
        stdout.starts_with("error: line 1: tenant: unknown top-level key (did you mean tenants?)"),
        "{stdout}"
    );
    assert!(stdout.contains("\nerror: tenants: no tenant"), "{stdout}");
}
