//! A new user's first program: a crate made from nothing but the README's dependency
//! block and its "In short" program, built with warnings denied and run.
//!
//! The crate is built in a directory of its own, outside this package, with its target
//! directory kept under this build's target directory so that later runs only rebuild
//! what changed. Crates come from the local registry cache when it has them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const README: &str = include_str!("../README.md");

/// The body of the first fenced block of `language` in the README section `heading`.
fn readme_block(heading: &str, language: &str) -> String {
    let section = README
        .split_once(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section \"{heading}\""))
        .1;
    let section = section.split("\n## ").next().unwrap();
    let body = section
        .split_once(&format!("```{language}\n"))
        .unwrap_or_else(|| panic!("README section \"{heading}\" has no {language} block"))
        .1;
    body.split_once("```")
        .expect("unterminated code block")
        .0
        .to_string()
}

/// The README's `[dependencies]` block, with `multiprocess` pointing at this checkout.
fn dependencies() -> String {
    let block = readme_block("Use it", "toml");
    assert!(block.starts_with("[dependencies]\n"), "{block}");
    let here = env!("CARGO_MANIFEST_DIR");
    let mut pointed = 0;
    let lines: Vec<String> = block
        .lines()
        .map(|line| {
            if line.starts_with("multiprocess =") {
                pointed += 1;
                format!("multiprocess = {{ path = {here:?} }}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(pointed, 1, "one multiprocess line expected in {block}");
    lines.join("\n") + "\n"
}

/// Writes the crate: a fixed package header, the README's dependencies, its program.
fn write_crate(dir: &Path) {
    let manifest = format!(
        "[package]\nname = \"first-program\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
         publish = false\n\n[workspace]\n\n{}",
        dependencies()
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), readme_block("In short", "rust")).unwrap();
    // Start from this package's resolution, so versions match what is already cached.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(lock, dir.join("Cargo.lock")).unwrap();
    }
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("RUSTFLAGS", "-D warnings")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("cargo runs")
}

/// Builds the crate, offline if the registry cache holds every crate it needs.
fn build(dir: &Path, target: &Path) -> PathBuf {
    let mut built = cargo(dir, target, &["build", "--offline"]);
    if !built.status.success() {
        built = cargo(dir, target, &["build"]);
    }
    assert!(
        built.status.success(),
        "the README's program does not build with warnings denied:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    target.join("debug/first-program")
}

/// Makes orphaned descendants of the program this process's children, so that a
/// process the program leaves behind is seen (and reaped) here.
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer and touches no memory.
    let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(done, 0, "prctl: {}", std::io::Error::last_os_error());
}

/// Waits for the children that were not there `before` to exit, reaping them; fails
/// naming those still alive after `limit`.
fn reap_leftovers(before: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<(u32, char)> = common::children()
            .into_iter()
            .filter(|(pid, _)| !before.contains(pid))
            .collect();
        for &(pid, state) in &left {
            if state == 'Z' {
                let mut status = 0;
                // SAFETY: waitpid on a pid that is our zombie child; status is a local.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            }
        }
        if left.is_empty() {
            return;
        }
        let alive: Vec<String> = left
            .iter()
            .filter(|(_, state)| *state != 'Z')
            .map(|(pid, _)| {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{pid} ({})", name.trim())
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "the program left processes behind: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_readme_program_builds_without_warnings_and_prints_its_results() {
    let leaks = common::LeakCheck::start_blocking();
    let dir =
        std::env::temp_dir().join(format!("multiprocess-first-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_crate(&dir);
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("first-program");
    let program = build(&dir, &target);
    std::fs::remove_dir_all(&dir).unwrap();

    become_subreaper();
    let before: Vec<u32> = common::children().into_iter().map(|(pid, _)| pid).collect();
    let ran = Command::new(&program).output().expect("the program starts");
    reap_leftovers(&before, Duration::from_secs(10));

    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the README's program failed ({}):\n{stdout}\n{}",
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("fib(35) = 9227465, computed in process "),
        "{stdout}"
    );
    assert_eq!(lines[1], "shouter answered HELLO");
    assert_eq!(lines[2], "sleep 60 timed out and was shut down");
    assert_eq!(
        lines[3],
        "pool: fib(30) = 832040, sum of fib(0..32) = 3524577"
    );
    leaks.finish_blocking();
}

#[test]
fn the_docs_front_page_shows_the_readme_dependencies() {
    let lib = include_str!("../src/lib.rs");
    let front_page: String = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_string() + "\n")
        .collect();
    let block = readme_block("Use it", "toml");
    assert!(
        front_page.contains(&format!("```toml\n{block}```")),
        "src/lib.rs's front page should show the README's dependency block:\n{block}"
    );
}
