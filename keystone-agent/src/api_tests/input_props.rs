//! Property tests on every input the agent parses: the config file and every API
//! body. Never a panic or a 5xx; every refusal is JSON (API) or a problem list
//! (config) that names what was wrong.
//!
//! Structure-aware cases start from a valid input and break one field; random cases
//! throw arbitrary text and JSON at the parsers. `PROPTEST_CASES` scales them.

use std::path::Path;

use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Value, json};

use super::{Harness, TOKEN, WEBHOOK_SECRET, config_text};
use crate::config::{ConfigError, LoadedConfig};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What was done to one field of a valid body.
#[derive(Clone, Debug)]
enum Mutation {
    /// The field's value replaced.
    Replace(Value),
    /// The field removed.
    Remove,
}

/// A valid request body per endpoint, and the paths (JSON pointers) worth breaking.
struct Endpoint {
    uri: &'static str,
    body: Value,
    fields: &'static [&'static str],
    signed: bool,
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            uri: "/tenants/web/weights",
            body: json!({"weights": {"blue": 1, "green": 3}}),
            fields: &["/weights", "/weights/blue", "/weights/green"],
            signed: false,
        },
        Endpoint {
            uri: "/deployments/canary",
            body: json!({"service": "web", "version": "1.1.0", "initial_traffic": 10,
                "increment": 45, "interval": "50ms", "max_traffic": 50,
                "health_threshold": 90, "rollback_threshold": 50, "min_samples": 10}),
            fields: &[
                "/service",
                "/version",
                "/initial_traffic",
                "/increment",
                "/interval",
                "/max_traffic",
                "/health_threshold",
                "/rollback_threshold",
                "/min_samples",
            ],
            signed: false,
        },
        Endpoint {
            uri: "/deployments/blue-green/switch",
            body: json!({"service": "web", "from": "blue", "to": "green", "strategy": "instant",
                "validation_timeout": "1s", "rollback_on_failure": true}),
            fields: &[
                "/service",
                "/from",
                "/to",
                "/strategy",
                "/validation_timeout",
                "/rollback_on_failure",
            ],
            signed: false,
        },
        Endpoint {
            uri: "/webhooks/deployment",
            body: json!({"service": "web", "version": "1.1.0", "strategy": "canary",
                "pipeline": {"id": "42"}, "config": {"initial_traffic": 5, "increment": 20}}),
            fields: &[
                "/service",
                "/version",
                "/strategy",
                "/pipeline",
                "/config",
                "/config/initial_traffic",
                "/config/increment",
            ],
            signed: true,
        },
    ]
}

/// `body` with `mutation` applied at `pointer`.
fn mutate(body: &Value, pointer: &str, mutation: &Mutation) -> Value {
    let mut body = body.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = body
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("an object");
    match mutation {
        Mutation::Replace(v) => {
            parent.insert(key.to_owned(), v.clone());
        }
        Mutation::Remove => {
            parent.remove(key);
        }
    }
    body
}

/// Posts `body` (signing it for the webhook) to a fresh agent; returns status and answer.
fn post(rt: &tokio::runtime::Runtime, endpoint: &Endpoint, body: &str) -> (u16, String) {
    let h = Harness::new();
    let mut headers = Vec::new();
    if endpoint.signed {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        headers.push(("x-keystone-timestamp", ts.to_string()));
        headers.push((
            "x-keystone-signature",
            crate::webhook::sign(WEBHOOK_SECRET.as_bytes(), ts, body.as_bytes()),
        ));
    }
    let token = (!endpoint.signed).then_some(TOKEN);
    let (status, answer) = rt.block_on(h.send("POST", endpoint.uri, token, &headers, body));
    (status.as_u16(), answer)
}

/// Every answer: not a 5xx; a refusal is a JSON object with an `error` string.
fn check_answer(status: u16, answer: &str) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "server error {status}: {answer}");
    if status >= 400 {
        let v: Value = serde_json::from_str(answer)
            .map_err(|e| TestCaseError::fail(format!("refusal is not JSON ({e}): {answer}")))?;
        prop_assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "refusal without an error: {answer}"
        );
    }
    Ok(())
}

/// A runner that keeps no regression files (a failure prints its minimal input).
fn runner() -> TestRunner {
    TestRunner::new(proptest::test_runner::Config {
        failure_persistence: None,
        ..Default::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => Just(Mutation::Remove),
        4 => any_json().prop_map(Mutation::Replace),
        // Numbers at and beyond the edges of every numeric field.
        2 => prop_oneof![
            Just(json!(-1)), Just(json!(0)), Just(json!(101)), Just(json!(1e300)),
            Just(json!(u64::MAX)), Just(json!(-0.5)), Just(json!("10")), Just(json!("")),
        ].prop_map(Mutation::Replace),
    ]
}

/// One field of a valid body broken: never a 5xx, and a refusal names that field
/// (a replaced value that is still valid may be accepted).
#[test]
fn a_broken_field_is_refused_by_name() {
    let rt = runtime();
    for endpoint in endpoints() {
        let mut runner = runner();
        let strategy = (prop::sample::select(endpoint.fields), mutation());
        runner
            .run(&strategy, |(pointer, mutation)| {
                let body = mutate(&endpoint.body, pointer, &mutation).to_string();
                let (status, answer) = post(&rt, &endpoint, &body);
                check_answer(status, &answer)?;
                if (400..500).contains(&status) {
                    let field = pointer.rsplit('/').next().unwrap();
                    prop_assert!(
                        answer.contains(field),
                        "{} {body} → {status} {answer}: the refusal does not name `{field}`",
                        endpoint.uri
                    );
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", endpoint.uri));
    }
}

/// An unknown field is refused by name, never silently ignored.
#[test]
fn an_unknown_field_is_refused_by_name() {
    let rt = runtime();
    for endpoint in endpoints() {
        let mut runner = runner();
        runner
            .run(&("zz_[a-z]{1,8}", any_json()), |(name, value)| {
                let mut body = endpoint.body.clone();
                body.as_object_mut().unwrap().insert(name.clone(), value);
                let body = body.to_string();
                let (status, answer) = post(&rt, &endpoint, &body);
                check_answer(status, &answer)?;
                prop_assert!(
                    (400..500).contains(&status) && answer.contains(&name),
                    "{} {body} → {status} {answer}: `{name}` not refused by name",
                    endpoint.uri
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", endpoint.uri));
    }
}

/// Arbitrary bytes and arbitrary JSON: never a panic, never a 5xx.
#[test]
fn arbitrary_bodies_never_get_a_server_error() {
    let rt = runtime();
    let body = prop_oneof![
        any_json().prop_map(|v| v.to_string()),
        ".{0,64}",
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    for endpoint in endpoints() {
        let mut runner = runner();
        runner
            .run(&body, |body| {
                let (status, answer) = post(&rt, &endpoint, &body);
                check_answer(status, &answer)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", endpoint.uri));
    }
}

/// The lines of a valid config whose value can be replaced: `key: value`.
fn config_leaves(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (key, value) = line.trim_start().trim_start_matches("- ").split_once(':')?;
            (!value.trim().is_empty()).then(|| (i, key.trim().to_owned()))
        })
        .collect()
}

fn parse_config(text: &str) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::parse(Path::new("fuzz.yaml"), text)
}

/// One value of a valid config replaced: never a panic; a refusal names a field
/// and a reason, and one of its problems is that key at that line.
#[test]
fn a_broken_config_value_is_named_with_its_line() {
    let text = config_text(90, 10);
    let leaves = config_leaves(&text);
    assert!(leaves.len() >= 10, "{leaves:?}");
    let values = prop_oneof![
        Just("abc".to_owned()),
        Just("-1".to_owned()),
        Just("1e999".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{x: 1}".to_owned()),
        Just("''".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("99999999999".to_owned()),
        Just("'::'".to_owned()),
        "[a-z0-9.:]{1,12}",
    ];
    let mut runner = runner();
    runner
        .run(
            &(prop::sample::select(leaves), values),
            |((index, key), value)| {
                let mutated: Vec<String> = text
                    .lines()
                    .enumerate()
                    .map(|(i, line)| {
                        if i == index {
                            let (head, _) = line.split_once(':').unwrap();
                            format!("{head}: {value}")
                        } else {
                            line.to_owned()
                        }
                    })
                    .collect();
                let mutated = mutated.join("\n");
                match parse_config(&mutated) {
                    Ok(_) => {}
                    Err(ConfigError::Invalid { problems, .. }) => {
                        for p in &problems {
                            prop_assert!(!p.field.is_empty() && !p.reason.is_empty(), "{p:?}");
                        }
                        let line = index + 1;
                        prop_assert!(
                            problems
                                .iter()
                                .any(|p| p.field.ends_with(&key) || p.line == Some(line)),
                            "{key}: {value} (line {line}) → {problems:?}\n{mutated}"
                        );
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Arbitrary text as a config: never a panic; every problem has a field and reason.
#[test]
fn arbitrary_config_text_never_panics() {
    let mut runner = runner();
    let text = prop_oneof![
        ".{0,200}",
        "([a-z_]{1,8}: ([a-z0-9]{0,6}|\\[\\]|\\{\\})\n {0,4}){0,12}"
    ];
    runner
        .run(&text, |text| {
            if let Err(ConfigError::Invalid { problems, .. }) = parse_config(&text) {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(
                        !p.field.is_empty() && !p.reason.is_empty(),
                        "{text:?} → {p:?}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}
