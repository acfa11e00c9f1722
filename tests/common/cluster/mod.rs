//! Real cluster engines as test fixtures: an `sshd` on loopback, a single-node Slurm
//! (with its `munged`), and a second "host" in a network namespace of its own reached
//! over a veth pair, so that remote launching is tested against the real programs.
//!
//! Every daemon is a child of the test process, spawned from a thread that lives as long
//! as the process with `PR_SET_PDEATHSIG`, and put in a cgroup of its own fixture: when
//! the fixture is dropped the whole cgroup is killed, so processes the daemons started
//! and that left their tree (an `sshd` session's detached command, a `slurmstepd`) go
//! too. Fixtures left behind by a test process that was killed are cleaned up by the
//! next one that starts a fixture.
//!
//! ```ignore
//! let sshd = common::cluster::Sshd::start();
//! let out = sshd.ssh().arg("echo hi").output().unwrap();
//! assert_eq!(out.stdout, b"hi\n");
//! ```
// Each test binary uses its own part of the fixtures.
#![allow(dead_code, unused_imports)]

mod daemon;
mod install;
mod netns;
mod run;
mod slurm;
mod sshd;

pub use daemon::is_fixture_daemon;
pub use install::ensure_installed;
pub use netns::{NetnsHost, Unavailable};
pub use run::{output_within, process_is_running};
pub use slurm::Slurm;
pub use sshd::Sshd;
