//! The built binary's exit codes for bad connection settings, from flags and from the
//! environment alike: a usage error (2), not "agent unreachable" (3).

use std::process::Command;

fn ctl(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keystone-ctl"))
        .env_remove("KEYSTONE_API")
        .env_remove("KEYSTONE_CONFIG")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .expect("running keystone-ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_empty_or_scheme_less_api_or_an_unreadable_config_is_a_usage_error() {
    for (envs, args, says) in [
        (
            vec![("KEYSTONE_API", "")],
            vec!["status"],
            "the admin API URL is empty",
        ),
        (
            vec![],
            vec!["--api", "", "status"],
            "the admin API URL is empty",
        ),
        (
            vec![("KEYSTONE_API", "127.0.0.1:9100")],
            vec!["tenants"],
            "'127.0.0.1:9100' is not an admin API URL: it needs http:// or https://",
        ),
        (
            vec![],
            vec!["--api", "10.0.0.5:9100", "reload"],
            "'10.0.0.5:9100' is not an admin API URL",
        ),
        (
            vec![("KEYSTONE_CONFIG", "/nonexistent/keystone.yaml")],
            vec!["status"],
            "cannot read the agent's config /nonexistent/keystone.yaml",
        ),
    ] {
        let (code, stderr) = ctl(&envs, &args);
        assert_eq!(code, Some(2), "{envs:?} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{envs:?} {args:?}: {stderr}");
    }
}
