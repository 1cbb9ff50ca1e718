//! Waiting for a condition with a deadline (never a bare sleep standing in for readiness).

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::error::{LabError, Result};

/// What one look at a condition found.
pub enum Probe<T> {
    /// The condition holds; here is what it produced.
    Ready(T),
    /// Not yet; the observation is kept for the timeout message.
    NotYet(String),
}

/// Polls `probe` (every 10 ms at first, backing off to 200 ms) until it is ready,
/// it fails, or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Probe<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe()? {
            Probe::Ready(v) => return Ok(v),
            Probe::NotYet(last) => last,
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: timeout,
                last,
            });
        }
        thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
