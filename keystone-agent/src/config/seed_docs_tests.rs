//! The user's seed document (`../shared/seeds/000_*.txt`, beside the repository) is
//! the contract: every tenant config in it loads with only `listen:` added.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::*;
use crate::health::{CheckSpec, ProbeKind};

fn seed_document() -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the seed documents are not at {} ({e}); CI and the workspace keep them in ../shared/seeds beside the repository",
            dir.display()
        )
    });
    let path = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("000_"))
        })
        .unwrap_or_else(|| panic!("no 000_*.txt seed document in {}", dir.display()));
    let text = std::fs::read_to_string(&path).expect("read the seed document");
    (path, text)
}

/// Each fenced block's language and body.
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The tenant configs of the document: YAML blocks with `tenants:` and shell
/// here-documents that write one.
fn tenant_configs(text: &str) -> Vec<String> {
    let mut configs = Vec::new();
    for (lang, body) in fenced_blocks(text) {
        match lang.as_str() {
            "yaml" if body.lines().any(|l| l.starts_with("tenants:")) => configs.push(body),
            "bash" => {
                let mut heredoc: Option<String> = None;
                for line in body.lines() {
                    match &mut heredoc {
                        None if line.contains("<< EOF") => heredoc = Some(String::new()),
                        Some(_) if line == "EOF" => configs.extend(heredoc.take()),
                        Some(doc) => {
                            doc.push_str(line);
                            doc.push('\n');
                        }
                        None => {}
                    }
                }
            }
            _ => {}
        }
    }
    configs
        .into_iter()
        .filter(|c| c.lines().any(|l| l.starts_with("tenants:")))
        .collect()
}

/// What the document's templates (`{{x}}`, `${X}`, `$X`) are filled with.
const SAMPLES: [(&str, &str); 19] = [
    ("name", "api-stable"),
    ("url", "http://api-v1.23.0:8080"),
    ("weight", "100"),
    ("health_endpoint", "/health"),
    ("version", "v1.23.0"),
    ("deployment_type", "stable"),
    ("CANARY_CONFIG.initial_traffic", "5"),
    ("CANARY_CONFIG.increment", "10"),
    ("CANARY_CONFIG.interval", "5m"),
    ("CANARY_CONFIG.health_threshold", "99.5"),
    ("CANARY_CONFIG.rollback_threshold", "95"),
    ("SERVICE_NAME", "api"),
    ("ENVIRONMENT", "staging"),
    ("DEPLOYMENT_STRATEGY", "canary"),
    ("SERVICE_PATH", "api"),
    ("CI_COMMIT_SHA", "0123abcd"),
    ("CI_PIPELINE_ID", "42"),
    ("SERVICE", "api"),
    ("NEW_VERSION", "v1.24.0"),
];

fn sample(name: &str) -> &'static str {
    SAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("the seed's template placeholder '{name}' has no sample value"))
}

/// Fills the template: `{{#each}}`/`{{#if}}` lines go (one item, condition true),
/// placeholders get their sample. Line numbers stay as in the block.
fn render(template: &str) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{#") || trimmed.starts_with("{{/") {
            out.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find(['{', '$']) {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let (name, len) = if let Some(inner) = tail.strip_prefix("{{") {
                let end = inner.find("}}").expect("closed {{");
                (&inner[..end], end + 4)
            } else if let Some(inner) = tail.strip_prefix("${") {
                let end = inner.find('}').expect("closed ${");
                (&inner[..end], end + 3)
            } else if let Some(inner) = tail.strip_prefix('$') {
                let end = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                (&inner[..end], end + 1)
            } else {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
                continue;
            };
            out.push_str(sample(name));
            rest = &tail[len..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// The one line a user adds: each tenant's VIP, right after its `name:`.
fn with_listen(config: &str) -> String {
    let mut out = String::new();
    let mut vips = 0;
    for line in config.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("  - name:") {
            vips += 1;
            out.push_str(&format!("    listen: 198.18.0.{vips}:80\n"));
        }
    }
    out
}

/// Every host name resolves, each to its own address (as a lab's /etc/hosts would).
fn lab_resolver() -> impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> {
    let table: Mutex<HashMap<String, Ipv4Addr>> = Mutex::default();
    move |host: &str, port: u16| {
        let mut table = table.lock().unwrap();
        let next = Ipv4Addr::new(198, 18, 20, 1 + table.len() as u8);
        let ip = *table.entry(host.to_owned()).or_insert(next);
        Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)])
    }
}

fn load(config: &str) -> LoadedConfig {
    let text = with_listen(config);
    LoadedConfig::parse_with(Path::new("seed.yaml"), &text, &lab_resolver())
        .unwrap_or_else(|e| panic!("the seed's config is refused: {e}\n{text}"))
}

#[test]
fn every_tenant_config_of_the_seed_document_loads() {
    let (path, text) = seed_document();
    let configs = tenant_configs(&text);
    assert!(
        configs.len() >= 4,
        "expected the canary, here-document, blue/green and template configs in {}, found {}",
        path.display(),
        configs.len()
    );
    for config in &configs {
        let rendered = render(config);
        let loaded = load(&rendered);
        assert!(!loaded.tenants.is_empty());
        for w in &loaded.warnings {
            // The only thing the seed writes that an L4 balancer cannot do.
            assert!(
                w.field.ends_with(".path_prefix") && w.reason.contains("L4"),
                "unexpected warning {w} for\n{rendered}"
            );
        }
    }
}

#[test]
fn the_seed_canary_config_means_what_it_says() {
    let (_, text) = seed_document();
    let configs = tenant_configs(&text);
    let canary = configs
        .iter()
        .find(|c| c.contains("canary_config:") && !c.contains("{{"))
        .expect("the seed's canary config");
    let loaded = load(canary);
    let tenant = &loaded.tenants[0];
    // `api-v1.23.0` is a host name, resolved like any other.
    assert_eq!(tenant.services[0].address.port(), 8080);
    assert_ne!(tenant.services[0].address, tenant.services[1].address);
    assert_eq!(
        (tenant.services[0].weight, tenant.services[1].weight),
        (95, 5)
    );
    let raw = &loaded.config.tenants[0];
    let health = raw.services[0]
        .health
        .as_ref()
        .expect("health: \"/health\"");
    let spec = CheckSpec::from_config(tenant.services[0].address, health);
    assert!(
        matches!(&spec.probe, ProbeKind::Http { path, expected_status: 200, .. } if path == "/health"),
        "{spec:?}"
    );
    let params = crate::config::Params::from_canary_config(raw.canary_config.as_ref());
    assert_eq!(
        (params.health_threshold, params.rollback_threshold),
        (0.995, 0.95)
    );
    assert_eq!(params.max_traffic, 50.0);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn the_seed_blue_green_config_keeps_its_switch_settings() {
    let (_, text) = seed_document();
    let configs = tenant_configs(&text);
    let blue_green = configs
        .iter()
        .find(|c| c.contains("switch_config:"))
        .expect("the seed's blue/green config");
    let loaded = load(blue_green);
    let switch = loaded.config.tenants[0].switch_config.as_ref().unwrap();
    assert_eq!(switch.strategy, Some(keystone_api::SwitchStrategy::Instant));
    assert_eq!(switch.validation_endpoint.as_deref(), Some("/health"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // The seed's comment offers `gradual`: the same block with it switches in steps.
    let gradual = blue_green.replace(
        "switch_strategy: \"instant\"",
        "switch_strategy: \"gradual\"",
    );
    let loaded = load(&gradual);
    let switch = loaded.config.tenants[0].switch_config.as_ref().unwrap();
    assert_eq!(switch.strategy, Some(keystone_api::SwitchStrategy::Gradual));
}

#[test]
fn the_seed_template_warns_that_path_prefix_is_l7() {
    let (_, text) = seed_document();
    let configs = tenant_configs(&text);
    let template = configs
        .iter()
        .find(|c| c.contains("{{#each"))
        .expect("the seed's template");
    let rendered = render(template);
    let loaded = load(&rendered);
    let listen_lines_before = 1; // `listen:` is added below `name:`, above path_prefix
    let line = rendered
        .lines()
        .position(|l| l.contains("path_prefix:"))
        .unwrap()
        + 1
        + listen_lines_before;
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.field, "tenants[0].path_prefix");
    assert_eq!(w.line, Some(line));
    assert!(w.reason.contains("Keystone balances at L4"), "{w}");
    assert!(w.reason.contains("its own VIP"), "{w}");
}
