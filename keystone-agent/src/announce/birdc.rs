//! Talking to BIRD through `birdc -s <socket>`: `configure` (the reply checked) and
//! `show protocols` (the BGP sessions).

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keystone_api::BgpSession;

/// How long one birdc call may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BirdcError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not answer within {TIMEOUT:?}")]
    Timeout { program: String },
    /// birdc ran but BIRD did not accept: its reply, as printed.
    #[error("{0}")]
    Refused(String),
}

pub struct Birdc<'a> {
    pub program: &'a Path,
    pub socket: &'a Path,
}

impl Birdc<'_> {
    /// `birdc configure`: BIRD re-reads its config (and our routes file). Only a reply
    /// saying "Reconfigured" or "Reconfiguration in progress" is success.
    pub fn configure(&self) -> Result<(), BirdcError> {
        let reply = self.run("configure")?;
        if reply.contains("Reconfigured") || reply.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(BirdcError::Refused(reply_text(&reply)))
        }
    }

    /// BIRD's BGP protocols, from `birdc show protocols`.
    pub fn sessions(&self) -> Result<Vec<BgpSession>, BirdcError> {
        Ok(parse_protocols(&self.run("show protocols")?))
    }

    /// Runs one birdc command; its stdout and stderr together.
    fn run(&self, command: &str) -> Result<String, BirdcError> {
        let program = self.program.display().to_string();
        let mut child = Command::new(self.program)
            .arg("-s")
            .arg(self.socket)
            .args(command.split(' '))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BirdcError::Spawn {
                program: program.clone(),
                source,
            })?;
        let deadline = Instant::now() + TIMEOUT;
        // birdc's replies are a few lines: they fit the pipes, so waiting first is safe.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BirdcError::Timeout { program });
                }
            }
        };
        let mut out = String::new();
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let _ = { pipe }.read_to_string(&mut out);
        }
        if !status.success() && !out.contains("BIRD") {
            return Err(BirdcError::Refused(reply_text(&out)));
        }
        Ok(out)
    }
}

/// The reply without birdc's greeting, on one line.
fn reply_text(reply: &str) -> String {
    reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !(l.starts_with("BIRD ") && l.ends_with(" ready.")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The BGP rows of `show protocols`: the state is the first word of the info column
/// (BIRD's BGP state, e.g. `Established`), the rest is `info`.
fn parse_protocols(reply: &str) -> Vec<BgpSession> {
    let mut lines = reply.lines().skip_while(|l| !l.starts_with("Name "));
    let Some(info_at) = lines.next().and_then(|header| header.find("Info")) else {
        return Vec::new();
    };
    lines
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .map(|l| {
            let info = l.get(info_at..).unwrap_or("").trim();
            let (state, rest) = info.split_once(char::is_whitespace).unwrap_or((info, ""));
            BgpSession {
                name: l.split_whitespace().next().unwrap_or("").to_owned(),
                state: state.to_owned(),
                info: rest.trim().to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_protocols_gives_bgp_sessions_with_their_state() {
        let reply = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     15:02:28.474  \n\
            keystone4  Static     master4    up     15:02:28.474  \n\
            peer1      BGP        ---        start  15:02:28.474  Active        Socket: Connection refused\n\
            router     BGP        ---        up     15:02:29.001  Established   \n";
        assert_eq!(
            parse_protocols(reply),
            [
                BgpSession {
                    name: "peer1".into(),
                    state: "Active".into(),
                    info: "Socket: Connection refused".into()
                },
                BgpSession {
                    name: "router".into(),
                    state: "Established".into(),
                    info: String::new()
                }
            ]
        );
    }

    #[test]
    fn a_refused_reply_is_kept_without_the_greeting() {
        let reply = "BIRD 2.0.12 ready.\nReading configuration from bird.conf\n\
            /tmp/r.conf:1:29 syntax error, unexpected CF_SYM_UNDEFINED\n";
        assert_eq!(
            reply_text(reply),
            "Reading configuration from bird.conf; /tmp/r.conf:1:29 syntax error, unexpected CF_SYM_UNDEFINED"
        );
    }
}
