//! `drain` and `undrain`: withdraw this gateway's VIPs from BGP and wait until new
//! connections stopped; announce them again.

use std::{io::Write, time::Duration};

use clap::Args;
use keystone_api::{AnnounceStatus, DrainRequest, DrainState, Status};

use crate::{
    client::{Client, Failure, body_of, fail, typed},
    exit,
    output::{Output, print},
};

#[derive(Args)]
pub struct DrainArgs {
    /// Give up waiting for new connections to stop after this long (default: the
    /// agent's `bgp.drain_timeout`); exit 12 then.
    #[arg(long, value_parser = crate::parse_duration)]
    pub timeout: Option<Duration>,
    /// Return once the routes are withdrawn, without waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// How often `drain` polls the status while it waits.
const POLL: Duration = Duration::from_millis(500);

pub fn drain(
    client: &Client,
    args: &DrainArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let request = DrainRequest {
        timeout_seconds: args.timeout.map(|t| t.as_secs_f64()),
    };
    let mut answer = client.post("/admin/drain", Some(&body_of(&request)))?;
    let mut announce: AnnounceStatus = typed(&answer)?;
    if !args.no_wait {
        while announce.drain == DrainState::Draining {
            std::thread::sleep(POLL);
            let status: Status = typed(&client.get("/status")?)?;
            announce = status.announce.ok_or_else(|| {
                fail(
                    exit::REFUSED,
                    "the agent stopped announcing (its `bgp:` block is gone)",
                )
            })?;
            answer = serde_json::to_value(&announce).expect("a status serialises");
        }
    }
    print(out, output, &answer, render)?;
    Ok(match announce.drain {
        DrainState::DrainTimeout => {
            return Err(fail(
                exit::TIMED_OUT,
                "drain_timeout: new connections still arrived when the timeout ran out \
                 (the routes stay withdrawn; `keystone-ctl undrain` announces them again)",
            ));
        }
        _ => exit::OK,
    })
}

pub fn undrain(client: &Client, output: Output, out: &mut dyn Write) -> Result<u8, Failure> {
    print(out, output, &client.post("/admin/undrain", None)?, render)?;
    Ok(exit::OK)
}

/// The drain state, then one line per VIP.
pub fn render(a: &AnnounceStatus) -> String {
    let mut text = format!("drain: {}\n", a.drain);
    text.push_str(&vips(a));
    text
}

/// `ADDRESS  ANNOUNCED  REASON` lines and the BGP sessions, for `drain` and `status`.
pub fn vips(a: &AnnounceStatus) -> String {
    let mut text = String::new();
    for v in &a.vips {
        let announced = if v.announced {
            "announced"
        } else {
            "withdrawn"
        };
        text.push_str(&format!("{:<40} {announced:<10} {}\n", v.address, v.reason));
    }
    for s in &a.sessions {
        text.push_str(&format!("bgp session {}: {} {}\n", s.name, s.state, s.info));
    }
    if let Some(c) = a.last_configure.as_ref().filter(|c| !c.ok) {
        let error = c.error.as_deref().unwrap_or("");
        text.push_str(&format!(
            "last birdc configure FAILED at {}: {error}\n",
            c.at
        ));
    }
    text
}
