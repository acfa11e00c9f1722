//! Preload: work done once in the fork server, there in every fork-server child.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use multiprocess::{Process, StartMethod};

/// The process that built the table, and the table.
static TABLE: OnceLock<(u32, Vec<u64>)> = OnceLock::new();

/// Where each run of the preload is recorded, one line per run: named after the process
/// that spawned the fork server, the test itself.
fn runs_file(spawner: u32) -> PathBuf {
    std::env::temp_dir().join(format!("mp-preload-runs-{spawner}"))
}

fn build_table() {
    TABLE.get_or_init(|| {
        use std::io::Write;
        let me = std::process::id();
        let spawner = nix::unistd::getppid().as_raw() as u32;
        let mut runs = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(runs_file(spawner))
            .unwrap();
        writeln!(runs, "{me}").unwrap();
        (me, (0..1000).map(|i| i * i).collect())
    });
}

fn who_built(_: ()) -> Option<(u32, usize)> {
    TABLE.get().map(|(pid, table)| (*pid, table.len()))
}

#[tokio::test]
async fn a_preload_runs_once_in_the_fork_server_and_every_child_sees_its_work() {
    let leaks = common::LeakCheck::start().await;
    let runs = runs_file(std::process::id());
    let _ = std::fs::remove_file(&runs);
    multiprocess::preload(build_table).unwrap();
    let mut builders = HashSet::new();
    for _ in 0..5 {
        let child = Process::builder()
            .start_method(StartMethod::Forkserver)
            .spawn(who_built, ())
            .unwrap();
        let pid = child.pid();
        let (builder, len) = child
            .await
            .unwrap()
            .expect("the table is built before the child's function runs");
        assert_eq!(len, 1000);
        assert_ne!(builder, pid, "built in the fork server, not in the child");
        builders.insert(builder);
    }
    assert_eq!(builders.len(), 1, "one server built it for every child");
    let recorded = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        recorded.lines().count(),
        1,
        "the preload ran once: {recorded}"
    );
    assert!(
        TABLE.get().is_none(),
        "a preload never runs in the spawning process"
    );
    let _ = std::fs::remove_file(&runs);
    leaks.finish_ignoring_forkserver().await;
}
