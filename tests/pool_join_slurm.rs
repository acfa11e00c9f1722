//! Workers that join a pool from a real single-node Slurm: one submitted with `sbatch`,
//! one started with `srun`, each running this test binary with the pool's address and
//! key file in its environment.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::Scratch;
use common::cluster::{Slurm, output_within};
use futures::TryStreamExt;
use multiprocess::ProcessPool;

const LONG: Duration = Duration::from_secs(120);
const KEY: &str = "a key for the Slurm workers";

/// The job the task runs in, and the process that runs it.
fn where_am_i(x: u64) -> (u64, Option<String>, u32) {
    (
        x * 3,
        std::env::var("SLURM_JOB_ID").ok(),
        std::process::id(),
    )
}

/// An `srun` step that ends (killed, then reaped) with the test at the latest.
struct Step(Child);

impl Drop for Step {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn queued_jobs(slurm: &Slurm, job: &str) -> String {
    let mut squeue = slurm.client("squeue");
    squeue.args(["-h", "-j", job]);
    output_within(&mut squeue, LONG)
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn workers_started_by_sbatch_and_srun_join_and_leave_with_the_pool() {
    let slurm = tokio::task::spawn_blocking(Slurm::start).await.unwrap();
    let scratch = Scratch::at(slurm.dir().join("pool-join"));
    let key_file = scratch.0.join("key");
    std::fs::write(&key_file, KEY).unwrap();

    let pool = ProcessPool::builder()
        .workers(0)
        .listen("127.0.0.1:0".parse::<multiprocess::Address>().unwrap(), KEY)
        .build()
        .await
        .unwrap();
    let address = pool.listen_address().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let env = [
        ("MULTIPROCESS_POOL_ADDRESS", address.as_str()),
        ("MULTIPROCESS_POOL_KEY_FILE", key_file.to_str().unwrap()),
    ];

    let mut sbatch = slurm.client("sbatch");
    sbatch
        .envs(env)
        .arg("--parsable")
        .arg(format!(
            "--output={}",
            scratch.0.join("batch.out").display()
        ))
        .arg(format!("--wrap={}", exe.display()));
    let out = output_within(&mut sbatch, LONG).unwrap();
    assert!(out.status.success(), "{out:?}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let job = job.split(';').next().unwrap().to_string();

    let mut srun = slurm.srun();
    srun.envs(env)
        .args(["-N1", "-n1"])
        .arg(&exe)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut step = Step(srun.spawn().unwrap());

    // Scheduling the batch job may take a while on a loaded machine.
    let deadline = tokio::time::Instant::now() + LONG;
    while pool.stats().workers < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not join: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results: Vec<(u64, Option<String>, u32)> =
        pool.map(where_am_i, 0..100).try_collect().await.unwrap();
    for (x, (tripled, slurm_job, _)) in results.iter().enumerate() {
        assert_eq!(*tripled, 3 * x as u64);
        assert!(slurm_job.is_some(), "task {x} ran outside Slurm");
    }
    assert!(results.iter().any(|r| r.1.as_deref() == Some(job.as_str())));

    pool.close().await;
    let status = tokio::task::spawn_blocking(move || {
        let status = step.0.wait();
        (status, step)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(
        status.success(),
        "the srun worker exits cleanly: {status:?}"
    );
    let gone = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + LONG;
        while std::time::Instant::now() < deadline {
            if queued_jobs(&slurm, &job).is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    })
    .await
    .unwrap();
    assert!(gone, "the sbatch job ended with the pool");
}
