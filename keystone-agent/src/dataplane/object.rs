//! The XDP objects built by `build.rs` (keystone-ebpf for bpfel-unknown-none, via aya-build).

/// The eBPF ELF object, 8-byte aligned as aya needs. Empty when the agent was built
/// with `AYA_BUILD_SKIP=1`.
#[cfg(not(keystone_no_ebpf))]
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keystone-ebpf"));

/// The eBPF ELF object: none in this build (`AYA_BUILD_SKIP=1`).
#[cfg(keystone_no_ebpf)]
pub static EBPF_OBJECT: &[u8] = &[];

/// The floor programs for `cargo xtask bench packet` (`floor_pass`, `floor_tx`), in
/// an object of their own so the agent never loads them. Empty with `AYA_BUILD_SKIP=1`.
#[cfg(not(keystone_no_ebpf))]
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keystone-floor"));

/// The floor programs: none in this build (`AYA_BUILD_SKIP=1`).
#[cfg(keystone_no_ebpf)]
pub static FLOOR_OBJECT: &[u8] = &[];

/// The program's A/B variants for `cargo xtask bench packet` (keystone-ebpf's `ab`
/// feature: `ab_*` programs), an object the agent never loads. Empty with
/// `AYA_BUILD_SKIP=1`.
#[cfg(not(keystone_no_ebpf))]
pub static AB_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ab/keystone-ebpf"));

/// The A/B variants: none in this build (`AYA_BUILD_SKIP=1`).
#[cfg(keystone_no_ebpf)]
pub static AB_OBJECT: &[u8] = &[];

/// What `ebpf_object` says when the agent has no object.
pub const SKIPPED: &str = "built with AYA_BUILD_SKIP=1: no eBPF object";

/// The eBPF object, or `None` when the agent was built with `AYA_BUILD_SKIP=1`.
pub fn ebpf_object() -> Option<&'static [u8]> {
    (!EBPF_OBJECT.is_empty()).then_some(EBPF_OBJECT)
}

/// The floor programs' object, or `None` when built with `AYA_BUILD_SKIP=1`.
pub fn floor_object() -> Option<&'static [u8]> {
    (!FLOOR_OBJECT.is_empty()).then_some(FLOOR_OBJECT)
}

/// The A/B variants' object, or `None` when built with `AYA_BUILD_SKIP=1`.
pub fn ab_object() -> Option<&'static [u8]> {
    (!AB_OBJECT.is_empty()).then_some(AB_OBJECT)
}
