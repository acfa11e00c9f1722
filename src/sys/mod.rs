//! Thin, safe wrappers over the Linux calls the crate needs, one module per subject.
//!
//! Every descriptor handed out is an [`OwnedFd`](std::os::fd::OwnedFd) with `FD_CLOEXEC` set.

mod child;
mod fd;
mod fork;
mod futex;
mod socket;
mod this_process;

pub(crate) use child::*;
pub(crate) use fd::*;
pub(crate) use fork::*;
pub(crate) use futex::*;
pub(crate) use socket::*;
pub(crate) use this_process::*;
