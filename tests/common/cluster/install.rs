//! The engines' programs, installed from Debian's packages when missing, so that
//! `cargo test` on a fresh machine needs no preparation.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Each program the fixtures run, with the package that provides it.
const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/sbin/munged", "munge"),
    ("/usr/bin/munge", "munge"),
    ("/usr/sbin/slurmctld", "slurm-wlm"),
    ("/usr/sbin/slurmd", "slurm-wlm"),
    ("/usr/bin/srun", "slurm-wlm"),
];

/// Installs `openssh-server`, `slurm-wlm` and `munge` with `apt-get` unless all their
/// programs are present. Concurrent test binaries (and concurrent tests) take a file
/// lock, so one installs while the others wait and then find everything in place.
///
/// Panics with `apt-get`'s output if the installation fails.
pub fn ensure_installed() {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    if missing().is_empty() {
        return;
    }
    let _one_thread = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let lock_path = std::env::temp_dir().join("multiprocess-fixture-install.lock");
    let file = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", lock_path.display()));
    let packages = missing();
    if packages.is_empty() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the cluster fixtures need {packages:?} installed (or to run as root)");
    }
    eprintln!("installing {packages:?} for the cluster fixtures");
    let _no_services = NoServiceStarts::arm();
    apt_get(&["update", "-qq"]);
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages.iter().copied());
    apt_get(&install);
    let still = missing();
    assert!(
        still.is_empty(),
        "still missing after installing: {still:?}"
    );
}

/// Keeps the packages' installation scripts from starting system daemons (an sshd on
/// port 22, a munged, a slurmctld that would outlive the tests), with Debian's
/// `policy-rc.d` convention, unless the machine already has a policy of its own.
struct NoServiceStarts {
    created: bool,
}

const POLICY: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn arm() -> NoServiceStarts {
        use std::os::unix::fs::OpenOptionsExt;
        let created = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(POLICY)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"#!/bin/sh\nexit 101\n"))
            .is_ok();
        NoServiceStarts { created }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY);
        }
    }
}

/// The packages whose programs are missing, each once.
fn missing() -> Vec<&'static str> {
    let mut packages: Vec<&str> = PROGRAMS
        .iter()
        .filter(|(program, _)| !Path::new(program).exists())
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    packages
}

fn apt_get(args: &[&str]) {
    let mut command = Command::new("apt-get");
    command
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let out = super::run::output_within(&mut command, Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "apt-get {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
