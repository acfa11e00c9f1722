//! A second "host": an `sshd` in a network namespace of its own, joined to ours by a
//! veth pair, so that TCP between the test and that host is real and not loopback.
//!
//! The namespace belongs to the `sshd` (started in it with `unshare(CLONE_NEWNET)`), so
//! it disappears, veth pair included, when the fixture's processes are gone: nothing to
//! clean up even after a test process was killed.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::run::checked;
use super::sshd::{Listen, START_LIMIT, Sshd};

/// Why the machine cannot give us a second network namespace (no `CAP_NET_ADMIN`, no
/// `ip`, no veth support).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no second network namespace on this machine: {}", self.0)
    }
}

/// An `sshd` on port 22 at [`address`](NetnsHost::address) in a namespace of its own,
/// reached from ours at [`local_address`](NetnsHost::local_address).
pub struct NetnsHost {
    local_address: Ipv4Addr,
    sshd: Sshd,
}

/// The /30 subnets the fixtures take their addresses from: 10.213.0.0/16.
const SUBNETS: u32 = 1 << 14;

impl NetnsHost {
    /// Starts the namespace and its `sshd`, and returns once `ssh ... true` succeeds.
    pub fn start() -> Result<NetnsHost, Unavailable> {
        super::ensure_installed();
        let started = Instant::now();
        let mut sshd = Sshd::launch(Listen::OwnNamespace).map_err(Unavailable)?;
        let (local_address, address) = link(sshd.pid()).map_err(Unavailable)?;
        sshd.set_host(address).map_err(Unavailable)?;
        if let Err(e) = sshd.wait_ready(Instant::now() + START_LIMIT) {
            panic!("sshd in its own network namespace did not come up: {e}");
        }
        eprintln!(
            "sshd in a network namespace at {address} ready in {:?}",
            started.elapsed()
        );
        Ok(NetnsHost {
            local_address,
            sshd,
        })
    }

    /// [`NetnsHost::start`], or `None` after saying loudly on stderr why `test` skips
    /// what needs it.
    pub fn start_or_skip(test: &str) -> Option<NetnsHost> {
        match NetnsHost::start() {
            Ok(host) => Some(host),
            Err(e) => {
                eprintln!("!!!!!!!! SKIPPED {test}: {e}");
                None
            }
        }
    }

    /// The host's address: where its `sshd` listens (port 22).
    pub fn address(&self) -> Ipv4Addr {
        self.sshd.host()
    }

    /// Our end of the link: the address the host sees our connections come from.
    pub fn local_address(&self) -> Ipv4Addr {
        self.local_address
    }

    /// The host's `sshd`, with what a client needs to reach it.
    pub fn sshd(&self) -> &Sshd {
        &self.sshd
    }

    /// The namespace, for `nsenter --net=PATH` to run something on the host directly.
    pub fn namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.sshd.pid()))
    }
}

/// Joins the namespace of `pid` to ours with a veth pair on a /30 no other fixture
/// uses; returns (our address, its address).
fn link(pid: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let lock_path = std::env::temp_dir().join("multiprocess-fixture-netns.lock");
    let file = std::fs::File::create(&lock_path).map_err(|e| format!("{lock_path:?}: {e}"))?;
    // Choosing a free subnet and taking it must be one step across test processes.
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{lock_path:?}: {e}"))?;
    let taken = checked(
        Command::new("ip").args(["-o", "-4", "addr", "show"]),
        Duration::from_secs(10),
    )?;
    let links = checked(
        Command::new("ip").args(["-o", "link", "show"]),
        Duration::from_secs(10),
    )?;
    let slot = (0..SUBNETS)
        .find(|&s| {
            let (ours, _) = addresses(s);
            !taken.contains(&format!(" {ours}/"))
                && !links.contains(&format!(": {}@", interface(s)))
        })
        .ok_or("every fixture subnet is in use")?;
    let (ours, theirs) = addresses(slot);
    let name = interface(slot);
    let ns = format!("/proc/{pid}/ns/net");
    ip(&[
        "link",
        "add",
        &name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pid.to_string(),
    ])?;
    ip(&["addr", "add", &format!("{ours}/30"), "dev", &name])?;
    ip(&["link", "set", &name, "up"])?;
    drop(lock);
    for args in [
        vec!["addr", "add", &format!("{theirs}/30"), "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={ns}")).arg("ip").args(args);
        checked(&mut command, Duration::from_secs(10))?;
    }
    Ok((ours, theirs))
}

fn ip(args: &[&str]) -> Result<(), String> {
    checked(Command::new("ip").args(args), Duration::from_secs(10)).map(drop)
}

fn interface(slot: u32) -> String {
    format!("mpfix{slot}")
}

fn addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}
