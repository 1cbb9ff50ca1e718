//! Raw stores and loads of header fields at packet addresses the parser has
//! bounds-checked: below `parse`, `hook` and `nat`, which all write headers.

/// A 16-bit field as stored (network order), e.g. a port.
#[inline(always)]
pub fn raw16_at(p: usize) -> u16 {
    // SAFETY: callers bounds-check `p..p + 2` against data_end first; 2-byte aligned.
    unsafe { core::ptr::read(p as *const u16) }
}

/// Stores a 16-bit field as is (network order).
#[inline(always)]
pub fn put16(p: usize, v: u16) {
    // SAFETY: callers bounds-check `p..p + 2` against data_end first; 2-byte aligned.
    unsafe { core::ptr::write(p as *mut u16, v) }
}

/// Stores a 32-bit field as is (the inverse of `parse::raw32_at`).
#[inline(always)]
pub fn put32(p: usize, v: u32) {
    let (a, b) = if cfg!(target_endian = "little") {
        (v, v >> 16)
    } else {
        (v >> 16, v)
    };
    put16(p, a as u16);
    put16(p + 2, b as u16);
}
