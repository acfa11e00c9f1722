//! A real `sshd` with throw-away keys, and what an `ssh` client needs to reach it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{Daemons, FixtureDir, Spawn, write_file};
use super::run::{checked, output_within};

/// How long a fixture may take to come up before the test fails.
pub(super) const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `/usr/sbin/sshd -D -e` that accepts the fixture's client key for `root`.
/// Dropping it kills the daemon and every session it started.
pub struct Sshd {
    host: Ipv4Addr,
    port: u16,
    identity: PathBuf,
    known_hosts: PathBuf,
    pid: u32,
    // Declared last: the daemons die before their directory goes.
    daemons: Daemons,
    dir: FixtureDir,
}

/// Where an `sshd` listens.
pub(super) enum Listen {
    /// 127.0.0.1 on a free port.
    Loopback,
    /// Port 22 on every address of a new network namespace of its own.
    OwnNamespace,
}

impl Sshd {
    /// Starts an `sshd` on 127.0.0.1 and returns once `ssh ... true` succeeds through it.
    pub fn start() -> Sshd {
        super::ensure_installed();
        let started = Instant::now();
        let mut last = String::new();
        // A port found free can be taken before sshd binds it: try again on another.
        for _ in 0..3 {
            let mut sshd = match Sshd::launch(Listen::Loopback) {
                Ok(sshd) => sshd,
                Err(e) => panic!("sshd: {e}"),
            };
            match sshd.wait_ready(Instant::now() + START_LIMIT) {
                Ok(()) => {
                    eprintln!(
                        "sshd on 127.0.0.1:{} ready in {:?}",
                        sshd.port,
                        started.elapsed()
                    );
                    return sshd;
                }
                Err(e) => last = e,
            }
        }
        panic!("sshd did not come up: {last}");
    }

    /// Starts the daemon (not waiting for it) with fresh keys in a fresh directory.
    pub(super) fn launch(listen: Listen) -> Result<Sshd, String> {
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let dir = FixtureDir::create("sshd");
        let (host, port, new_netns) = match listen {
            Listen::Loopback => (Ipv4Addr::LOCALHOST, free_port()?, false),
            // The address is known once the namespace has one: see `set_host`.
            Listen::OwnNamespace => (Ipv4Addr::UNSPECIFIED, 22, true),
        };
        let host_key = dir.join("host_key");
        let identity = dir.join("client_key");
        keygen(&host_key)?;
        keygen(&identity)?;
        let client_public = read(&identity.with_extension("pub"))?;
        write_file(&dir.join("authorized_keys"), &client_public)?;
        let config = dir.join("sshd_config");
        write_file(&config, &sshd_config(&dir, host, port))?;
        let mut command = Command::new("/usr/sbin/sshd");
        command.arg("-D").arg("-e").arg("-f").arg(&config);
        let mut daemons = Daemons::new("sshd");
        let pid = daemons.spawn(Spawn {
            name: "sshd",
            command,
            log: dir.join("sshd.log"),
            new_netns,
        })?;
        let mut sshd = Sshd {
            host,
            port,
            identity,
            known_hosts: dir.join("known_hosts"),
            pid,
            daemons,
            dir,
        };
        if !new_netns {
            sshd.set_host(host)?;
        }
        Ok(sshd)
    }

    /// Records the address clients use and trusts the host key under it.
    pub(super) fn set_host(&mut self, host: Ipv4Addr) -> Result<(), String> {
        self.host = host;
        let key = read(&self.dir.join("host_key.pub"))?;
        let name = if self.port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{}", self.port)
        };
        write_file(&self.known_hosts, &format!("{name} {key}"))
    }

    /// Waits until the port accepts connections and a command runs through ssh.
    pub(super) fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let address = SocketAddr::from((self.host, self.port));
        loop {
            self.daemons.check_alive()?;
            if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{address} never accepted; {}", self.daemons.logs()));
            }
            // Back off between attempts: a refused connect returns at once.
            std::thread::sleep(Duration::from_millis(10));
        }
        loop {
            let probe = output_within(self.ssh().arg("true"), Duration::from_secs(20))?;
            if probe.status.success() {
                return Ok(());
            }
            self.daemons.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "ssh true failed ({}): {}; {}",
                    probe.status,
                    String::from_utf8_lossy(&probe.stderr),
                    self.daemons.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address to connect to.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as (the tests run as root).
    pub fn user(&self) -> &'static str {
        "root"
    }

    /// `user@host`, the destination argument of `ssh`.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user(), self.host)
    }

    /// The client's private key, accepted by this daemon.
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// A known_hosts file that trusts exactly this daemon's host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The `-o KEY=VALUE` settings a client needs, as pairs (for a launcher that takes
    /// options one by one): this identity only, this known_hosts only and checked
    /// strictly, no prompts, a bounded connect.
    pub fn option_pairs(&self) -> Vec<(String, String)> {
        let dynamic = [
            ("IdentityFile", self.identity.display().to_string()),
            ("UserKnownHostsFile", self.known_hosts.display().to_string()),
        ];
        let fixed = [
            ("IdentitiesOnly", "yes"),
            ("GlobalKnownHostsFile", "/dev/null"),
            ("StrictHostKeyChecking", "yes"),
            ("BatchMode", "yes"),
            ("ConnectTimeout", "10"),
            ("LogLevel", "ERROR"),
        ];
        dynamic
            .into_iter()
            .chain(fixed.map(|(k, v)| (k, v.to_string())))
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// Arguments for `ssh` and `scp` alike: [`option_pairs`](Self::option_pairs) as
    /// `-o` options, and no user or system configuration file (`-F /dev/null`).
    pub fn options(&self) -> Vec<String> {
        let mut args = vec!["-F".to_string(), "/dev/null".to_string()];
        for (key, value) in self.option_pairs() {
            args.extend(["-o".to_string(), format!("{key}={value}")]);
        }
        args
    }

    /// Every argument of `ssh` before the remote command: options, port, destination.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = self.options();
        args.extend(["-p".to_string(), self.port.to_string(), self.destination()]);
        args
    }

    /// An `ssh` command to this daemon; add the remote command as arguments.
    pub fn ssh(&self) -> Command {
        let mut command = Command::new("ssh");
        command.args(self.ssh_args());
        command
    }

    /// The daemon's pid (a child of this process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The daemon and every process it started that is still alive.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.pids()
    }

    /// The fixture's directory (keys, configuration, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn sshd_config(dir: &FixtureDir, host: Ipv4Addr, port: u16) -> String {
    let d = dir.path().display();
    format!(
        "Port {port}
ListenAddress {host}
AddressFamily inet
HostKey {d}/host_key
PidFile none
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PermitRootLogin yes
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
# Tests connect many times at once: no unauthenticated-connection throttling.
MaxStartups 1000
MaxSessions 1000
Subsystem sftp internal-sftp
LogLevel INFO
"
    )
}

fn keygen(path: &Path) -> Result<(), String> {
    let mut command = Command::new("ssh-keygen");
    command
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "multiprocess-fixture",
            "-f",
        ])
        .arg(path);
    checked(&mut command, Duration::from_secs(30)).map(drop)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A port nothing listens on right now.
pub(super) fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
