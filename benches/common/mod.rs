//! What the spawn benchmarks share: the floor (a raw `fork` + `waitpid`) and the
//! summary of a run's times.

use std::time::{Duration, Instant};

pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
}

pub fn stats(mut times: Vec<Duration>) -> Stats {
    times.sort();
    Stats {
        median: times[times.len() / 2],
        p99: times[(times.len() * 99 / 100).min(times.len() - 1)],
    }
}

pub fn raw_fork_times(runs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(0) };
        }
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        times.push(start.elapsed());
    }
    times
}
