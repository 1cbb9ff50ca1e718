//! The config generation every member publishes with its confirmation: per tenant, a
//! hash of what must match across the fleet (the resolved tenant: VIP, mode,
//! backends, weights, canary and switch steps). A tenant whose hash is not the same
//! on every live member is a mismatch: shown in `status.fleet`, counted in
//! `keystone_fleet_config_mismatch`, and its deployments are not advanced until the
//! members agree (one gateway would forward another split than the others).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::LoadedConfig;

/// Hex digits kept of each hash: enough to tell configs apart, short to read.
const HASH_CHARS: usize = 16;

/// Per tenant, the hash of its resolved config.
pub fn config_hashes(config: &LoadedConfig) -> BTreeMap<String, String> {
    config
        .tenants
        .iter()
        .map(|t| {
            let bytes = serde_json::to_vec(t).expect("a resolved tenant serialises");
            let mut hash = hex::encode(Sha256::digest(&bytes));
            hash.truncate(HASH_CHARS);
            (t.name.clone(), hash)
        })
        .collect()
}

/// Per tenant whose config differs between `members` (gateway id, its hashes): the
/// status line saying so, naming every member's hash.
pub fn mismatches<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> BTreeMap<String, String> {
    let members: Vec<(&str, &BTreeMap<String, String>)> = members.into_iter().collect();
    let tenants: std::collections::BTreeSet<&String> = members
        .iter()
        .flat_map(|(_, hashes)| hashes.keys())
        .collect();
    tenants
        .into_iter()
        .filter_map(|tenant| {
            let seen: Vec<(&str, &str)> = members
                .iter()
                .map(|(id, hashes)| (*id, hashes.get(tenant).map_or("(none)", String::as_str)))
                .collect();
            if seen.iter().all(|(_, h)| *h == seen[0].1) {
                return None;
            }
            let list: Vec<String> = seen.iter().map(|(id, h)| format!("{id}: {h}")).collect();
            let line = format!(
                "tenant '{tenant}': its config differs between gateways ({}); its deployments \
                 are not advanced until every gateway runs the same",
                list.join(", ")
            );
            Some((tenant.clone(), line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(t, h)| ((*t).to_owned(), (*h).to_owned()))
            .collect()
    }

    /// Only the tenant whose hash differs (or is missing on one member) is flagged,
    /// with every member's hash.
    #[test]
    fn a_tenant_is_flagged_when_one_member_hashes_it_differently_or_lacks_it() {
        let a = hashes(&[("web", "1111"), ("api", "2222"), ("db", "3333")]);
        let b = hashes(&[("web", "9999"), ("api", "2222")]);
        let found = mismatches([("a", &a), ("b", &b)]);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["db", "web"]);
        assert!(
            found["web"].contains("(a: 1111, b: 9999)"),
            "{}",
            found["web"]
        );
        assert!(found["db"].contains("b: (none)"), "{}", found["db"]);
        assert!(mismatches([("a", &a), ("b", &a.clone())]).is_empty());
    }

    fn loaded(blue: u32) -> LoadedConfig {
        let text = format!(
            "interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    services:
      - {{name: blue, address: 198.18.11.2:8080, weight: {blue}}}
      - {{name: green, address: 198.18.12.2:8080, weight: 0}}
"
        );
        LoadedConfig::parse(std::path::Path::new("test.yaml"), &text).expect("a valid config")
    }

    /// The same config hashes the same (another agent computes it the same way); a
    /// backend weight changes it.
    #[test]
    fn a_backend_weight_changes_the_tenants_hash() {
        assert_eq!(config_hashes(&loaded(100)), config_hashes(&loaded(100)));
        assert_ne!(
            config_hashes(&loaded(100))["web"],
            config_hashes(&loaded(90))["web"]
        );
    }
}
