//! vmdedup host agent library: everything the `vmdedup` binary is made of.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod control;
pub mod domain;
pub mod hostfile;
pub mod ivshmem;
pub mod metrics;
pub mod namespace;
pub mod pool;
pub mod preflight;
pub mod qemu;
pub mod region;
pub mod ring;
pub mod sd_notify;
pub mod service;
pub mod stats;
pub mod store;
