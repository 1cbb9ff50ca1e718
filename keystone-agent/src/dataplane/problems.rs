//! Data-plane problems read from the counters: traffic that fails although the agent
//! and its backends look healthy. Shown in `status` and logged.

use keystone_common::Event;
use serde::Serialize;

use super::Counters;

/// One problem, for `status` (`problems`) and the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataplaneProblem {
    /// Stable name, for scripts: `partial_checksums`.
    pub kind: &'static str,
    /// What is wrong and what to do, for people.
    pub message: String,
}

/// The problems `now` shows against the earlier sample `before` (all counts since the
/// program was loaded when there is none).
pub fn problems(now: &Counters, before: Option<&Counters>) -> Vec<DataplaneProblem> {
    let delta = |e: Event| {
        now.events[e as usize].saturating_sub(before.map_or(0, |b| b.events[e as usize]))
    };
    let mut found = Vec::new();
    let partial = delta(Event::SynChecksumPartial);
    if partial > 0 {
        found.push(DataplaneProblem {
            kind: "partial_checksums",
            message: format!(
                "{partial} TCP SYN(s) to VIPs arrived with a partial checksum: a sender on \
                 this host leaves checksums to its veth's transmit offload, which XDP cannot \
                 complete, so its connections fail. Turn the offload off on every sending \
                 veth (`ethtool -K <dev> tx off`, in the container or namespace that sends); \
                 see the README's \"Checksum offload\""
            ),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_partial(n: u64) -> Counters {
        let mut c = Counters::default();
        c.events[Event::SynChecksumPartial as usize] = n;
        c
    }

    #[test]
    fn partial_checksums_are_a_problem_only_while_they_rise() {
        assert!(problems(&with_partial(0), None).is_empty());
        let found = problems(&with_partial(3), None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, "partial_checksums");
        assert!(found[0].message.starts_with("3 TCP SYN(s)"));
        assert!(found[0].message.contains("tx off"));
        assert!(problems(&with_partial(3), Some(&with_partial(3))).is_empty());
        assert_eq!(problems(&with_partial(5), Some(&with_partial(3))).len(), 1);
    }
}
