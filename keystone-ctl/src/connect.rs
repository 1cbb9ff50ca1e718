//! Where the agent is and which token to show it. In order: the flags, then their
//! environment variables, then the context (`--context`, else the contexts file's
//! current one), then the agent's own config (`admin.listen`, `admin.token`,
//! `admin.token_file`; `--config`, else /etc/keystone/keystone.yaml when it exists, the
//! agent's default), then the agent's defaults (loopback :9100, its generated token).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde_yaml::Value;

pub use crate::client::parse_api;
use crate::{
    client::{Failure, fail},
    contexts::Chosen,
    exit,
};

/// The agent's default `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/keystone/keystone.yaml";
/// The agent's default `admin.listen`.
const DEFAULT_API: &str = "http://127.0.0.1:9100";
/// Where the agent writes the token it generates (its default `--state-dir`).
const GENERATED_TOKEN: &str = "/var/lib/keystone/admin-token";

/// What the command line and environment said.
pub struct Given<'a> {
    pub api: Option<&'a str>,
    pub token: Option<&'a str>,
    pub token_file: Option<&'a Path>,
    pub config: Option<&'a Path>,
    /// The context chosen (below the flags and the environment, above the config).
    pub context: Option<&'a Chosen>,
    /// Read when `config` is not given and this file exists ([`DEFAULT_CONFIG`]).
    pub default_config: &'a Path,
}

/// The API base URL and the bearer token (if one was found).
#[derive(Debug, PartialEq)]
pub struct Connection {
    pub api: String,
    pub token: Option<String>,
}

pub fn resolve(given: &Given) -> Result<Connection, Failure> {
    let api = given.api.or(given.context.map(|c| c.context.api.as_str()));
    let token_file = match (given.token_file, given.context) {
        (Some(file), _) => Some((file, "--token-file".to_owned())),
        (None, Some(chosen)) => chosen
            .context
            .token_file
            .as_deref()
            .map(|file| (file, chosen.token_named_by())),
        (None, None) => None,
    };
    let said_all = api.is_some() && (given.token.is_some() || token_file.is_some());
    let config = match given.config {
        _ if said_all => AgentConfig::default(),
        Some(path) => AgentConfig::read(path)?,
        None => AgentConfig::read_default(given.default_config),
    };
    let api = match api {
        Some(api) => api.to_owned(),
        None => config.api()?.unwrap_or_else(|| DEFAULT_API.to_owned()),
    };
    let token = match (given.token, token_file) {
        (Some(token), _) => Some(token.to_owned()),
        (None, Some((file, named_by))) => Some(read_token(file, &named_by)?),
        (None, None) => match config.token()? {
            Some(token) => Some(token),
            // The agent generates one here when its config names none; absent is fine.
            None => read_token(Path::new(GENERATED_TOKEN), "").ok(),
        },
    };
    Ok(Connection { api, token })
}

/// The `admin:` section of the agent's config; nothing else of it is read, so a
/// config the agent would refuse for other reasons still tells keystone-ctl where to go.
#[derive(Default)]
struct AgentConfig {
    path: PathBuf,
    admin: Value,
}

impl AgentConfig {
    /// The default config, if there is one. One that cannot be read is only a warning:
    /// the flags may say enough, and a reload of a broken config must still reach the
    /// agent to hear what is wrong with it.
    fn read_default(path: &Path) -> AgentConfig {
        if !path.is_file() {
            return AgentConfig::default();
        }
        AgentConfig::read(path).unwrap_or_else(|e| {
            eprintln!("keystone-ctl: {}; going on without it", e.message);
            AgentConfig::default()
        })
    }

    fn read(path: &Path) -> Result<AgentConfig, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(
                exit::USAGE,
                format!("cannot read the agent's config {}: {e}", path.display()),
            )
        })?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| {
            fail(
                exit::USAGE,
                format!(
                    "cannot read admin: from the agent's config {}: {e}",
                    path.display()
                ),
            )
        })?;
        Ok(AgentConfig {
            path: path.to_owned(),
            admin: doc.get("admin").cloned().unwrap_or_default(),
        })
    }

    /// The string at `admin.<key>`; another type is an error naming the field.
    fn field(&self, key: &str) -> Result<Option<&str>, Failure> {
        match self.admin.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                let written = serde_yaml::to_string(other).unwrap_or_default();
                Err(self.bad(key, &format!("{} is not a string", written.trim())))
            }
        }
    }

    fn bad(&self, key: &str, reason: &str) -> Failure {
        fail(
            exit::USAGE,
            format!("{}: admin.{key}: {reason}", self.path.display()),
        )
    }

    /// `admin.listen` as a URL to connect to (an unspecified address means loopback).
    fn api(&self) -> Result<Option<String>, Failure> {
        let Some(listen) = self.field("listen")? else {
            return Ok(None);
        };
        let mut addr: SocketAddr = listen
            .parse()
            .map_err(|_| self.bad("listen", &format!("'{listen}' is not an address:port")))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        Ok(Some(format!("http://{addr}")))
    }

    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(token) = self.field("token")? {
            return Ok(Some(token.to_owned()));
        }
        match self.field("token_file")? {
            Some(file) => {
                let named = format!("admin.token_file in {}", self.path.display());
                read_token(Path::new(file), &named).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// The token in `file`; unreadable or empty is an authentication failure naming the
/// file and what named it.
fn read_token(file: &Path, named_by: &str) -> Result<String, Failure> {
    let by = if named_by.is_empty() {
        String::new()
    } else {
        format!(" ({named_by})")
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        fail(
            exit::AUTH,
            format!(
                "cannot read the admin token from {}{by}: {e}",
                file.display()
            ),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(
            exit::AUTH,
            format!("the admin token file {}{by} is empty", file.display()),
        ));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given<'a>(config: &'a Path) -> Given<'a> {
        Given {
            api: None,
            token: None,
            token_file: None,
            config: Some(config),
            context: None,
            default_config: Path::new("/nonexistent/keystone.yaml"),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keystone-ctl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn api_urls_need_a_scheme_and_a_host() {
        assert_eq!(
            parse_api(" http://10.0.0.5:9100/ ").unwrap(),
            "http://10.0.0.5:9100/"
        );
        assert!(parse_api("https://gw.example").is_ok());
        for (bad, says) in [
            ("", "the admin API URL is empty"),
            ("  ", "the admin API URL is empty"),
            (
                "127.0.0.1:9100",
                "'127.0.0.1:9100' is not an admin API URL: it needs http://",
            ),
            ("ftp://x", "'ftp://x' is not an admin API URL"),
            ("http://", "'http://' has no host"),
        ] {
            let e = parse_api(bad).unwrap_err();
            assert!(e.starts_with(says), "{bad:?}: {e}");
        }
    }

    /// The README's config names `token_file: /etc/keystone/token`: keystone-ctl finds it
    /// through the config, and connects to `admin.listen`.
    #[test]
    fn the_agents_config_gives_the_api_and_the_token_file() {
        let dir = temp_dir("config");
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let config = dir.join("keystone.yaml");
        std::fs::write(
            &config,
            format!(
                "interfaces: [eth0]\nadmin:\n  listen: 0.0.0.0:9200\n  token_file: {}\ntenants:\n  - name: api\n    ring_size: not-a-number\n",
                token.display()
            ),
        )
        .unwrap();
        assert_eq!(
            resolve(&given(&config)).unwrap(),
            Connection {
                api: "http://127.0.0.1:9200".into(),
                token: Some("s3cret".into())
            },
            "an unspecified listen address means loopback; the rest of the config is not judged"
        );

        let flags = Given {
            api: Some("http://10.0.0.5:9100"),
            token: Some("flag"),
            ..given(&config)
        };
        assert_eq!(
            resolve(&flags).unwrap(),
            Connection {
                api: "http://10.0.0.5:9100".into(),
                token: Some("flag".into())
            },
            "flags win over the config"
        );

        std::fs::remove_file(&token).unwrap();
        let e = resolve(&given(&config)).unwrap_err();
        assert_eq!(e.code, exit::AUTH);
        assert!(
            e.message.starts_with(&format!(
                "cannot read the admin token from {} (admin.token_file in {})",
                token.display(),
                config.display()
            )),
            "{}",
            e.message
        );

        std::fs::write(&config, "admin:\n  listen: 9100\n").unwrap();
        let e = resolve(&given(&config)).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.message.ends_with("admin.listen: 9100 is not a string"),
            "{}",
            e.message
        );

        let missing = dir.join("missing.yaml");
        let e = resolve(&given(&missing)).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.message.starts_with("cannot read the agent's config"),
            "{}",
            e.message
        );
        let all_flags = Given {
            api: Some("http://10.0.0.5:9100"),
            token_file: Some(&token),
            ..given(&missing)
        };
        assert_eq!(
            resolve(&all_flags).unwrap_err().message,
            format!(
                "cannot read the admin token from {} (--token-file): No such file or directory (os error 2)",
                token.display()
            ),
            "with --api and a token given, the config is not read"
        );

        // The default config, broken (a reload must still reach the agent): defaults.
        std::fs::write(&config, "admin: [unclosed\n").unwrap();
        let default = Given {
            config: None,
            token: Some("t"),
            default_config: &config,
            ..given(&config)
        };
        assert_eq!(
            resolve(&default).unwrap(),
            Connection {
                api: DEFAULT_API.into(),
                token: Some("t".into())
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
