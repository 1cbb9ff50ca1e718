//! The admin API client: one call per request, answers mapped to exit codes.

use std::{sync::Mutex, time::Duration};

use keystone_api::ErrorBody;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::exit;

/// An answer read as keystone-api's type (the raw JSON is what `-o json` prints).
pub fn typed<T: DeserializeOwned>(answer: &Value) -> Result<T, Failure> {
    T::deserialize(answer).map_err(|e| {
        fail(
            exit::REFUSED,
            format!("the agent's answer is not what this keystone-ctl reads: {e}: {answer}"),
        )
    })
}

/// A request body as JSON.
pub fn body_of(request: &impl Serialize) -> Value {
    serde_json::to_value(request).expect("a request serialises")
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// The agent's reason when its last answer was marked stale (a fleet member
    /// that cannot follow the fleet), see [`Client::last_stale`].
    stale: Mutex<Option<String>>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
            stale: Mutex::new(None),
        }
    }

    /// Why the agent marked its last answer stale, if it did: it is a fleet member
    /// that cannot follow the fleet, so what it answered may be behind.
    pub fn last_stale(&self) -> Option<String> {
        self.stale.lock().expect("stale lock poisoned").clone()
    }

    /// Keeps the last answer's stale mark; warns (once per stale spell) on stderr.
    fn note_stale(&self, reason: Option<String>) {
        let mut last = self.stale.lock().expect("stale lock poisoned");
        if let (None, Some(reason)) = (&*last, &reason) {
            eprintln!(
                "keystone-ctl: warning: {} answers from stale state, maybe behind its fleet: {reason}",
                self.base
            );
        }
        *last = reason;
    }

    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        self.call("POST", path, body)
    }

    /// Calls the API; a non-2xx answer becomes a Failure carrying the agent's reason.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = if method == "POST" {
            let mut r = self.agent.post(&url);
            if let Some(auth) = &auth {
                r = r.header("Authorization", auth);
            }
            match body {
                Some(body) => r
                    .header("Content-Type", "application/json")
                    .send(body.to_string().as_bytes()),
                None => r.send_empty(),
            }
        } else {
            let mut r = self.agent.get(&url);
            if let Some(auth) = &auth {
                r = r.header("Authorization", auth);
            }
            r.call()
        };
        let mut response = result.map_err(|e| {
            fail(
                exit::UNREACHABLE,
                format!("cannot reach the agent at {url}: {e}"),
            )
        })?;
        let status = response.status().as_u16();
        let stale = response
            .headers()
            .get(keystone_api::STALE_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        self.note_stale(stale);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            200..=299 => Ok(body),
            401 => Err(fail(
                exit::AUTH,
                format!(
                    "the agent refused the token: {} (pass --token or --token-file, or --config naming the agent's config)",
                    reason(&body)
                ),
            )),
            _ => {
                let problems = error_body(&body).map(|e| e.problems).unwrap_or_default();
                let mut reason = reason(&body);
                if !problems.is_empty() {
                    // The agent's error text lists the problems too: keep its headline
                    // only, so each problem is printed once.
                    reason.truncate(reason.find('\n').unwrap_or(reason.len()));
                }
                let mut message = format!("the agent answered {status}: {reason}");
                for p in problems {
                    let line = p.line.map(|l| format!("line {l}: ")).unwrap_or_default();
                    message.push_str(&format!("\n  {line}{}: {}", p.field, p.reason));
                }
                Err(fail(exit::REFUSED, message))
            }
        }
    }
}

/// An error answer as the agent sends them (`{"error": ..., "problems": [...]}`).
fn error_body(body: &Value) -> Option<ErrorBody> {
    ErrorBody::deserialize(body)
        .ok()
        .filter(|e| !e.error.is_empty())
}

fn reason(body: &Value) -> String {
    error_body(body).map_or_else(|| body.to_string(), |e| e.error)
}

/// Percent-encodes a path segment (tenant names and ids are usually plain already).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `--api`: an http:// or https:// URL with a host; anything else is a usage error.
pub fn parse_api(s: &str) -> Result<String, String> {
    let url = s.trim();
    let example = "e.g. http://127.0.0.1:9100";
    if url.is_empty() {
        return Err(format!("the admin API URL is empty ({example})"));
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!(
            "'{url}' is not an admin API URL: it needs http:// or https:// ({example})"
        ));
    };
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err(format!("'{url}' has no host ({example})"));
    }
    Ok(url.to_owned())
}
