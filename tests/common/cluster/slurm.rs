//! A real single-node Slurm: `munged`, `slurmctld` and `slurmd` with a generated
//! configuration, all in one throw-away directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{Daemons, FixtureDir, Spawn, write_file};
use super::run::output_within;
use super::sshd::{START_LIMIT, free_port};

/// CPUs the node claims, whatever the machine has (`SlurmdParameters=config_overrides`),
/// so that concurrent tests' steps run side by side instead of queueing.
const NODE_CPUS: u32 = 64;

/// A running single-node Slurm cluster. `srun` reaches it through `SLURM_CONF` (see
/// [`Slurm::env`]). Dropping it kills the daemons and every step they started.
pub struct Slurm {
    conf: PathBuf,
    daemons: Daemons,
    dir: FixtureDir,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd and returns once `srun -N1 true` succeeds.
    pub fn start() -> Slurm {
        super::ensure_installed();
        let started = Instant::now();
        let mut last = String::new();
        // Ports found free can be taken before the daemons bind them: try again.
        for _ in 0..3 {
            match Slurm::try_start(Instant::now() + START_LIMIT) {
                Ok(slurm) => {
                    eprintln!("slurm ready in {:?}", started.elapsed());
                    return slurm;
                }
                Err(e) => last = e,
            }
        }
        panic!("slurm did not come up: {last}");
    }

    fn try_start(deadline: Instant) -> Result<Slurm, String> {
        let dir = FixtureDir::create("slurm");
        let socket = dir.join("munge.socket");
        let key = dir.join("munge.key");
        write_munge_key(&key)?;
        let conf = dir.join("slurm.conf");
        write_file(
            &conf,
            &slurm_conf(&dir, &socket, free_port()?, free_port()?),
        )?;
        for sub in ["state", "spool"] {
            std::fs::create_dir(dir.join(sub)).map_err(|e| format!("{sub}: {e}"))?;
        }
        let mut slurm = Slurm {
            conf,
            daemons: Daemons::new("slurm"),
            dir,
        };
        slurm.start_munged(&socket, &key)?;
        slurm.wait_munged(&socket, deadline)?;
        slurm.start_slurm()?;
        slurm.wait_srun(deadline)?;
        Ok(slurm)
    }

    fn start_munged(&mut self, socket: &Path, key: &Path) -> Result<(), String> {
        let mut command = Command::new("/usr/sbin/munged");
        command
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("munged.pid").display()
            ))
            .arg(format!(
                "--seed-file={}",
                self.dir.join("munged.seed").display()
            ))
            .arg(format!(
                "--log-file={}",
                self.dir.join("munged.log").display()
            ));
        self.daemons.spawn(Spawn {
            name: "munged",
            command,
            log: self.dir.join("munged.out"),
            new_netns: false,
        })?;
        Ok(())
    }

    /// Waits until munged encodes a credential on its socket.
    fn wait_munged(&mut self, socket: &Path, deadline: Instant) -> Result<(), String> {
        loop {
            self.daemons.check_alive()?;
            let mut probe = Command::new("munge");
            probe.arg("--socket").arg(socket).arg("--no-input");
            if output_within(&mut probe, Duration::from_secs(10))?
                .status
                .success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("munged never answered; {}", self.daemons.logs()));
            }
            // Back off: until the socket exists, the probe fails at once.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_slurm(&mut self) -> Result<(), String> {
        let mut controller = Command::new("/usr/sbin/slurmctld");
        // -i: a fresh state directory has no state files to recover, which is fine.
        controller.args(["-D", "-i"]).env("SLURM_CONF", &self.conf);
        self.daemons.spawn(Spawn {
            name: "slurmctld",
            command: controller,
            log: self.dir.join("slurmctld.log"),
            new_netns: false,
        })?;
        let mut node = Command::new("/usr/sbin/slurmd");
        node.args(["-D", "-N", "localhost"])
            .env("SLURM_CONF", &self.conf);
        self.daemons.spawn(Spawn {
            name: "slurmd",
            command: node,
            log: self.dir.join("slurmd.log"),
            new_netns: false,
        })?;
        Ok(())
    }

    /// Waits until a job step runs: the controller is up and the node registered.
    fn wait_srun(&mut self, deadline: Instant) -> Result<(), String> {
        // A job submitted before the node registers waits for the scheduler's next
        // pass (seconds): submit only once the node shows idle.
        self.wait_node_idle(deadline)?;
        loop {
            self.daemons.check_alive()?;
            let mut probe = self.srun();
            probe.args(["-N1", "--immediate=10", "true"]);
            let out = output_within(&mut probe, Duration::from_secs(20))?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "srun -N1 true failed ({}): {}; {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.daemons.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_node_idle(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            self.daemons.check_alive()?;
            let mut probe = self.client("sinfo");
            probe.args(["--noheader", "--Node", "--format=%T"]);
            let state = output_within(&mut probe, Duration::from_secs(20))?;
            let state = String::from_utf8_lossy(&state.stdout);
            if state.trim() == "idle" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node is {state:?}, not idle; {}",
                    self.daemons.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The generated `slurm.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The environment a Slurm client needs to reach this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".to_string(), self.conf.display().to_string())]
    }

    /// An `srun` command for this cluster; add its arguments.
    pub fn srun(&self) -> Command {
        self.client("srun")
    }

    /// Any Slurm client (`salloc`, `sbatch`, `squeue`, `scancel`...) for this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.envs(self.env());
        command
    }

    /// The daemons and every process they started that is still alive (steps too).
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.pids()
    }

    /// The fixture's directory (configuration, state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write_munge_key(path: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 1024];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // munged refuses a key that others can read.
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &key))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn slurm_conf(dir: &FixtureDir, munge: &Path, controller_port: u16, node_port: u16) -> String {
    let d = dir.path().display();
    let munge = munge.display();
    format!(
        "ClusterName=multiprocess
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# A cancelled step is killed 1 s after its SIGTERM, not 30.
KillWait=1
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"
    )
}
