//! The `fleet:` block: the etcd cluster a fleet of gateways shares its desired state
//! through (see `crate::fleet`). Without it the agent works alone.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::DurationSpec;

/// The lease TTL when `lease_ttl` is not set: a dead leader is replaced, and a
/// partitioned gateway stops counting as live, within about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// etcd leases count whole seconds; below 2 s one missed keep-alive loses the lease.
const LEASE_TTL_RANGE: (u64, u64) = (2, 300);

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:2379`, or `https://` with `tls`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The key prefix naming the fleet, e.g. `/keystone/prod-edge`.
    #[serde(default)]
    pub prefix: String,
    /// This gateway's name in the fleet (default: the host name).
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// How long this gateway's lease (membership, leadership) outlives its last
    /// keep-alive (default 5s).
    #[serde(default)]
    pub lease_ttl: Option<DurationSpec>,
    #[serde(default)]
    pub tls: Option<FleetTls>,
    /// A file holding `user:password` for etcd's authentication.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct FleetTls {
    /// The CA that signed etcd's server certificates (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This gateway's client certificate and key (both or neither).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl FleetConfig {
    /// Problems with the block, as (field under `fleet.`, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push = |field: &str, reason: String| problems.push((field.to_owned(), reason));
        if self.endpoints.is_empty() {
            push(
                "endpoints",
                "required: the etcd client URLs, e.g. [http://127.0.0.1:2379]".into(),
            );
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            match endpoint_scheme(endpoint) {
                Err(reason) => push(&format!("endpoints[{i}]"), reason),
                Ok("http") if self.tls.is_some() => push(
                    &format!("endpoints[{i}]"),
                    format!("'{endpoint}' is http, but `tls` is set: use https:// URLs"),
                ),
                Ok(_) => {}
            }
        }
        if let Err(reason) = check_prefix(&self.prefix) {
            push("prefix", reason);
        }
        if let Some(Err(reason)) = self.gateway_id.as_deref().map(check_gateway_id) {
            push("gateway_id", reason);
        }
        if let Some(spec) = &self.lease_ttl {
            match spec.parse() {
                Err(reason) => push("lease_ttl", reason),
                Ok(ttl) if !(LEASE_TTL_RANGE.0..=LEASE_TTL_RANGE.1).contains(&ttl.as_secs()) => {
                    push(
                        "lease_ttl",
                        format!(
                            "{} is out of range ({}s to {}s)",
                            humantime::format_duration(ttl),
                            LEASE_TTL_RANGE.0,
                            LEASE_TTL_RANGE.1
                        ),
                    )
                }
                Ok(_) => {}
            }
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            push(
                "tls",
                "set cert_file and key_file together (a client certificate needs its key)".into(),
            );
        }
        problems
    }

    /// The lease TTL in force (`validate` has accepted the field).
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
            .as_ref()
            .map_or(DEFAULT_LEASE_TTL, DurationSpec::get)
    }
}

/// `http` or `https` for an endpoint URL with a host and a port, else why not.
fn endpoint_scheme(endpoint: &str) -> Result<&'static str, String> {
    let url = url::Url::parse(endpoint).map_err(|e| {
        format!("'{endpoint}' is not a URL ({e}); write e.g. http://127.0.0.1:2379")
    })?;
    let scheme = match url.scheme() {
        "http" => "http",
        "https" => "https",
        other => {
            return Err(format!(
                "'{endpoint}' has scheme {other}; etcd endpoints are http:// or https://"
            ));
        }
    };
    if url.host_str().is_none() || url.port().is_none() {
        return Err(format!(
            "'{endpoint}' needs a host and a port, e.g. http://127.0.0.1:2379"
        ));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!("'{endpoint}' has a path; etcd endpoints have none"));
    }
    Ok(scheme)
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("required: the fleet's key prefix, e.g. /keystone/prod-edge".into());
    }
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        return Err(format!(
            "'{prefix}' must start with / and not end with / (e.g. /keystone/prod-edge)"
        ));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{prefix}' contains a space or control character"));
    }
    Ok(())
}

/// Gateway ids become etcd key segments and metric label values.
pub fn check_gateway_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 63 || !id.chars().all(ok) {
        return Err(format!(
            "'{id}' must be 1 to 63 letters, digits, dots, dashes or underscores"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;

    const TENANT: &str = "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    services:\n      - name: a\n        address: 198.18.10.2:80\n";

    fn fleet_problems(block: &str) -> Vec<(String, Option<usize>, String)> {
        problems(&format!("{TENANT}fleet:\n{block}"))
            .into_iter()
            .map(|p| (p.field, p.line, p.reason))
            .collect()
    }

    #[test]
    fn a_valid_block_loads_with_defaults() {
        let text = format!(
            "{TENANT}fleet:\n  endpoints: [http://127.0.0.1:2379]\n  prefix: /keystone/edge\n"
        );
        let loaded = super::super::tests::parse(&text).unwrap();
        let fleet = loaded.config.fleet.expect("fleet block");
        assert_eq!(fleet.lease_ttl(), super::DEFAULT_LEASE_TTL);
        assert_eq!(fleet.gateway_id, None);
    }

    #[test]
    fn every_problem_names_its_field_line_and_value() {
        let p = fleet_problems(
            "  endpoints: [\"127.0.0.1:2379\", \"http://etcd-1\"]\n  prefix: keystone/edge/\n  gateway_id: \"gw 1\"\n  lease_ttl: 500ms\n  tls:\n    cert_file: /etc/keystone/gw.pem\n",
        );
        let find = |field: &str| {
            p.iter()
                .find(|(f, _, _)| f == field)
                .unwrap_or_else(|| panic!("no problem for {field}: {p:?}"))
                .clone()
        };
        let (_, line, reason) = find("fleet.endpoints[0]");
        assert_eq!(line, Some(8), "{p:?}");
        assert!(reason.contains("'127.0.0.1:2379'"), "{reason}");
        assert!(
            find("fleet.endpoints[1]")
                .2
                .contains("needs a host and a port")
        );
        let (_, line, reason) = find("fleet.prefix");
        assert_eq!(line, Some(9));
        assert!(
            reason.contains("'keystone/edge/' must start with /"),
            "{reason}"
        );
        assert!(find("fleet.gateway_id").2.contains("'gw 1'"));
        assert!(
            find("fleet.lease_ttl")
                .2
                .contains("500ms is out of range (2s to 300s)")
        );
        assert!(
            find("fleet.tls")
                .2
                .contains("cert_file and key_file together")
        );
    }

    #[test]
    fn missing_endpoints_and_prefix_are_required() {
        let p = fleet_problems("  gateway_id: gw-1\n");
        let fields: Vec<&str> = p.iter().map(|(f, _, _)| f.as_str()).collect();
        assert!(fields.contains(&"fleet.endpoints"), "{p:?}");
        assert!(fields.contains(&"fleet.prefix"), "{p:?}");
    }
}
