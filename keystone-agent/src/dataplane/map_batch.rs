//! `BPF_MAP_UPDATE_BATCH` for `u32 → u32` arrays (aya 0.14 has no batch operations):
//! a table change writes all its changed ring entries in one syscall instead of one
//! `bpf_map_update_elem` each (754 of them for a weight step at 1,000 backends).
#![allow(unsafe_code)] // The one raw `bpf(2)` call; nothing else here is unsafe.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::{bpf_attr, bpf_attr__bindgen_ty_3, bpf_cmd};

/// Writes `values[i]` at index `keys[i]` of the array behind `map`, in order. The
/// kernel reports how many it wrote; a short count is continued from there. On an
/// error an unknown prefix may have been written.
pub fn update(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    while done < keys.len() {
        let rest = (keys.len() - done).min(u32::MAX as usize);
        // SAFETY: all-zero is a valid bpf_attr (integers only).
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch = bpf_attr__bindgen_ty_3 {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: rest as u32,
            map_fd: map.as_raw_fd() as u32,
            in_batch: 0,
            out_batch: 0,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr for BPF_MAP_UPDATE_BATCH; the kernel
        // reads `count` keys and values from the two slices, which outlive the call,
        // and writes only `attr.batch.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the field the kernel wrote back, an integer.
        let written = unsafe { attr.batch.count } as usize;
        if written == 0 {
            return Err(io::Error::other("BPF_MAP_UPDATE_BATCH wrote no entry"));
        }
        done += written;
    }
    Ok(())
}
