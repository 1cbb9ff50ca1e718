//! The config validated as a whole: every problem and warning at once, as
//! (field, reason), and the tenants it could resolve.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use keystone_common::{limits::ring, maglev::is_prime};

use super::{
    CanaryConfig, Config, DEPLOYMENT_EVENTS, DurationSpec, ForwardingMode, MAX_WEIGHT, Params,
    PrometheusQuery, Protocol, ResolvedService, ResolvedTenant, Resolver, Strategy,
    resolve::resolve_service, seed, threshold_rate,
};
use crate::{dataplane::Limits, yaml_lines::Index};

type Problems = Vec<(String, String)>;

/// What `validate` found: the tenants it could resolve, problems and warnings as
/// (field, reason).
pub(super) struct Checked {
    pub(super) tenants: Vec<ResolvedTenant>,
    pub(super) problems: Problems,
    pub(super) warnings: Problems,
}

/// Shortest admin token accepted (from the config, its file or the environment).
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin token rule, wherever the token comes from.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let len = token.trim().chars().count();
    if len < MIN_TOKEN_LEN {
        return Err(format!(
            "is {len} characters; an admin token needs at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 16`)"
        ));
    }
    Ok(())
}

/// One weight's rule (the config and the API's manual weights share it).
pub fn check_weight(weight: u32) -> Result<(), String> {
    if weight > MAX_WEIGHT {
        return Err(format!("{weight} is above the maximum weight {MAX_WEIGHT}"));
    }
    Ok(())
}

/// A tenant's weights all 0 leave its VIP with no backend: refused by the config and
/// by the API's manual weights alike.
pub fn check_not_all_zero(weights: impl IntoIterator<Item = u32>) -> Result<(), String> {
    if weights.into_iter().all(|w| w == 0) {
        return Err("every weight is 0, so the VIP would have no backend: at least one service needs a weight above 0".into());
    }
    Ok(())
}

/// Link-local addresses have no meaning off their own link (and IPv6 ones need a
/// scope the data plane does not carry): a gateway cannot forward to them.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

pub(super) fn validate(config: &Config, index: &Index, resolve: &Resolver) -> Checked {
    let mut problems: Problems = Vec::new();
    let mut warnings: Problems = Vec::new();
    let mut push = |field: String, reason: String| problems.push((field, reason));
    let mut warn = |field: String, reason: String| warnings.push((field, reason));

    if let (Some(_), Some(_)) = (&config.admin.token, &config.admin.token_file) {
        push(
            "admin.token".into(),
            "set either token or token_file, not both".into(),
        );
    }
    if let Some(Err(reason)) = config.admin.token.as_deref().map(check_admin_token) {
        push("admin.token".into(), reason);
    }
    if config.tenants.is_empty() {
        push(
            "tenants".into(),
            "no tenant: list at least one under `tenants:` (a VIP with its services)".into(),
        );
    }
    let limits = &config.limits;
    for (field, reason) in limits.problems() {
        push(format!("limits.{field}"), reason);
    }
    if config.tenants.len() > limits.max_vips as usize {
        push(
            "tenants".into(),
            format!(
                "{} tenants, but limits.max_vips is {} (raise it to serve more VIPs)",
                config.tenants.len(),
                limits.max_vips
            ),
        );
    }
    let services: usize = config.tenants.iter().map(|t| t.services.len()).sum();
    if services > limits.max_backends as usize {
        push(
            "limits.max_backends".into(),
            format!(
                "{} is less than the {services} services of all tenants together",
                limits.max_backends
            ),
        );
    }
    let ring_entries = Limits::ring_entries_needed(config.tenants.iter().map(|t| t.ring_size));
    if ring_entries > u64::from(limits.ring_entries) {
        push(
            "limits.ring_entries".into(),
            format!(
                "{} is less than the {ring_entries} the tenants' tables need (2 × ring_size per tenant)",
                limits.ring_entries
            ),
        );
    }
    for (i, name) in config.interfaces.iter().map(|i| &i.name).enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            push(
                format!("interfaces[{i}]"),
                format!("'{name}' is not a valid interface name"),
            );
        }
    }

    if let Some(bgp) = &config.bgp {
        let listen: Vec<std::net::IpAddr> = config
            .tenants
            .iter()
            .filter_map(|t| t.listen.as_deref()?.parse::<std::net::SocketAddr>().ok())
            .map(|l| l.ip())
            .collect();
        for (field, reason) in bgp.problems(&listen) {
            push(field, reason);
        }
    }
    if let Some(webhook) = &config.webhook {
        match (&webhook.secret, &webhook.secret_file) {
            (Some(_), Some(_)) => push(
                "webhook.secret".into(),
                "set either secret or secret_file, not both".into(),
            ),
            (None, None) => push(
                "webhook".into(),
                "needs secret or secret_file to verify signatures".into(),
            ),
            (Some(secret), None) if secret.len() < 16 => push(
                "webhook.secret".into(),
                "must be at least 16 characters".into(),
            ),
            _ => {}
        }
        if let Some(Err(reason)) = webhook.tolerance.as_ref().map(DurationSpec::parse) {
            push("webhook.tolerance".into(), reason);
        }
    }
    for (field, reason) in config.fleet.iter().flat_map(|f| f.problems()) {
        push(format!("fleet.{field}"), reason);
    }
    for (i, target) in config.notifications.iter().enumerate() {
        match url::Url::parse(&target.url) {
            _ if target.url.is_empty() => {
                push(format!("notifications[{i}].url"), "required".into())
            }
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => push(
                format!("notifications[{i}].url"),
                format!("'{}' is not an http(s) URL", target.url),
            ),
        }
        for (j, event) in target.events.iter().enumerate() {
            if !DEPLOYMENT_EVENTS.contains(&event.as_str()) {
                push(
                    format!("notifications[{i}].events[{j}]"),
                    format!(
                        "unknown event '{event}'; known: {}",
                        DEPLOYMENT_EVENTS.join(", ")
                    ),
                );
            }
        }
    }

    let mut resolved = Vec::new();
    // Every backend as (field, address, protocol), to check against every VIP.
    let mut backends: Vec<(String, SocketAddr, Protocol)> = Vec::new();
    let mut tenant_names: HashMap<&str, usize> = HashMap::new();
    let mut vips: HashMap<(SocketAddr, Protocol), usize> = HashMap::new();
    // A NAT backend endpoint may serve one VIP only: replies are mapped back by it.
    let mut nat_backends: HashMap<(SocketAddr, Protocol), String> = HashMap::new();

    for (t, tenant) in config.tenants.iter().enumerate() {
        let at = |field: &str| format!("tenants[{t}].{field}");
        if tenant.name.trim().is_empty() {
            push(at("name"), "required (and not empty)".into());
        } else if let Some(first) = tenant_names.insert(&tenant.name, t) {
            push(
                at("name"),
                format!("'{}' is already the name of tenants[{first}]", tenant.name),
            );
        }
        if !is_prime(tenant.ring_size) || tenant.ring_size > ring::MAX_RING_SIZE {
            push(
                at("ring_size"),
                format!(
                    "{} must be a prime no larger than {}",
                    tenant.ring_size,
                    ring::MAX_RING_SIZE
                ),
            );
        }
        let vip = match tenant.listen.as_deref() {
            None => {
                push(
                    at("listen"),
                    "required: the VIP as address:port, e.g. 198.18.0.10:80".into(),
                );
                None
            }
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(vip) if vip.port() == 0 => {
                    push(at("listen"), "port must not be 0".into());
                    None
                }
                Ok(vip) => Some(vip),
                Err(_) => {
                    push(
                        at("listen"),
                        format!(
                            "'{text}' is not address:port (e.g. 198.18.0.10:80 or [2001:db8::10]:80)"
                        ),
                    );
                    None
                }
            },
        };
        if let Some(vip) = vip
            && let Some(first) = vips.insert((vip, tenant.protocol), t)
        {
            push(
                at("listen"),
                format!(
                    "{vip}/{:?} is already served by tenants[{first}]",
                    tenant.protocol
                ),
            );
        }
        if let Some(canary) = &tenant.canary_config {
            validate_canary(canary, &at("canary_config"), index, &mut push);
        }
        seed::check_active_environment(
            tenant,
            &format!("tenants[{t}]"),
            index,
            &mut push,
            &mut warn,
        );
        if let Some(switch) = &tenant.switch_config {
            for (name, value) in [
                ("validation_timeout", &switch.validation_timeout),
                ("interval", &switch.interval),
                ("drain_timeout", &switch.drain_timeout),
            ] {
                if let Some(Err(reason)) = value.as_ref().map(DurationSpec::parse) {
                    push(at(&format!("switch_config.{name}")), reason);
                }
            }
            if let Some(increment) = switch.increment
                && !(increment > 0.0 && increment <= 100.0)
            {
                push(
                    at("switch_config.increment"),
                    format!("{increment} is not a percentage above 0 and at most 100"),
                );
            }
            if let Some(endpoint) = &switch.validation_endpoint
                && (!endpoint.starts_with('/') || endpoint.contains(char::is_whitespace))
            {
                push(
                    at("switch_config.validation_endpoint"),
                    format!(
                        "'{endpoint}' is not an HTTP path like /health (it starts with / and has no spaces)"
                    ),
                );
            }
            if switch.strategy == Some(keystone_api::SwitchStrategy::Unknown) {
                // Named as written: `strategy`, or the seed's `switch_strategy`.
                let seed_name = at("switch_config.switch_strategy");
                let field = if index.lines.contains_key(&seed_name) {
                    seed_name
                } else {
                    at("switch_config.strategy")
                };
                let word = index.written.get(&field).cloned().unwrap_or_default();
                push(
                    field,
                    format!("unknown switch strategy '{word}'; expected instant or gradual"),
                );
            }
        }
        if tenant.services.is_empty() {
            push(at("services"), "a tenant needs at least one service".into());
        } else if tenant.active_environment.is_none()
            || tenant.deployment_strategy != Strategy::BlueGreen
        {
            // A blue/green tenant's active environment takes the traffic whatever
            // its weights (see `seed::check_active_environment`).
            if let Err(reason) = check_not_all_zero(tenant.services.iter().map(|s| s.weight)) {
                push(at("services"), reason);
            }
        }

        let mut service_names: HashMap<&str, usize> = HashMap::new();
        let mut endpoints: HashMap<SocketAddr, usize> = HashMap::new();
        let mut services = Vec::new();
        for (s, service) in tenant.services.iter().enumerate() {
            let at = |field: &str| format!("tenants[{t}].services[{s}].{field}");
            if service.name.trim().is_empty() {
                push(at("name"), "required (and not empty)".into());
            } else if let Some(first) = service_names.insert(&service.name, s) {
                push(
                    at("name"),
                    format!(
                        "'{}' is already the name of services[{first}]",
                        service.name
                    ),
                );
            }
            if let Some(health) = &service.health {
                for (name, value) in [("interval", &health.interval), ("timeout", &health.timeout)]
                {
                    if let Some(Err(reason)) = value.as_ref().map(DurationSpec::parse) {
                        push(at(&format!("health.{name}")), reason);
                    }
                }
                seed::check_health(health, &at("health"), &mut push);
            }
            if let Err(reason) = check_weight(service.weight) {
                push(at("weight"), reason);
            }
            let address = match resolve_service(service, vip.map(|v| v.ip()), resolve) {
                Ok(address) => address,
                Err((field, reason)) => {
                    push(at(field), reason);
                    continue;
                }
            };
            let address_field = if service.url.is_some() {
                "url"
            } else {
                "address"
            };
            if is_link_local(address.ip()) {
                push(
                    at(address_field),
                    format!(
                        "{address} is link-local: it means nothing beyond its own link, so a gateway cannot forward to it; use the backend's routable address"
                    ),
                );
            }
            backends.push((at(address_field), address, tenant.protocol));
            if let Some(first) = endpoints.insert(address, s) {
                push(
                    at("address"),
                    format!("{address} is already services[{first}] of this tenant"),
                );
            }
            if let Some(vip) = vip {
                if tenant.mode == ForwardingMode::Dsr && address.port() != vip.port() {
                    push(
                        at("address"),
                        format!(
                            "dsr mode rewrites only MAC addresses, so the backend port ({}) must equal the VIP port ({})",
                            address.port(),
                            vip.port()
                        ),
                    );
                }
                if tenant.mode == ForwardingMode::Nat
                    && let Some(other) =
                        nat_backends.insert((address, tenant.protocol), tenant.name.clone())
                    && other != tenant.name
                {
                    push(
                        at("address"),
                        format!(
                            "{address} already serves tenant '{other}' in nat mode; replies are mapped back to their VIP by backend address, so give each VIP its own backend port"
                        ),
                    );
                }
            }
            services.push(ResolvedService {
                name: service.name.clone(),
                address,
                weight: service.weight,
                environment: service.environment.clone(),
                version: service.labels.get("version").cloned().unwrap_or_default(),
                health: service.health.clone(),
            });
        }
        if let Some(vip) = vip {
            resolved.push(ResolvedTenant {
                name: tenant.name.clone(),
                vip,
                protocol: tenant.protocol,
                mode: tenant.mode,
                stickiness: tenant.stickiness,
                ring_size: tenant.ring_size,
                strategy: tenant.deployment_strategy,
                services,
                active_environment: tenant.active_environment.clone(),
                canary_config: tenant.canary_config.clone(),
                switch_config: tenant.switch_config.clone(),
            });
        }
    }
    for (field, address, protocol) in backends {
        if let Some(t) = vips.get(&(address, protocol)) {
            push(
                field,
                format!(
                    "{address} is the VIP of tenants[{t}] ('{}'); a backend that is a VIP would send its traffic back through the gateway",
                    config.tenants[*t].name
                ),
            );
        }
    }
    if let Some(plan) = &config.deployment_orchestration {
        let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
        for e in crate::orchestration::phases(plan, &names)
            .err()
            .unwrap_or_default()
        {
            push(format!("deployment_orchestration.{}", e.field), e.reason);
        }
    }
    Checked {
        tenants: resolved,
        problems,
        warnings,
    }
}

/// The step values are checked by the deployment engine's own rules
/// (`Params::problems`), so the config and API requests agree.
fn validate_canary(
    c: &CanaryConfig,
    at: &str,
    index: &Index,
    push: &mut impl FnMut(String, String),
) {
    let interval_ok = match c.interval.parse() {
        Ok(_) => true,
        Err(reason) => {
            push(format!("{at}.interval"), reason);
            false
        }
    };
    let mut thresholds_ok = true;
    for (name, value) in [
        ("health_threshold", c.health_threshold),
        ("rollback_threshold", c.rollback_threshold),
    ]
    .into_iter()
    .filter_map(|(name, v)| Some((name, v?)))
    {
        let field = format!("{at}.{name}");
        let written = index
            .written
            .get(&field)
            .cloned()
            .unwrap_or_else(|| value.to_string());
        if let Err(reason) = threshold_rate(value, &written) {
            push(field, reason);
            thresholds_ok = false;
        }
    }
    for (field, reason) in Params::from_canary_config(Some(c)).problems() {
        let threshold = field.ends_with("_threshold");
        if (field != "interval" || interval_ok) && (!threshold || thresholds_ok) {
            push(format!("{at}.{field}"), reason);
        }
    }
    if let Some(PrometheusQuery { address, query }) =
        c.analysis.as_ref().and_then(|a| a.prometheus.as_ref())
    {
        match url::Url::parse(address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => push(
                format!("{at}.analysis.prometheus.address"),
                format!("'{address}' is not an http(s) URL"),
            ),
        }
        if query.trim().is_empty() {
            push(
                format!("{at}.analysis.prometheus.query"),
                "must not be empty".into(),
            );
        }
    }
}
