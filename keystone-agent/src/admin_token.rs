//! The admin API's bearer token: `admin.token`, else the contents of
//! `admin.token_file`, else `KEYSTONE_ADMIN_TOKEN`, else one generated into
//! `<state dir>/admin-token` (0600) for keystone-ctl. A reload resolves it again
//! before anything of the new config goes live and, if the reload goes through,
//! makes it the only token accepted from then on.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
};

use crate::{
    config::{AdminConfig, ConfigError, LoadedConfig, Problem},
    yaml_lines,
};

/// The generated token's file name in the state directory.
pub const GENERATED_FILE: &str = "admin-token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{source_name}: the token {reason}")]
    TooShort { source_name: String, reason: String },
    #[error("cannot generate an admin token into {path}: {source}")]
    Generate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TokenError {
    /// The config field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            TokenError::Read { .. } | TokenError::Empty { .. } | TokenError::TooShort { .. } => {
                "admin.token_file"
            }
            TokenError::Generate { .. } => "admin.token",
        }
    }

    /// The error as a problem of `config` (field and line), for a refused reload.
    pub fn into_config_error(self, config: &LoadedConfig) -> ConfigError {
        let lines = yaml_lines::index(&config.source);
        ConfigError::Invalid {
            path: config.path.clone(),
            problems: vec![Problem {
                field: self.field().to_owned(),
                line: yaml_lines::line_of(&lines, self.field()),
                reason: self.to_string(),
            }],
            warnings: Vec::new(),
        }
    }
}

pub struct AdminToken {
    live: RwLock<String>,
    /// Where a generated token goes; `None` with [`AdminToken::fixed`].
    state_dir: Option<PathBuf>,
    /// The token used while the config names none, chosen once (the environment's,
    /// or a generated one) so that it does not change on every reload.
    fallback: Mutex<Option<String>>,
}

impl AdminToken {
    /// The token `admin` names, or the fallback; a generated one goes to `state_dir`.
    pub fn from_config(admin: &AdminConfig, state_dir: &Path) -> Result<AdminToken, TokenError> {
        let token = AdminToken {
            live: RwLock::default(),
            state_dir: Some(state_dir.to_owned()),
            fallback: Mutex::default(),
        };
        token.set(token.resolve(admin)?);
        Ok(token)
    }

    /// `token`, also whenever the config names none (tests, embedders).
    pub fn fixed(token: &str) -> AdminToken {
        AdminToken {
            live: RwLock::new(token.to_owned()),
            state_dir: None,
            fallback: Mutex::new(Some(token.to_owned())),
        }
    }

    /// The token `admin` asks for, without making it live.
    pub fn resolve(&self, admin: &AdminConfig) -> Result<String, TokenError> {
        if let Some(token) = &admin.token {
            return Ok(token.clone());
        }
        if let Some(path) = &admin.token_file {
            return read_token_file(path);
        }
        let mut fallback = self.fallback.lock().expect("token lock poisoned");
        if let Some(token) = &*fallback {
            return Ok(token.clone());
        }
        let token = match std::env::var("KEYSTONE_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => {
                long_enough(t.trim(), "KEYSTONE_ADMIN_TOKEN")?;
                t.trim().to_owned()
            }
            _ => self.generate()?,
        };
        *fallback = Some(token.clone());
        Ok(token)
    }

    /// Makes `token` the only one accepted.
    pub fn set(&self, token: String) {
        *self.live.write().expect("token lock poisoned") = token;
    }

    /// Whether `presented` is the live token (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let live = self.live.read().expect("token lock poisoned");
        crate::signing::constant_time_eq(presented.trim().as_bytes(), live.as_bytes())
    }

    fn generate(&self) -> Result<String, TokenError> {
        let dir = self.state_dir.as_deref().unwrap_or(Path::new("."));
        let path = dir.join(GENERATED_FILE);
        let err = |source| TokenError::Generate {
            path: path.clone(),
            source,
        };
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .map_err(err)?;
        let token = hex::encode(bytes);
        crate::secrets::private_dir(dir).map_err(err)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        // `mode` applies only to a new file: an existing one keeps its own otherwise.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(token.as_bytes()))
            .map_err(err)?;
        tracing::info!(path = %path.display(), "no admin token configured; generated one");
        Ok(token)
    }
}

fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    long_enough(token, &format!("admin.token_file {}", path.display()))?;
    crate::secrets::warn_if_shared(path, "admin.token_file");
    Ok(token.to_owned())
}

/// The config's rule for an inline `admin.token` (`check_admin_token`), applied to a
/// token from elsewhere.
fn long_enough(token: &str, source_name: &str) -> Result<(), TokenError> {
    crate::config::check_admin_token(token).map_err(|reason| TokenError::TooShort {
        source_name: source_name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::tests::{mode, open_state_dir};

    #[test]
    fn a_generated_token_is_private_even_over_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = open_state_dir(dir.path(), &[GENERATED_FILE]);
        let file = state.join(GENERATED_FILE);
        let token = AdminToken {
            live: RwLock::default(),
            state_dir: Some(state.clone()),
            fallback: Mutex::default(),
        };
        let generated = token.generate().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), generated);
        assert_eq!((mode(&state), mode(&file)), (0o700, 0o600));
    }
}
