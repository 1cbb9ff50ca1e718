//! Types and logic shared by the Keystone XDP program and its user-space agent.
//!
//! Everything here is `no_std`: the kernel side uses it as is; user space turns on
//! `alloc` (Maglev table construction) and `user` (`aya::Pod` impls).
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod checksum;
pub mod flow;
pub mod hash;
pub mod limits;
#[cfg(feature = "alloc")]
pub mod maglev;
pub mod maps;

pub use hash::{FlowTuple, flow_hash};
pub use maps::*;
