//! vmdedup host agent library: everything the `vmdedup` binary is made of.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod region;
