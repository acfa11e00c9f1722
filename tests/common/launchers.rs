//! Launchers that start children through the cluster fixtures.

use multiprocess::Launcher;

use super::cluster::{Slurm, Sshd};

/// `ssh` to the fixture's daemon, with the options that make it trust the throw-away keys.
pub fn ssh_to(sshd: &Sshd) -> Launcher {
    let mut launcher = Launcher::ssh(sshd.host().to_string())
        .port(sshd.port())
        .user(sshd.user());
    for (key, value) in sshd.option_pairs() {
        launcher = launcher.option(key, value);
    }
    launcher
}

/// `srun` on the fixture's Slurm, with its configuration in the environment.
pub fn srun_on(slurm: &Slurm) -> Launcher {
    let mut launcher = Launcher::srun(Vec::<String>::new());
    for (key, value) in slurm.env() {
        launcher = launcher.env(key, value);
    }
    launcher
}
