//! Floor programs for `cargo xtask bench packet`: the least an XDP program can cost
//! (`floor_pass`) and the least a forwarding one can (`floor_tx`, MAC swap + `XDP_TX`).
//! Built beside the main program; nothing attaches them.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn floor_tx(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 12 > end {
        return XDP_ABORTED;
    }
    // SAFETY: data..data + 12 is inside the frame (checked above).
    unsafe {
        let dst = core::ptr::read_unaligned(data as *const [u8; 6]);
        let src = core::ptr::read_unaligned((data + 6) as *const [u8; 6]);
        core::ptr::write_unaligned(data as *mut [u8; 6], src);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], dst);
    }
    XDP_TX
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
