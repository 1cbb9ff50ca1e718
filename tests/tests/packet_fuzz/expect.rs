//! The classifier's verdicts, and how the program's output is compared with one.

use keystone_common::{Reason, checksum};
use keystone_lab::xdp::*;

/// A checksum field and what it covers, so "valid before ⇒ valid after" can be
/// checked on the output.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    pub field: usize,
    pub start: usize,
    pub end: usize,
    /// Pseudo-header: (offset of the source address, address length, protocol).
    pub pseudo: Option<(usize, usize, u8)>,
    /// UDP over IPv4: a 0 field means "no checksum" and must stay 0.
    pub zero_is_none: bool,
}

impl Check {
    pub fn valid(&self, f: &[u8]) -> bool {
        let pseudo = self.pseudo.map_or(0, |(at, alen, proto)| {
            let mut p = f[at..at + 2 * alen].to_vec();
            let len = self.end - self.start;
            if alen == 4 {
                p.extend([0, proto]);
                p.extend((len as u16).to_be_bytes());
            } else {
                p.extend((len as u32).to_be_bytes());
                p.extend([0, 0, 0, proto]);
            }
            checksum::sum(&p, 0)
        });
        checksum::folded(checksum::sum(&f[self.start..self.end], pseudo)) == 0xffff
    }
}

#[derive(Debug)]
pub enum Output {
    /// Byte-identical to the input.
    Same,
    /// Not looked at (dropped).
    Any,
    /// The input with new MACs and these bytes replaced; checksum fields must stay
    /// valid where they were.
    Rewrite {
        /// New (destination, source) MACs; None: unchanged.
        macs: Option<([u8; 6], [u8; 6])>,
        edits: Vec<(usize, Vec<u8>)>,
        checks: Vec<Check>,
    },
}

#[derive(Debug)]
pub struct Expected {
    pub action: u32,
    pub reason: Option<Reason>,
    /// Counts `Event::IcmpToBackend`.
    pub icmp_event: bool,
    pub output: Output,
}

pub fn pass(reason: Option<Reason>) -> Expected {
    Expected {
        action: XDP_PASS,
        reason,
        icmp_event: false,
        output: Output::Same,
    }
}

pub fn drop_(reason: Reason) -> Expected {
    Expected {
        action: XDP_DROP,
        reason: Some(reason),
        icmp_event: false,
        output: Output::Any,
    }
}

/// Compares the program's output with the expectation; `Err` says what differs.
pub fn check_output(input: &[u8], out: &[u8], want: &Output) -> Result<(), String> {
    match want {
        Output::Any => Ok(()),
        Output::Same => (out == input)
            .then_some(())
            .ok_or_else(|| "frame changed".into()),
        Output::Rewrite {
            macs,
            edits,
            checks,
        } => {
            if out.len() != input.len() {
                return Err(format!("length {} != {}", out.len(), input.len()));
            }
            let mut want = input.to_vec();
            if let Some((dst, src)) = macs {
                want[0..6].copy_from_slice(dst);
                want[6..12].copy_from_slice(src);
            }
            for (at, bytes) in edits {
                want[*at..at + bytes.len()].copy_from_slice(bytes);
            }
            for c in checks {
                if c.zero_is_none && input[c.field..c.field + 2] == [0, 0] {
                    continue;
                }
                if c.valid(input) && !c.valid(out) {
                    return Err(format!("checksum at {} no longer valid: {c:?}", c.field));
                }
                want[c.field..c.field + 2].copy_from_slice(&out[c.field..c.field + 2]);
            }
            (out == want.as_slice())
                .then_some(())
                .ok_or_else(|| format!("want\n{}", hex(&want)))
        }
    }
}
