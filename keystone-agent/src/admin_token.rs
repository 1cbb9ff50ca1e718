//! The admin API's bearer token: `admin.token`, else the contents of
//! `admin.token_file`, else `KEYSTONE_ADMIN_TOKEN`, else one generated into
//! `<state dir>/admin-token` (0600) for keystone-ctl. A reload resolves it again
//! before anything of the new config goes live and, if the reload goes through,
//! makes it the only token accepted from then on. The same goes for the read-only
//! token of `admin.read_token_file` (see `token_role`).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
};

use crate::{
    config::{AdminConfig, ConfigError, LoadedConfig, Problem},
    token_role::Role,
    yaml_lines,
};

/// The generated token's file name in the state directory.
pub const GENERATED_FILE: &str = "admin-token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { field: &'static str, path: PathBuf },
    #[error("{source_name}: the token {reason}")]
    TooShort {
        field: &'static str,
        source_name: String,
        reason: String,
    },
    #[error(
        "{READ_FIELD} {}: the read-only token is the admin token; give it a value of its own",
        path.display()
    )]
    SameAsAdmin { path: PathBuf },
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
            TokenError::Read { field, .. }
            | TokenError::Empty { field, .. }
            | TokenError::TooShort { field, .. } => field,
            TokenError::SameAsAdmin { .. } => READ_FIELD,
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

const ADMIN_FIELD: &str = "admin.token_file";
const READ_FIELD: &str = "admin.read_token_file";

/// The tokens a config asks for: the admin one, and the read-only one if named.
#[derive(Default)]
pub struct Tokens {
    admin: String,
    read: Option<String>,
}

pub struct AdminToken {
    live: RwLock<Tokens>,
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
            live: RwLock::new(Tokens {
                admin: token.to_owned(),
                read: None,
            }),
            state_dir: None,
            fallback: Mutex::new(Some(token.to_owned())),
        }
    }

    /// The tokens `admin` asks for, without making them live.
    pub fn resolve(&self, admin: &AdminConfig) -> Result<Tokens, TokenError> {
        let admin_token = self.resolve_admin(admin)?;
        let read = match &admin.read_token_file {
            Some(path) => Some(read_token_file(path, READ_FIELD)?),
            None => None,
        };
        if read.as_deref().is_some_and(|read| read == admin_token) {
            let path = admin.read_token_file.clone().unwrap_or_default();
            return Err(TokenError::SameAsAdmin { path });
        }
        Ok(Tokens {
            admin: admin_token,
            read,
        })
    }

    fn resolve_admin(&self, admin: &AdminConfig) -> Result<String, TokenError> {
        if let Some(token) = &admin.token {
            return Ok(token.clone());
        }
        if let Some(path) = &admin.token_file {
            return read_token_file(path, ADMIN_FIELD);
        }
        let mut fallback = self.fallback.lock().expect("token lock poisoned");
        if let Some(token) = &*fallback {
            return Ok(token.clone());
        }
        let token = match std::env::var("KEYSTONE_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => {
                long_enough(t.trim(), ADMIN_FIELD, "KEYSTONE_ADMIN_TOKEN")?;
                t.trim().to_owned()
            }
            _ => self.generate()?,
        };
        *fallback = Some(token.clone());
        Ok(token)
    }

    /// Makes `tokens` the only ones accepted.
    pub fn set(&self, tokens: Tokens) {
        *self.live.write().expect("token lock poisoned") = tokens;
    }

    /// What `presented` may do, if it is a live token (compared in constant time).
    pub fn role(&self, presented: &str) -> Option<Role> {
        let live = self.live.read().expect("token lock poisoned");
        let is = |token: &str| {
            crate::signing::constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
        };
        let admin = is(&live.admin);
        let reader = live.read.as_deref().is_some_and(is);
        match (admin, reader) {
            (true, _) => Some(Role::Admin),
            (false, true) => Some(Role::Reader),
            (false, false) => None,
        }
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

fn read_token_file(path: &Path, field: &'static str) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        field,
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            field,
            path: path.to_owned(),
        });
    }
    long_enough(token, field, &format!("{field} {}", path.display()))?;
    crate::secrets::warn_if_shared(path, field);
    Ok(token.to_owned())
}

/// The config's rule for an inline `admin.token` (`check_admin_token`), applied to a
/// token from elsewhere.
fn long_enough(token: &str, field: &'static str, source_name: &str) -> Result<(), TokenError> {
    crate::config::check_admin_token(token).map_err(|reason| TokenError::TooShort {
        field,
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
