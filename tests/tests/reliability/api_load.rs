//! The admin API under 100 concurrent clients mixing status reads and weight changes.

use super::*;

fn backend_endpoint(lab: &Lab, name: &str) -> Endpoint {
    let b = ok(lab, "backend", lab.backend(name));
    Endpoint::new(SocketAddr::new(b.ipv4.into(), BACKEND_PORT), PROTO_TCP)
}

/// The VIP's live Maglev table as the kernel reads it: the VIPS entry's live table
/// of the ring array, each entry's backend slot resolved to the backend's endpoint.
fn live_table(lab: &Lab, vip: &Endpoint) -> Vec<Endpoint> {
    let vips: HashMap<MapData, Endpoint, VipInfo> = open_pinned(lab, names::VIPS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::VIPS));
    let info = vips
        .get(vip, 0)
        .unwrap_or_else(|e| panic!("no VIPS entry for {}: {e}", vip.socket_addr()));
    let rings: Array<MapData, u32> = open_pinned(lab, names::RINGS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::RINGS));
    let backends: Array<MapData, Backend> = open_pinned(lab, names::BACKENDS)
        .try_into()
        .unwrap_or_else(|e| panic!("{}: {e}", names::BACKENDS));
    let mut by_slot: BTreeMap<u32, Endpoint> = BTreeMap::new();
    (0..info.ring_size)
        .map(|i| {
            let slot = rings
                .get(&(info.ring_base + i), 0)
                .unwrap_or_else(|e| panic!("ring entry {i}: {e}"));
            *by_slot.entry(slot).or_insert_with(|| {
                let b = backends
                    .get(&slot, 0)
                    .unwrap_or_else(|e| panic!("backend slot {slot}: {e}"));
                assert!(
                    b.flags & backend_flags::UP != 0,
                    "ring entry {i} points at slot {slot}, which is not up: {b:?}"
                );
                b.endpoint
            })
        })
        .collect()
}

/// The table `keystone_common::maglev` builds for `weights` at the default size.
fn predicted_table(weights: &[(Endpoint, u32)]) -> Vec<Endpoint> {
    let ids: Vec<MaglevBackend> = weights
        .iter()
        .map(|(e, w)| MaglevBackend {
            id: e.identity(),
            weight: *w,
        })
        .collect();
    maglev::build(&ids, DEFAULT_RING_SIZE)
        .into_iter()
        .map(|i| weights[i as usize].0)
        .collect()
}

const API_CLIENTS: usize = 100;
const LOAD: Duration = Duration::from_secs(30);
const BACKENDS: [&str; 3] = ["blue", "green", "red"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `GET /status`.
    Status,
    /// `POST /tenants/web/weights` with a valid, unique weight per backend.
    Weights,
    /// `POST /tenants/web/weights` the agent must refuse (all zero, unknown backend).
    BadWeights,
}

impl Kind {
    /// The answer the request calls for.
    fn expected(self) -> u16 {
        match self {
            Kind::Status | Kind::Weights => 200,
            Kind::BadWeights => 422,
        }
    }

    /// (path, method) in the OpenAPI document.
    fn operation(self) -> (&'static str, &'static str) {
        match self {
            Kind::Status => ("/status", "get"),
            Kind::Weights | Kind::BadWeights => ("/tenants/{name}/weights", "post"),
        }
    }
}

/// One request and what came of it.
struct Call {
    kind: Kind,
    started: Instant,
    finished: Instant,
    /// The HTTP status and body, or why there was none.
    outcome: Result<(u16, String), String>,
    /// For `Weights`: blue, green, red.
    weights: Option<[u32; 3]>,
}

/// The status codes the OpenAPI document lists for `path`'s `method`.
fn documented_statuses(path: &str, method: &str) -> BTreeSet<u16> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(keystone_agent::api::OPENAPI).expect("openapi.yaml parses");
    doc["paths"][path][method]["responses"]
        .as_mapping()
        .unwrap_or_else(|| panic!("openapi.yaml has no responses for {method} {path}"))
        .keys()
        .filter_map(|k| match k {
            serde_yaml::Value::String(s) => s.parse().ok(),
            serde_yaml::Value::Number(n) => n.as_u64().map(|n| n as u16),
            _ => None,
        })
        .collect()
}

/// xorshift64: the request mix and the third weight, reproducible per client.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One API client: from a thread in the gateway namespace, requests back to back on
/// one keep-alive connection until `until`: 60 % status reads, 35 % weight changes,
/// 5 % refused weight changes. Client `id`'s `seq`th valid write sets blue to `id + 1`
/// and green to `seq + 1`, so every write is told apart by its weights.
fn api_client(gateway_ns: &str, id: usize, until: Instant) -> Vec<Call> {
    let ns = File::open(format!("/run/netns/{gateway_ns}"))
        .unwrap_or_else(|e| panic!("opening the gateway namespace {gateway_ns}: {e}"));
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering the gateway namespace {gateway_ns}: {e}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Beyond the agent's own 30 s request timeout, whose 408 then says what happened.
        .timeout_global(Some(Duration::from_secs(45)))
        .build()
        .into();
    let base = format!("http://{}", keystone_lab::ADMIN_LISTEN);
    let auth = format!("Bearer {}", keystone_lab::ADMIN_TOKEN);
    let mut rng = 0x6b65_7973_746f_6e65 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut calls = Vec::new();
    let mut seq = 0u32;
    while Instant::now() < until {
        let roll = next_random(&mut rng) % 100;
        let (kind, weights, body) = if roll < 60 {
            (Kind::Status, None, None)
        } else if roll < 95 {
            seq += 1;
            let w = [
                id as u32 + 1,
                seq,
                (next_random(&mut rng) % 1000) as u32 + 1,
            ];
            let body = serde_json::json!({
                "weights": { "blue": w[0], "green": w[1], "red": w[2] }
            });
            (Kind::Weights, Some(w), Some(body))
        } else if roll < 97 {
            let body = serde_json::json!({ "weights": { "blue": 0, "green": 0, "red": 0 } });
            (Kind::BadWeights, None, Some(body))
        } else {
            let body = serde_json::json!({ "weights": { "purple": 1 } });
            (Kind::BadWeights, None, Some(body))
        };
        let started = Instant::now();
        let result = match &body {
            None => agent
                .get(format!("{base}/status"))
                .header("Authorization", &auth)
                .call(),
            Some(body) => agent
                .post(format!("{base}/tenants/web/weights"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes()),
        };
        let outcome = result
            .and_then(|mut r| {
                let status = r.status().as_u16();
                r.body_mut().read_to_string().map(|text| (status, text))
            })
            .map_err(|e| e.to_string());
        calls.push(Call {
            kind,
            started,
            finished: Instant::now(),
            outcome,
            weights,
        });
    }
    calls
}

/// The `q` quantile (nearest rank) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// 100 API clients mix status reads and weight changes (and a few weight changes the
/// agent must refuse) for 30 s against the agent of a lab. Every request gets the
/// answer it calls for — 200, or 422 for the refused ones — and that status is one
/// the OpenAPI document lists for the endpoint. Afterwards the effective weights are
/// those of a write that no other accepted write followed (the last one applied),
/// and the live Maglev table in the kernel's pinned maps is the one
/// `keystone_common::maglev` builds for them. Latency p50/p99 per request kind is
/// printed, not asserted.
#[test]
fn admin_api_under_100_concurrent_clients() {
    let (lab, _) = lab_with_agent(keystone_lab::test_bins!(), Setup::nat(&BACKENDS), |lab| {
        lab.agent_config(vec![tcp_tenant(
            lab,
            "web",
            vip(),
            &BACKENDS.map(|b| (b, 1)),
        )])
    });
    let documented: BTreeMap<Kind, BTreeSet<u16>> = [Kind::Status, Kind::Weights, Kind::BadWeights]
        .into_iter()
        .map(|k| {
            let (path, method) = k.operation();
            (k, documented_statuses(path, method))
        })
        .collect();

    let started = Instant::now();
    let until = started + LOAD;
    let gateway_ns = lab.gateway_ns().to_owned();
    let calls: Vec<Call> = thread::scope(|s| {
        let clients: Vec<_> = (0..API_CLIENTS)
            .map(|id| {
                let ns = gateway_ns.as_str();
                s.spawn(move || api_client(ns, id, until))
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("API client thread panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    // Latency and counts per kind.
    let mut report = format!(
        "{} requests from {API_CLIENTS} clients in {:.1} s ({:.0}/s)\n{:<11} {:>7} {:>9} {:>9} {:>9}\n",
        calls.len(),
        elapsed.as_secs_f64(),
        calls.len() as f64 / elapsed.as_secs_f64(),
        "kind",
        "count",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    for kind in [Kind::Status, Kind::Weights, Kind::BadWeights] {
        let mut took: Vec<Duration> = calls
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.finished - c.started)
            .collect();
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        report.push_str(&format!(
            "{:<11} {:>7} {:>9.1} {:>9.1} {:>9.1}\n",
            format!("{kind:?}"),
            took.len(),
            ms(quantile(&took, 0.5)),
            ms(quantile(&took, 0.99)),
            ms(took.last().copied().unwrap_or_default()),
        ));
    }
    eprintln!("{report}");

    // Every answer is the expected one, and documented.
    let mut wrong: Vec<String> = Vec::new();
    for c in &calls {
        match &c.outcome {
            Ok((status, body)) => {
                if *status != c.kind.expected() || !documented[&c.kind].contains(status) {
                    wrong.push(format!("{:?}: HTTP {status} {body}", c.kind));
                }
            }
            Err(e) => wrong.push(format!("{:?}: no answer: {e}", c.kind)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests did not get the answer they call for (documented: {documented:?}); first ones:\n{}\n{}",
        wrong.len(),
        calls.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        lab.agent_diagnostics()
    );
    let accepted: Vec<&Call> = calls.iter().filter(|c| c.kind == Kind::Weights).collect();
    let reads = calls.iter().filter(|c| c.kind == Kind::Status).count();
    assert!(
        !accepted.is_empty() && reads > 0,
        "the load made {} writes and {reads} reads",
        accepted.len()
    );

    // The last accepted write: one that no other accepted write started after it
    // was answered (writes that overlap it may have been applied on either side).
    let candidates: BTreeSet<[u32; 3]> = accepted
        .iter()
        .filter(|w| !accepted.iter().any(|o| o.started > w.finished))
        .map(|w| w.weights.expect("valid writes carry weights"))
        .collect();
    let tenants = ok(&lab, "GET /tenants", lab.tenants());
    let web = tenants
        .iter()
        .find(|t| t.about.name == "web")
        .unwrap_or_else(|| panic!("no tenant web in {tenants:?}"));
    let effective: [u32; 3] = BACKENDS.map(|name| {
        web.backends
            .iter()
            .find(|b| b.identity.name == name)
            .map(|b| b.effective_weight)
            .unwrap_or_else(|| panic!("no effective weight for {name} in {web:?}"))
    });
    eprintln!(
        "{} accepted writes; {} could have been applied last; effective weights {effective:?}",
        accepted.len(),
        candidates.len()
    );
    assert!(
        candidates.contains(&effective),
        "the effective weights {effective:?} are not those of a write that could have been last: {candidates:?}\n{}",
        lab.agent_diagnostics()
    );

    let endpoints = BACKENDS.map(|b| backend_endpoint(&lab, b));
    let weights: Vec<(Endpoint, u32)> = endpoints.into_iter().zip(effective).collect();
    let live = live_table(&lab, &Endpoint::new(vip(), PROTO_TCP));
    let predicted = predicted_table(&weights);
    let differ = live.iter().zip(&predicted).filter(|(a, b)| a != b).count();
    assert!(
        live.len() == predicted.len() && differ == 0,
        "the kernel's live table ({} entries) differs from the Maglev table for {effective:?} ({} entries) in {differ} entries\n{}",
        live.len(),
        predicted.len(),
        lab.agent_diagnostics()
    );
}
