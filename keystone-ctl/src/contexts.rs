//! Contexts, as kubectl has them: named gateways (an admin API URL, a token file and
//! whether promotion stops before it) in `$XDG_CONFIG_HOME/keystone/config.yaml`
//! (else `~/.config/keystone/config.yaml`), one of them current.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::{
    client::{self, Failure, fail},
    exit,
    output::Output,
    render,
};

/// The contexts file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `promote` stops before this context until it is named in `--approve`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
}

/// A context chosen by name, with where it was read (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub name: String,
    pub context: Context,
    pub file: PathBuf,
}

impl Chosen {
    /// What named the token file, for the error when it cannot be read.
    pub fn token_named_by(&self) -> String {
        format!(
            "token_file of context '{}' in {}",
            self.name,
            self.file.display()
        )
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// List the contexts; the current one is marked with *.
    #[command(after_help = "Examples:\n  keystone-ctl config get-contexts\n  \
        keystone-ctl config get-contexts -o yaml")]
    GetContexts,
    /// Make NAME the context every verb uses unless told otherwise.
    #[command(after_help = "Examples:\n  keystone-ctl config use-context staging")]
    UseContext { name: String },
    /// Add a context, or change the fields given of an existing one.
    #[command(after_help = "Examples:\n  \
        keystone-ctl config set-context dev --api http://198.18.0.1:9100 --token-file ~/.config/keystone/dev.token\n  \
        keystone-ctl config set-context production --api https://gw.example:9100 --token-file /etc/keystone/token --gated true")]
    SetContext {
        name: String,
        /// The gateway's admin API URL.
        #[arg(long, value_parser = client::parse_api)]
        api: Option<String>,
        /// The file holding its bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Whether `promote` stops before this context (true or false).
        #[arg(long)]
        gated: Option<bool>,
    },
}

/// `$XDG_CONFIG_HOME/keystone/config.yaml`, else `~/.config/keystone/config.yaml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("keystone").join("config.yaml"))
}

impl Contexts {
    /// The file at `path`; none there reads as no contexts.
    pub fn read(path: &Path) -> Result<Contexts, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(e) => return Err(usage(format!("cannot read {}: {e}", path.display()))),
        };
        serde_yaml::from_str::<Option<Contexts>>(&text)
            .map(Option::unwrap_or_default)
            .map_err(|e| usage(format!("{}: {e}", path.display())))
    }

    fn write(&self, path: &Path) -> Result<(), Failure> {
        let text = serde_yaml::to_string(self).expect("contexts serialise");
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, text))
            .map_err(|e| {
                fail(
                    exit::REFUSED,
                    format!("cannot write {}: {e}", path.display()),
                )
            })
    }

    /// The context `name`; an unknown one is a usage error listing the known.
    pub fn get(&self, name: &str, path: &Path) -> Result<Chosen, Failure> {
        match self.contexts.get(name) {
            Some(context) => {
                client::parse_api(&context.api)
                    .map_err(|e| usage(format!("{}: contexts.{name}.api: {e}", path.display())))?;
                Ok(Chosen {
                    name: name.to_owned(),
                    context: context.clone(),
                    file: path.to_owned(),
                })
            }
            None => {
                let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
                Err(usage(format!(
                    "no context '{name}' in {} (contexts: {})",
                    path.display(),
                    if known.is_empty() {
                        "none; add one with `keystone-ctl config set-context`".to_owned()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        }
    }
}

/// The contexts file's path, or a usage error when there is no home to find it in.
pub fn path() -> Result<PathBuf, Failure> {
    default_path().ok_or_else(|| usage("neither $XDG_CONFIG_HOME nor $HOME is set"))
}

/// The context to connect through: `name` (`--context`), else the file's current one.
pub fn choose(name: Option<&str>) -> Result<Option<Chosen>, Failure> {
    let path = match default_path() {
        Some(path) => path,
        None if name.is_none() => return Ok(None),
        None => path()?,
    };
    let contexts = Contexts::read(&path)?;
    match name.or(contexts.current_context.as_deref()) {
        Some(name) => contexts.get(name, &path).map(Some),
        None => Ok(None),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    fail(exit::USAGE, message)
}

/// `config get-contexts|use-context|set-context`: the file only, no agent.
pub fn run(command: &ConfigCommand, output: Output, out: &mut dyn Write) -> Result<u8, Failure> {
    let path = path()?;
    let mut contexts = Contexts::read(&path)?;
    match command {
        ConfigCommand::GetContexts => {
            let as_value = serde_json::to_value(&contexts).expect("contexts serialise");
            crate::output::print(out, output, &as_value, |_: &serde_json::Value| {
                list(&contexts)
            })?;
            return Ok(exit::OK);
        }
        ConfigCommand::UseContext { name } => {
            contexts.get(name, &path)?;
            contexts.current_context = Some(name.clone());
            writeln!(out, "current context: {name}").ok();
        }
        ConfigCommand::SetContext {
            name,
            api,
            token_file,
            gated,
        } => {
            let context = match (contexts.contexts.get_mut(name), api) {
                (Some(context), _) => context,
                (None, Some(api)) => contexts.contexts.entry(name.clone()).or_insert(Context {
                    api: api.clone(),
                    ..Context::default()
                }),
                (None, None) => {
                    return Err(usage(format!(
                        "a new context needs --api (context '{name}')"
                    )));
                }
            };
            if let Some(api) = api {
                context.api = api.clone();
            }
            if let Some(file) = token_file {
                context.token_file = Some(file.clone());
            }
            if let Some(gated) = gated {
                context.gated = *gated;
            }
            writeln!(out, "context {name} set in {}", path.display()).ok();
        }
    }
    contexts.write(&path)?;
    Ok(exit::OK)
}

fn list(contexts: &Contexts) -> String {
    let mut rows = vec![render::header(&[
        "CURRENT",
        "NAME",
        "API",
        "TOKEN_FILE",
        "GATED",
    ])];
    for (name, c) in &contexts.contexts {
        let current = contexts.current_context.as_deref() == Some(name.as_str());
        rows.push(vec![
            if current { "*" } else { "" }.to_owned(),
            name.clone(),
            c.api.clone(),
            render::or_dash(c.token_file.as_deref().and_then(Path::to_str)),
            if c.gated { "yes" } else { "no" }.to_owned(),
        ]);
    }
    render::table(&rows) + "\n"
}
