//! The child side: a bootstrap that runs before `main` in a re-executed binary.
//!
//! The hook sits in `.init_array`, so it runs when the dynamic loader initialises the
//! program, before `main` and therefore before any runtime the user's `main` would build.
//! In an ordinary run it returns after one `getenv`. In a function child it never
//! returns: it reads what to run from the control socket (the child's stdin at exec
//! time), runs it, reports the outcome and exits.

use std::io::Write;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::entry::Trampoline;
use super::identity;
use super::name::set_own_name;
use super::panic::{self, Panic, PanicOutput};
use super::protocol::{Activate, CHILD_ENV, Control, EXIT_FAILED, EXIT_PANICKED, Outcome, Start};
use crate::ipc::{ReadHalf, SocketFd, WriteHalf};
use crate::sys;

impl Control {
    fn report<R: Serialize>(&mut self, outcome: &Outcome<R>) {
        flush_stdio();
        if let Err(err) = self.write.encode(outcome) {
            let _ = self
                .write
                .encode(&Outcome::<()>::ResultUnencodable(err.to_string()));
        }
        let _ = self.write.flush_blocking();
    }
}

fn flush_stdio() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()`s that the loader calls once
// at start-up; this entry is exactly such a function and is sound to run at that time
// (it uses only std facilities that need no runtime set-up).
#[unsafe(link_section = ".init_array")]
pub(crate) static BOOTSTRAP_HOOK: extern "C" fn() = bootstrap;

extern "C" fn bootstrap() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let code = std::panic::catch_unwind(child_main).unwrap_or(EXIT_FAILED);
    flush_stdio();
    std::process::exit(code);
}

fn child_main() -> i32 {
    // SAFETY: this runs from `.init_array`, before `main`, while the process has a
    // single thread, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(CHILD_ENV) };
    sys::ignore_sigpipe();
    let Some(control) = take_control_socket() else {
        return EXIT_FAILED;
    };
    run_with_control(control, false)
}

/// Runs what the parent asks for over `control`: shared by re-executed children and
/// children forked by the fork server. With `ack`, the child says when it is set up
/// (see [`Outcome::Started`]).
fn run_with_control(mut control: Control, ack: bool) -> i32 {
    let start: Start = match control.read.recv_blocking(None) {
        Some(Ok(start)) => start,
        // The parent went away (or is not a parent of ours) before saying what to run.
        _ => return EXIT_FAILED,
    };
    if start.die_with_parent {
        if !die_with_parent(start.parent_pid) {
            return EXIT_FAILED;
        }
    } else if ack && sys::set_parent_death_signal(0).is_err() {
        // A parked child dies with its parent until told otherwise. (An exec'd child
        // keeps what its spawner armed: a remote agent arms it itself.)
        control.report(&Outcome::<()>::Refused(
            "cannot stop dying with the parent".into(),
        ));
        return EXIT_FAILED;
    }
    if start.own_group {
        // Before the function can start a process of its own, so none escapes the group.
        if let Err(err) =
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
        {
            control.report(&Outcome::<()>::Refused(format!(
                "cannot start a process group: {err}"
            )));
            return EXIT_FAILED;
        }
    }
    if let Some(limit) = start.memory_limit {
        if let Err(err) = sys::set_address_space_limit(limit) {
            control.report(&Outcome::<()>::Refused(format!(
                "cannot set the memory limit of {limit} bytes: {err}"
            )));
            return EXIT_FAILED;
        }
    }
    sys::set_thread_name(&start.name);
    set_own_name(&start.name);
    control.name = start.name;
    control.panic_output = start.panic_output;
    if start.identity != identity::current() {
        control.report(&Outcome::<()>::Refused(
            "the child is a different build of the program than its parent".into(),
        ));
        return EXIT_FAILED;
    }
    if ack {
        let _ = control.write.encode(&Outcome::<()>::Started);
        if control.write.flush_blocking().is_err() {
            return EXIT_FAILED;
        }
    }
    start.entry.call(control)
}

/// Moves the control socket off descriptor 0 (where the parent put it) and gives the
/// function a harmless stdin instead.
fn take_control_socket() -> Option<Control> {
    let fd = sys::dup_cloexec(std::io::stdin().as_fd(), 3).ok()?;
    sys::stdin_from_dev_null().ok()?;
    control_on(fd)
}

fn control_on(fd: std::os::fd::OwnedFd) -> Option<Control> {
    let socket = SocketFd::new(fd).ok()?;
    Some(Control {
        read: ReadHalf::new(socket.clone()),
        write: WriteHalf::new(socket.clone()),
        socket,
        name: String::new(),
        panic_output: PanicOutput::default(),
    })
}

/// The body of a child forked by the fork server: parked on `control` until a spawn
/// gives it work. It starts as a copy of the server, so it first sheds what was the
/// server's (descriptors, panic hook), and dies with the process it was forked for
/// (`parent`) until the spawn says otherwise. Never returns.
pub(crate) fn parked_child(control: std::os::fd::OwnedFd, parent: u32) -> ! {
    drop(std::panic::take_hook());
    let code = match sys::keep_only(control).ok().and_then(control_on) {
        Some(control) if die_with_parent(parent) => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| activated(control)))
                .unwrap_or(EXIT_FAILED)
        }
        _ => EXIT_FAILED,
    };
    flush_stdio();
    std::process::exit(code);
}

/// Waits for the spawn that takes this parked child, enters the directory it names and
/// runs what it asks for. A child let go without work (end of stream) just exits.
fn activated(mut control: Control) -> i32 {
    let cwd = match control.read.recv_blocking::<Activate>(None) {
        Some(Ok(Activate { cwd })) => cwd.0,
        Some(Err(_)) => return EXIT_FAILED,
        None => return 0,
    };
    let entered = sys::enter_directory(cwd.as_fd());
    drop(cwd);
    if let Err(err) = entered {
        refuse_before_start(
            &mut control,
            format!("cannot enter the working directory: {err}"),
        );
        return EXIT_FAILED;
    }
    run_with_control(control, true)
}

/// Reads the start message (so the parent's writer is not left blocked) and refuses it.
fn refuse_before_start(control: &mut Control, why: String) {
    let _ = control.read.recv_blocking::<Start>(None);
    control.report(&Outcome::<()>::Refused(why));
}

/// Arms `PR_SET_PDEATHSIG`, then checks the parent did not die before that took effect.
fn die_with_parent(parent_pid: u32) -> bool {
    sys::set_parent_death_signal(libc::SIGKILL).is_ok()
        && nix::unistd::getppid().as_raw() as u32 == parent_pid
}

/// The last panic of the function's thread.
static LAST_PANIC: Mutex<Option<Panic>> = Mutex::new(None);

/// Takes the last panic on the function's thread, for code that caught it (the
/// crate's pool workers catch a task's panic and report it).
pub(crate) fn take_last_panic() -> Option<Panic> {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Prints each panic as the parent asked and records those of the function's own
/// thread. With `panic = "unwind"` the report is sent once the panic has escaped the
/// function (a panic the function catches itself is no failure); with
/// `panic = "abort"` there is no later, so it is sent at once.
fn install_panic_reporter(control: &Control) {
    let socket = control.socket.clone();
    panic::install_hook(control.panic_output, control.name.clone(), move |panic| {
        if cfg!(panic = "abort") {
            let mut write = WriteHalf::new(socket.clone());
            flush_stdio();
            let _ = write.encode(&Outcome::<()>::Panicked(panic));
            let _ = write.flush_blocking();
        } else {
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(panic);
        }
    });
}

/// Receives the argument, runs `call` with panics reported, and reports the result.
fn run_reported<A: DeserializeOwned, R: Serialize>(
    control: &mut Control,
    call: impl FnOnce(A) -> R,
) -> i32 {
    let arg: A = match control.read.recv_blocking(None) {
        Some(Ok(arg)) => arg,
        Some(Err(err)) => {
            control.report(&Outcome::<()>::ArgumentUndecodable(err.to_string()));
            return EXIT_FAILED;
        }
        None => return EXIT_FAILED,
    };
    install_panic_reporter(control);
    let run = || panic::__rust_begin_short_backtrace(|| call(arg));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(value) => {
            control.report(&Outcome::Returned(value));
            0
        }
        Err(_) => {
            let panic = take_last_panic().unwrap_or_else(Panic::unrecorded);
            control.report(&Outcome::<()>::Panicked(panic));
            EXIT_PANICKED
        }
    }
}

/// The trampoline for a plain `fn(A) -> R`.
pub(crate) struct RunSync<A, R>(PhantomData<fn(A) -> R>);

impl<A: DeserializeOwned, R: Serialize> Trampoline for RunSync<A, R> {
    type Function = fn(A) -> R;
    type Input = Control;
    type Output = i32;

    fn address(function: fn(A) -> R) -> usize {
        function as usize
    }

    fn run(function: fn(A) -> R, mut control: Control) -> i32 {
        run_reported(&mut control, function)
    }
}

/// The trampoline for an async `fn(A) -> impl Future<Output = R>`, run on a
/// current-thread runtime of the child's own.
pub(crate) struct RunAsync<A, F, R>(PhantomData<fn(A) -> (F, R)>);

impl<A, F, R> Trampoline for RunAsync<A, F, R>
where
    A: DeserializeOwned,
    F: Future<Output = R>,
    R: Serialize,
{
    type Function = fn(A) -> F;
    type Input = Control;
    type Output = i32;

    fn address(function: fn(A) -> F) -> usize {
        function as usize
    }

    fn run(function: fn(A) -> F, mut control: Control) -> i32 {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                control.report(&Outcome::<()>::Refused(format!(
                    "cannot start a runtime: {err}"
                )));
                return EXIT_FAILED;
            }
        };
        run_reported(&mut control, |arg| runtime.block_on(function(arg)))
    }
}
