//! vmdedup protocol: the shared-memory ABI between guest module and host agent.
//!
//! [`abi`] and [`pool`] depend on `core` only. The guest kernel module compiles the
//! very same files through Kbuild (`#[path = ...] mod abi;`), so they are the one
//! source of truth for the layout of every shared region. Each shared struct is
//! declared once with the macro in [`wire`], which also gives its offsets,
//! layout asserts and little-endian codec. [`spsc`] (also `core` only, also
//! compiled into the module) is the ring index protocol both sides run;
//! [`guest`] (likewise) is the guest end of the ring, which the module runs
//! over its BAR mapping and the host's tests over a shared mapping.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
#[cfg(feature = "control")]
pub mod control;
pub mod guest;
mod layout;
pub mod pool;
pub mod spsc;
pub mod wire;
