//! keystone-ctl: talks to the agent's admin API.
//!
//! Exit codes: 0 success; 1 the agent refused the request (e.g. an invalid config);
//! 2 usage error; 3 the agent could not be reached; 4 authentication failed.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "keystone-ctl",
    version,
    about = "Control a Keystone agent through its admin API"
)]
#[command(
    after_help = "Exit codes: 0 success, 1 refused by the agent, 2 usage, 3 agent unreachable, 4 auth failed"
)]
struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        env = "KEYSTONE_API",
        default_value = "http://127.0.0.1:9100",
        global = true
    )]
    api: String,
    /// Bearer token (default: KEYSTONE_TOKEN, else the file from --token-file).
    #[arg(long, env = "KEYSTONE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token (the agent writes one here when it generates it).
    #[arg(long, default_value = "/var/lib/keystone/admin-token", global = true)]
    token_file: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// VIPs, backends, weights and the live traffic share per backend.
    Status,
    /// Make the agent re-read its config file (refused, with reasons, if invalid).
    Reload,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(cli: &Cli) -> Client {
        let token = cli.token.clone().or_else(|| {
            std::fs::read_to_string(&cli.token_file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Client {
            base: cli.api.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    /// Calls the API; a non-2xx answer becomes a Failure carrying the agent's reason.
    fn call(&self, method: &str, path: &str) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match method {
            "POST" => {
                let mut r = self.agent.post(&url);
                if let Some(auth) = &auth {
                    r = r.header("Authorization", auth);
                }
                r.send_empty()
            }
            _ => {
                let mut r = self.agent.get(&url);
                if let Some(auth) = &auth {
                    r = r.header("Authorization", auth);
                }
                r.call()
            }
        };
        let mut response =
            result.map_err(|e| fail(3, format!("cannot reach the agent at {url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            200..=299 => Ok(body),
            401 => Err(fail(
                4,
                format!(
                    "the agent refused the token: {} (pass --token, set KEYSTONE_TOKEN, or --token-file)",
                    reason(&body)
                ),
            )),
            _ => {
                let mut message = format!("the agent answered {status}: {}", reason(&body));
                if let Some(problems) = body.get("problems").and_then(Value::as_array) {
                    message = format!("the agent answered {status}:");
                    for p in problems {
                        let line = p["line"]
                            .as_u64()
                            .map(|l| format!("line {l}: "))
                            .unwrap_or_default();
                        message.push_str(&format!(
                            "\n  {line}{}: {}",
                            p["field"].as_str().unwrap_or("?"),
                            p["reason"].as_str().unwrap_or("?")
                        ));
                    }
                }
                Err(fail(1, message))
            }
        }
    }
}

fn reason(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

fn percent(v: &Value) -> String {
    format!("{:.1}%", v.as_f64().unwrap_or(0.0) * 100.0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_status(status: &Value) {
    println!(
        "config {} (generation {}, loaded {})",
        text(&status["config_path"]),
        text(&status["config_generation"]),
        text(&status["config_loaded_at"])
    );
    let window = status["traffic_window_seconds"].as_f64().unwrap_or(0.0);
    for t in status["tenants"].as_array().into_iter().flatten() {
        println!(
            "\n{}  VIP {}/{}  mode {}  strategy {}  new connections {}",
            text(&t["name"]),
            text(&t["vip"]),
            text(&t["protocol"]),
            text(&t["mode"]),
            text(&t["strategy"]),
            text(&t["new_connections"]),
        );
        let mut rows = vec![
            [
                "BACKEND",
                "ADDRESS",
                "VERSION",
                "ENV",
                "WEIGHT",
                "WEIGHT%",
                &format!("TRAFFIC%({window:.0}s)"),
                "NEW CONNS",
                "PACKETS",
                "BYTES",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for b in t["backends"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(&b["name"]),
                text(&b["address"]),
                text(&b["version"]),
                text(&b["environment"]),
                text(&b["weight"]),
                percent(&b["weight_share"]),
                percent(&b["traffic_share"]),
                text(&b["new_connections"]),
                text(&b["packets"]),
                text(&b["bytes"]),
            ]);
        }
        println!(
            "{}",
            table(&rows)
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let client = Client::new(cli);
    let result = match cli.command {
        Command::Status => client.call("GET", "/status")?,
        Command::Reload => client.call("POST", "/admin/reload")?,
    };
    match (cli.output, &cli.command) {
        (Output::Json, _) => println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        ),
        (Output::Human, Command::Status) => print_status(&result),
        (Output::Human, Command::Reload) => {
            println!(
                "reloaded: config generation {}",
                text(&result["config_generation"])
            )
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if cli.output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({ "error": message, "exit_code": code })
                );
            }
            eprintln!("keystone-ctl: {message}");
            ExitCode::from(code)
        }
    }
}
