//! Internet checksum arithmetic (RFC 1071 / RFC 1624 incremental update).
//!
//! Values are "raw": 16- or 32-bit words loaded from the packet with native byte
//! order (`from_ne_bytes`). Ones'-complement sums are byte-order independent, so the
//! result can be stored back the same way without swapping.

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
    let nold = !old;
    let sum = (!check) as u64
        + (nold & 0xffff) as u64
        + (nold >> 16) as u64
        + (new & 0xffff) as u64
        + (new >> 16) as u64;
    !fold(sum)
}

/// New checksum after a 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}

/// New checksum after an address (1 word for IPv4, 4 for IPv6) changed.
#[inline(always)]
pub fn replace_addr(mut check: u16, old: &[u32; 4], new: &[u32; 4], words: usize) -> u16 {
    check = replace32(check, old[0], new[0]);
    if words == 4 {
        check = replace32(check, old[1], new[1]);
        check = replace32(check, old[2], new[2]);
        check = replace32(check, old[3], new[3]);
    }
    check
}

/// The ones'-complement difference an address change (1 word for IPv4, 4 for IPv6)
/// makes to a sum: `~old + new`, folded. `replace_addr(check, ..)` equals
/// `!fold(!check + addr_diff(..))`; the kernel's checksum helpers take this form.
#[inline(always)]
pub fn addr_diff(old: &[u32; 4], new: &[u32; 4], words: usize) -> u16 {
    let mut sum = 0u64;
    for i in 0..4 {
        if i < words {
            let nold = !old[i];
            sum += (nold & 0xffff) as u64
                + (nold >> 16) as u64
                + (new[i] & 0xffff) as u64
                + (new[i] >> 16) as u64;
        }
    }
    fold(sum)
}

/// Ones'-complement sum of `data` (raw words) plus `initial`, not yet inverted.
/// For building and verifying whole checksums in user space and tests.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut s = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        s += u16::from_ne_bytes([*last, 0]) as u64;
    }
    s
}

/// The checksum to store for `data` (with its checksum field zeroed) plus `initial`
/// (e.g. a pseudo-header sum). A correct packet's checksum re-sums to zero.
pub fn finish(s: u64) -> u16 {
    !fold(s)
}

/// Folded sum, for verifying: a region with a valid checksum folds to 0xffff.
pub fn folded(s: u64) -> u16 {
    fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut data = [0u8; 20];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        data[10] = 0;
        data[11] = 0;
        let check = finish(sum(&data, 0));
        // Change bytes 12..16 (a "source address") and 2..4 (a "port").
        let old32 = u32::from_ne_bytes([data[12], data[13], data[14], data[15]]);
        let new32 = u32::from_ne_bytes([198, 18, 1, 7]);
        let old16 = u16::from_ne_bytes([data[2], data[3]]);
        let new16 = 8080u16.to_be();
        let inc = replace16(replace32(check, old32, new32), old16, new16);
        data[12..16].copy_from_slice(&new32.to_ne_bytes());
        data[2..4].copy_from_slice(&new16.to_ne_bytes());
        assert_eq!(inc, finish(sum(&data, 0)));
        data[10..12].copy_from_slice(&inc.to_ne_bytes());
        assert_eq!(folded(sum(&data, 0)), 0xffff);
    }

    #[test]
    fn addr_diff_is_the_difference_replace_addr_applies() {
        let old = [0x0a0b_0c0d, 0x1122_3344, 0xffff_0000, 0x0000_ffff];
        let new = [0xc612_010a, 0x2001_0db8, 0x0000_0001, 0xdead_beef];
        for words in [1, 4] {
            for check in [0x0000u16, 0x1234, 0xfffe, 0xffff] {
                let by_diff = !fold((!check) as u64 + addr_diff(&old, &new, words) as u64);
                assert_eq!(
                    folded(by_diff as u64),
                    folded(replace_addr(check, &old, &new, words) as u64),
                    "{words} words, check {check:#06x}"
                );
            }
        }
    }
}
