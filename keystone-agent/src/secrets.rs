//! Where secrets may go. The state directory holds the generated admin token and the
//! copy of the live config (admin token, webhook and notification secrets): it is
//! 0700 and every file in it 0600, also files an older agent left more open. Logs
//! show notification URLs with their credentials replaced by `***`.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;
/// Replaces a credential in logged text.
const REDACTED: &str = "***";
/// Query parameters whose value is a credential (matched as substrings of the name).
const SECRET_PARAMS: [&str; 6] = ["key", "token", "secret", "pass", "auth", "sig"];

/// Files this process creates from now on are private to its user (0600, dirs 0700).
pub fn private_new_files() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `dir` if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
}

/// [`private_dir`], and every file in `dir` 0600; returns the files it had to fix.
pub fn lock_down(dir: &Path) -> io::Result<Vec<PathBuf>> {
    private_dir(dir)?;
    let mut fixed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o777 != PRIVATE_FILE {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(PRIVATE_FILE))?;
            fixed.push(entry.path());
        }
    }
    Ok(fixed)
}

/// Warns when the secret file `path` (named by config `field`) is readable by others.
pub fn warn_if_shared(path: &Path, field: &str) {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            field,
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "a secret file is readable by other users; chmod 600 it"
        );
    }
}

/// `url` fit for a log: user, password and credential-like query values as `***`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username(REDACTED);
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| lower.contains(s));
                let value = if secret {
                    REDACTED.into()
                } else {
                    value.into()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // `***` is percent-encoded in user info and queries; show it as written.
    parsed.to_string().replace("%2A%2A%2A", REDACTED)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A state directory as an older agent left it: 0755, with `files` at 0644.
    pub(crate) fn open_state_dir(root: &Path, files: &[&str]) -> PathBuf {
        let state = root.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in files {
            std::fs::write(state.join(name), "old").unwrap();
            std::fs::set_permissions(state.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        state
    }

    #[test]
    fn lock_down_fixes_an_open_directory_and_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = open_state_dir(
            dir.path(),
            &["config.last-good.yaml", "admin-token", "state.json"],
        );
        assert_eq!(lock_down(&state).unwrap().len(), 3);
        assert_eq!(mode(&state), 0o700);
        for name in ["config.last-good.yaml", "admin-token", "state.json"] {
            assert_eq!(mode(&state.join(name)), 0o600, "{name}");
        }
        assert!(lock_down(&state).unwrap().is_empty(), "nothing left to fix");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://ci:hunter2@hooks.example.com/notify?api_key=abc123&team=web"),
            "https://***:***@hooks.example.com/notify?api_key=***&team=web"
        );
        assert_eq!(
            redact_url("http://198.18.0.1:8080/hook?Token=t0k&sig=s"),
            "http://198.18.0.1:8080/hook?Token=***&sig=***"
        );
        assert_eq!(
            redact_url("http://hooks.example.com/plain"),
            "http://hooks.example.com/plain"
        );
        assert_eq!(redact_url("not a url with p@ss"), "***");
    }
}
