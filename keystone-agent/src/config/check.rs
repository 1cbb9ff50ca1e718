//! What `keystone-agent --check` prints: every error and warning, one a line, in
//! the same `line N: field: reason` form, then a verdict.

use super::{ConfigError, LoadedConfig, Problem};

/// The report and whether the config passes (`strict`: warnings fail it too).
pub fn check_report(
    path: &std::path::Path,
    loaded: &Result<LoadedConfig, ConfigError>,
    strict: bool,
) -> (String, bool) {
    let (errors, warnings, tenants): (&[Problem], &[Problem], usize) = match loaded {
        Ok(config) => (&[], &config.warnings, config.tenants.len()),
        Err(e @ ConfigError::Read { .. }) => return (format!("error: {e}\n"), false),
        Err(e) => (e.problems(), e.warnings(), 0),
    };
    let mut out = String::new();
    for e in errors {
        out.push_str(&format!("error: {e}\n"));
    }
    let warning_word = if strict {
        "error (--strict)"
    } else {
        "warning"
    };
    for w in warnings {
        out.push_str(&format!("{warning_word}: {w}\n"));
    }
    let counts = format!("{} error(s), {} warning(s)", errors.len(), warnings.len());
    let ok = errors.is_empty() && (warnings.is_empty() || !strict);
    let verdict = match (ok, errors.is_empty()) {
        (true, _) => format!("valid, {tenants} tenant(s), {counts}"),
        (false, true) => format!("invalid with --strict: {counts}"),
        (false, false) => format!("invalid: {counts}"),
    };
    out.push_str(&format!("{}: {verdict}\n", path.display()));
    (out, ok)
}
