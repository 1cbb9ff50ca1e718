//! Empty library target: lets keystone-agent list this crate as a build-dependency
//! (so cargo rebuilds the agent when it changes); the program itself is `main.rs`.
#![no_std]
