//! [`Launcher`]: how a child is started on another host.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::agent::MARKER;
use super::proxy::NOT_SHIPPED;
use crate::error::{Error, Result};

/// How a child is started elsewhere: a command prefix that runs this same program on
/// another host (or in a container, or under a scheduler) with its standard input and
/// output attached. Give it to [`ProcessBuilder::launcher`](crate::ProcessBuilder::launcher).
///
/// The far side runs this program as a small *agent* (its bootstrap recognises the
/// agent's arguments before `main`), which starts the function child on its host the
/// usual way and relays its control stream over the launcher's stdio. Before any
/// function is named, the agent's build identity is compared with ours; a different
/// build is [`Error::BuildMismatch`]. Whatever the function prints on its standard
/// output goes to the agent's standard error, so it cannot corrupt the stream.
///
/// Both sides send a heartbeat every [`heartbeat`](Self::heartbeat) (5 seconds by
/// default); a side that hears nothing for four of those gives up: the agent kills the
/// child and exits, the handle's `join` gives [`Error::ConnectionLost`] naming the
/// host. A closed stream has the same effect at once, so a remote child never outlives
/// its connection, nor its handle (kill-on-drop) nor this process (with
/// [`die_with_parent`](crate::ProcessBuilder::die_with_parent), the default).
///
/// Signals: [`Process::terminate`](crate::Process::terminate) and
/// [`Process::signal`](crate::Process::signal) travel in-band to the agent, which
/// signals the child, with every launcher (ssh forwards no signals itself; Slurm does,
/// but the in-band request is what is used). [`Process::kill`](crate::Process::kill)
/// (and kill-on-drop) end the local end at once: the connection closes and the agent
/// kills the child with `SIGKILL` a moment later. Exit codes and deaths by signal are
/// the remote child's: `join` gives the same [`Error::Exited`], [`Error::Signaled`] or
/// [`Error::Panicked`] as for a local child.
///
/// [`Process::pid`](crate::Process::pid) is the pid of a small local process that stands
/// for the remote child (it holds the launcher, relays the stream, and ends the way the
/// remote child ended), so the handle, `active_children`, the pidfd and `AsFd` work as
/// for any child.
///
/// ```no_run
/// use multiprocess::{Launcher, Process};
///
/// fn hostname(_: ()) -> String {
///     std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let ssh = Launcher::ssh("node7").user("alice").ship_executable(true);
/// let mut child = Process::builder().launcher(ssh).spawn(hostname, ())?;
/// println!("ran on {}", child.join().await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launcher {
    kind: Kind,
    executable: Option<PathBuf>,
    ship: bool,
    heartbeat: Duration,
    connect_timeout: Duration,
    env: Vec<(OsString, OsString)>,
    misuse: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Kind {
    Command {
        program: OsString,
        args: Vec<OsString>,
    },
    Ssh {
        host: String,
        port: Option<u16>,
        user: Option<String>,
        identity_file: Option<PathBuf>,
        options: Vec<(String, String)>,
    },
    Srun {
        args: Vec<OsString>,
    },
}

impl Launcher {
    fn new(kind: Kind) -> Launcher {
        Launcher {
            kind,
            executable: None,
            ship: false,
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(60),
            env: Vec::new(),
            misuse: None,
        }
    }

    /// Any command prefix that runs a program elsewhere with its stdio attached:
    /// `kubectl exec -i POD --`, `docker exec -i CONTAINER`, or `env` to run it here.
    /// The program path and the agent's arguments are appended as separate arguments.
    ///
    /// ```
    /// let docker = multiprocess::Launcher::command("docker", ["exec", "-i", "worker-1"]);
    /// let here = multiprocess::Launcher::command("env", Vec::<String>::new());
    /// ```
    pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Launcher::new(Kind::Command {
            program: program.as_ref().to_owned(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        })
    }

    /// `ssh` to `host` (run with `-T`, no escape character, `BatchMode=yes` so it never
    /// waits for a password, and `ConnectTimeout` from
    /// [`connect_timeout`](Self::connect_timeout)). Keys come from the usual places or
    /// [`identity_file`](Self::identity_file). ssh forwards no signals: terminating
    /// goes in-band, and a closed connection ends the remote child.
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").port(2222).user("alice");
    /// ```
    pub fn ssh(host: impl Into<String>) -> Launcher {
        Launcher::new(Kind::Ssh {
            host: host.into(),
            port: None,
            user: None,
            identity_file: None,
            options: Vec::new(),
        })
    }

    /// Slurm's `srun`, one task, unbuffered, with `args` added (`--partition`,
    /// `--nodelist`, `--time`, ...). Inside an allocation it starts a job step there;
    /// outside one it asks for an allocation first (give
    /// [`connect_timeout`](Self::connect_timeout) room for the queue).
    ///
    /// ```
    /// let slurm = multiprocess::Launcher::srun(["--partition=cpu", "--time=10"]);
    /// ```
    pub fn srun<I, S>(args: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Launcher::new(Kind::Srun {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        })
    }

    fn ssh_setting(
        mut self,
        set: impl FnOnce(
            &mut Option<u16>,
            &mut Option<String>,
            &mut Option<PathBuf>,
            &mut Vec<(String, String)>,
        ),
        what: &str,
    ) -> Launcher {
        match &mut self.kind {
            Kind::Ssh {
                port,
                user,
                identity_file,
                options,
                ..
            } => set(port, user, identity_file, options),
            _ => self.misuse = Some(format!("`{what}` is a setting of ssh launchers only")),
        }
        self
    }

    /// The ssh port (ssh launchers only; on others, spawning fails with
    /// [`Error::InvalidArgument`]).
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").port(2222);
    /// ```
    pub fn port(self, port: u16) -> Launcher {
        self.ssh_setting(|p, _, _, _| *p = Some(port), "port")
    }

    /// The remote user name (ssh launchers only).
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").user("alice");
    /// ```
    pub fn user(self, user: impl Into<String>) -> Launcher {
        let user = user.into();
        self.ssh_setting(|_, u, _, _| *u = Some(user), "user")
    }

    /// The private key to log in with (ssh launchers only).
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").identity_file("/home/alice/.ssh/id_ed25519");
    /// ```
    pub fn identity_file(self, path: impl Into<PathBuf>) -> Launcher {
        let path = path.into();
        self.ssh_setting(|_, _, i, _| *i = Some(path), "identity_file")
    }

    /// An ssh option, as `-o key=value` (ssh launchers only).
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").option("StrictHostKeyChecking", "accept-new");
    /// ```
    pub fn option(self, key: impl Into<String>, value: impl Into<String>) -> Launcher {
        let option = (key.into(), value.into());
        self.ssh_setting(|_, _, _, o| o.push(option), "option")
    }

    /// The path of this program on the far side (default: the same path as here, as on
    /// a shared file system or an identical image).
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").executable("/opt/app/bin/app");
    /// ```
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Launcher {
        self.executable = Some(path.into());
        self
    }

    /// Copies this program to the far side when it is not there yet (default `false`):
    /// to `${XDG_CACHE_HOME:-$HOME/.cache}/multiprocess/ID/NAME` there, where `ID` is
    /// derived from its build identity. The far side's shell looks for the copy as it
    /// starts it, so a spawn costs one connection once the copy is there; the first
    /// spawn on a host takes three (the try, the copy, the run). The far side needs
    /// `sh`, `cat`, `mkdir`, `chmod` and `mv`; a copy that is another build (a
    /// tampered or colliding file) is refused like any other, as
    /// [`Error::BuildMismatch`].
    ///
    /// ```
    /// let ssh = multiprocess::Launcher::ssh("node7").ship_executable(true);
    /// ```
    pub fn ship_executable(mut self, ship: bool) -> Launcher {
        self.ship = ship;
        self
    }

    /// How often each side tells the other it is alive (default 5 seconds); four
    /// silent intervals end the connection. Values are kept between 10 ms and an hour.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ssh = multiprocess::Launcher::ssh("node7").heartbeat(Duration::from_secs(2));
    /// ```
    pub fn heartbeat(mut self, interval: Duration) -> Launcher {
        self.heartbeat = interval.clamp(Duration::from_millis(10), Duration::from_secs(3600));
        self
    }

    /// How long the far side may take to answer at all, shipping included (default 60
    /// seconds); then the spawn's `join` gives [`Error::ConnectionLost`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let slurm = multiprocess::Launcher::srun(["-p", "batch"]).connect_timeout(Duration::from_secs(600));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Launcher {
        self.connect_timeout = timeout;
        self
    }

    /// Sets an environment variable for the launcher program itself (`SLURM_CONF`,
    /// `KUBECONFIG`, ...), not for the remote child (see
    /// [`ProcessBuilder::env`](crate::ProcessBuilder::env) for that).
    ///
    /// ```
    /// let slurm = multiprocess::Launcher::srun(["-N1"]).env("SLURM_CONF", "/etc/slurm/test.conf");
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launcher {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub(super) fn launcher_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// What errors call the far side: the ssh host, `srun`, or the command prefix.
    ///
    /// ```
    /// assert_eq!(multiprocess::Launcher::ssh("node7").port(2222).host(), "node7:2222");
    /// ```
    pub fn host(&self) -> String {
        match &self.kind {
            Kind::Command { program, args } => std::iter::once(program)
                .chain(args)
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            Kind::Ssh {
                host, port, user, ..
            } => {
                let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{user}{host}{port}")
            }
            Kind::Srun { .. } => "srun".to_string(),
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        match &self.misuse {
            Some(why) => Err(Error::InvalidArgument(why.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    pub(super) fn connect_limit(&self) -> Duration {
        self.connect_timeout
    }

    pub(super) fn ships(&self) -> bool {
        self.ship
    }

    /// The words that run the agent on the far side.
    fn agent_words(&self, identity: &str) -> Result<Vec<OsString>> {
        if self.ship {
            let run = format!(
                "p=\"$d/{}\"; test -x \"$p\" || exit {NOT_SHIPPED}; exec \"$p\" {MARKER}",
                cached_name(self.local_exe()?)
            );
            return Ok(sh(format!("{}; {run}", cache_dir(identity))));
        }
        let exe = match &self.executable {
            Some(path) => path.clone(),
            None => self.local_exe()?,
        };
        Ok(vec![exe.into_os_string(), MARKER.into()])
    }

    /// The words that copy this program to the far side unless it is there.
    fn ship_words(&self, identity: &str) -> Result<Vec<OsString>> {
        let name = cached_name(self.local_exe()?);
        Ok(sh(format!(
            "{}; p=\"$d/{name}\"; test -x \"$p\" && exit 0; mkdir -p \"$d\" && \
             t=\"$p.tmp.$$\" && cat > \"$t\" && chmod 755 \"$t\" && mv -f \"$t\" \"$p\"",
            cache_dir(identity)
        )))
    }

    fn local_exe(&self) -> Result<PathBuf> {
        std::fs::read_link("/proc/self/exe").map_err(Error::Io)
    }

    /// The command that runs the agent there, as program and arguments.
    pub(super) fn agent_command(&self, identity: &str) -> Result<Vec<OsString>> {
        Ok(self.wrap(self.agent_words(identity)?))
    }

    /// The command that ships the executable there (it reads it on stdin).
    pub(super) fn ship_command(&self, identity: &str) -> Result<Vec<OsString>> {
        Ok(self.wrap(self.ship_words(identity)?))
    }

    fn wrap(&self, words: Vec<OsString>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        match &self.kind {
            Kind::Command { program, args } => {
                argv.push(program.clone());
                argv.extend(args.iter().cloned());
                argv.extend(words);
            }
            Kind::Ssh {
                host,
                port,
                user,
                identity_file,
                options,
            } => {
                let seconds = self.connect_timeout.as_secs().max(1);
                for word in ["ssh", "-T", "-e", "none", "-o", "BatchMode=yes", "-o"] {
                    argv.push(word.into());
                }
                argv.push(format!("ConnectTimeout={seconds}").into());
                if let Some(port) = port {
                    argv.extend(["-p".into(), port.to_string().into()]);
                }
                if let Some(user) = user {
                    argv.extend(["-l".into(), user.into()]);
                }
                if let Some(file) = identity_file {
                    argv.extend(["-i".into(), file.clone().into_os_string()]);
                }
                for (key, value) in options {
                    argv.extend(["-o".into(), format!("{key}={value}").into()]);
                }
                argv.extend([host.into(), "--".into()]);
                // ssh hands the remote shell one string.
                let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
                argv.push(quoted.join(" ").into());
            }
            Kind::Srun { args } => {
                for word in ["srun", "--unbuffered", "--ntasks=1", "--quiet"] {
                    argv.push(word.into());
                }
                argv.extend(args.iter().cloned());
                argv.extend(words);
            }
        }
        argv
    }
}

fn sh(script: String) -> Vec<OsString> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Sets `d` to the cache directory for a build.
fn cache_dir(identity: &str) -> String {
    format!("d=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/multiprocess/{identity}\"")
}

/// The executable's file name, reduced to characters that need no quoting.
fn cached_name(exe: PathBuf) -> String {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    match name.trim_start_matches('.').is_empty() {
        true => "program".into(),
        false => name,
    }
}

/// Quotes a word for a POSIX shell.
fn shell_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_quotes_the_remote_command_as_one_string() {
        let argv = Launcher::ssh("h")
            .port(22)
            .wrap(vec!["/a b/c".into(), "it's".into()]);
        assert_eq!(argv.last().unwrap(), "'/a b/c' 'it'\\''s'");
        assert!(argv.windows(2).any(|w| w[0] == "-p" && w[1] == "22"));
    }

    #[test]
    fn ssh_settings_on_other_launchers_are_refused() {
        assert!(Launcher::srun(["-N1"]).port(1).check().is_err());
        assert!(Launcher::ssh("h").port(1).check().is_ok());
    }

    #[test]
    fn cached_names_need_no_quoting() {
        assert_eq!(cached_name("/x/my prog;rm".into()), "myprogrm");
        assert_eq!(cached_name("/x/..".into()), "program");
    }
}
