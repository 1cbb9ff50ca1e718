//! The whole desired state checked before anything is written.

use std::collections::{HashMap, HashSet};

use keystone_common::{
    Endpoint, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP, ReverseNat,
    limits::ring::MAX_RING_SIZE, maglev, mode,
};

use crate::dataplane::{ApplyError, Limits, VipSpec};

/// Checks the whole desired state before anything is written. Returns the reverse-NAT
/// entries it implies (backend endpoint → VIP, `nat` VIPs only).
pub(super) fn validate(
    specs: &[VipSpec],
    limits: &Limits,
) -> Result<HashMap<Endpoint, ReverseNat>, ApplyError> {
    if specs.len() > limits.max_vips as usize {
        return Err(ApplyError::TooManyVips {
            count: specs.len(),
            max: limits.max_vips,
        });
    }
    let needed = Limits::ring_entries_needed(specs.iter().map(|s| s.ring_size));
    if needed > u64::from(limits.ring_entries) {
        return Err(ApplyError::TooManyRingEntries {
            needed,
            max: limits.ring_entries,
        });
    }
    let mut seen = HashSet::new();
    let mut reverse: HashMap<Endpoint, ReverseNat> = HashMap::new();
    let mut total = 0usize;
    for spec in specs {
        let vip = || format!("{} ({})", spec.name, spec.vip.socket_addr());
        if !seen.insert(spec.vip) {
            return Err(ApplyError::DuplicateVip { vip: vip() });
        }
        if spec.ring_size > MAX_RING_SIZE || !maglev::is_prime(spec.ring_size) {
            return Err(ApplyError::BadRingSize {
                vip: vip(),
                size: spec.ring_size,
                max: MAX_RING_SIZE,
            });
        }
        if !matches!(spec.vip.family, FAMILY_IPV4 | FAMILY_IPV6)
            || !matches!(spec.vip.proto, PROTO_TCP | PROTO_UDP)
        {
            return Err(ApplyError::BadEndpoint {
                vip: vip(),
                endpoint: spec.vip.socket_addr().to_string(),
            });
        }
        if !matches!(spec.mode, mode::NAT | mode::DSR) {
            return Err(ApplyError::BadMode {
                vip: vip(),
                mode: spec.mode,
            });
        }
        let mut backends = HashSet::new();
        for b in &spec.backends {
            // Formatted only for an error: this runs over every backend on every apply.
            let backend = || b.endpoint.socket_addr().to_string();
            if !backends.insert(b.endpoint) {
                return Err(ApplyError::DuplicateBackend {
                    vip: vip(),
                    backend: backend(),
                });
            }
            if b.endpoint.family != spec.vip.family || b.endpoint.proto != spec.vip.proto {
                return Err(ApplyError::BackendMismatch {
                    vip: vip(),
                    backend: backend(),
                });
            }
            if spec.mode == mode::NAT {
                if let Some(other) = reverse.get(&b.endpoint) {
                    return Err(ApplyError::AmbiguousReverseNat {
                        backend: backend(),
                        first: other.vip.socket_addr().to_string(),
                        second: spec.vip.socket_addr().to_string(),
                    });
                }
                reverse.insert(
                    b.endpoint,
                    ReverseNat {
                        vip: spec.vip,
                        vip_index: 0,
                        backend_slot: 0,
                    },
                );
            }
        }
        total += spec.backends.len();
    }
    if total > limits.max_backends as usize {
        return Err(ApplyError::TooManyBackends {
            count: total,
            max: limits.max_backends,
        });
    }
    Ok(reverse)
}
