//! Work spread over hosts: one child per host given on the command line, started
//! through ssh (`cargo run --example cluster -- node1 node2`), or through Slurm's
//! `srun` (`-- --srun 4`), or, with no arguments, two children on this machine through
//! the `env` launcher, which goes through the very same agent and stream.
//!
//! Over ssh the program is copied to each host once (`ship_executable`), so the hosts
//! need no shared file system, only the same architecture and C library.

use multiprocess::{Launcher, Process};

/// Counts the primes below `limit`, and says where.
fn count_primes((from, to): (u64, u64)) -> (String, u64) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    (
        host.trim().to_string(),
        (from..to).filter(|n| is_prime(*n)).count() as u64,
    )
}

fn launchers() -> Vec<Launcher> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => vec![Launcher::command("env", Vec::<String>::new()); 2],
        [flag, n] if flag == "--srun" => {
            vec![Launcher::srun(Vec::<String>::new()); n.parse().unwrap_or(1)]
        }
        hosts => hosts
            .iter()
            .map(|host| Launcher::ssh(host).ship_executable(true))
            .collect(),
    }
}

#[tokio::main]
async fn main() -> multiprocess::Result<()> {
    let launchers = launchers();
    let limit = 2_000_000u64;
    let step = limit / launchers.len() as u64;
    let mut children = Vec::new();
    for (i, launcher) in launchers.into_iter().enumerate() {
        let range = (i as u64 * step, (i as u64 + 1) * step);
        let child = Process::builder()
            .name(format!("primes-{i}"))
            .launcher(launcher)
            .spawn(count_primes, range)?;
        children.push((range, child));
    }
    let mut total = 0;
    for ((from, to), child) in children {
        let (host, count) = child.await?;
        println!("{count:>7} primes in {from}..{to} on {host}");
        total += count;
    }
    println!("{total} primes below {limit}");
    Ok(())
}
