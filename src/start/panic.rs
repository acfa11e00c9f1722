//! A child's panics: how they are printed on its standard error, and the report that
//! travels to the parent inside [`Error::Panicked`](crate::Error::Panicked).
//!
//! std's default hook prints a full report (and, with `RUST_BACKTRACE=1`, a backtrace)
//! naming the thread, which in a child is `'<unnamed>'`: ours names the process and
//! prints as much as [`PanicOutput`] asks, while the parent gets the full report as a
//! value whatever is printed.

use std::backtrace::Backtrace;
use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, full_report, one_line};

/// What a child process prints on its standard error when it panics.
///
/// Whatever is printed, the parent gets the whole report as
/// [`Error::Panicked`](crate::Error::Panicked): message, location, the process's name
/// and pid, and a backtrace when `RUST_LIB_BACKTRACE` or `RUST_BACKTRACE` asks for one
/// (see [`Error::panic_report`](crate::Error::panic_report)). Python prints a child's
/// traceback once, under the process's name; `Tidy` is the one-line equivalent.
///
/// ```
/// use multiprocess::{PanicOutput, Process};
///
/// fn fail(_: ()) {
///     panic!("out of cheese");
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let err = Process::builder()
///     .panic_output(PanicOutput::Silent)
///     .spawn(fail, ())?
///     .join()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, multiprocess::Error::Panicked { ref message, .. } if message == "out of cheese"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PanicOutput {
    /// One line per panic: `process 'NAME' (pid N) panicked at FILE:LINE:COL: MESSAGE`
    /// (line breaks in the message shown as `\n`). The default.
    #[default]
    Tidy,
    /// std's full report (with a backtrace as `RUST_BACKTRACE` asks), naming the
    /// process where std would name the thread.
    Full,
    /// Nothing: the caller reports the error it gets.
    Silent,
}

/// A panic as the child reports it to the parent.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) process: String,
    pub(crate) pid: u32,
    pub(crate) backtrace: Option<String>,
}

impl From<Panic> for Error {
    fn from(panic: Panic) -> Error {
        let Panic {
            message,
            location,
            process,
            pid,
            backtrace,
        } = panic;
        Error::Panicked {
            message,
            location,
            process,
            pid,
            backtrace,
        }
    }
}

impl Panic {
    /// A panic of this process, with what the hook did not get to record.
    pub(crate) fn unrecorded() -> Panic {
        Panic {
            message: "panicked".into(),
            location: None,
            process: super::name::own_name().unwrap_or_else(|| "MainProcess".into()),
            pid: std::process::id(),
            backtrace: None,
        }
    }
}

/// How much of a backtrace an environment variable asks for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Style {
    Off,
    Short,
    Full,
}

/// `RUST_BACKTRACE`'s reading, as std's panic hook does: unset or `0` is off, `full`
/// is full, anything else short.
fn style_of(var: &str) -> Option<Style> {
    std::env::var_os(var).map(|value| match value.to_str() {
        Some("0") => Style::Off,
        Some("full") => Style::Full,
        _ => Style::Short,
    })
}

/// What std's hook would print.
fn printed_style() -> Style {
    style_of("RUST_BACKTRACE").unwrap_or(Style::Off)
}

/// What `std::backtrace::Backtrace::capture` would capture: `RUST_LIB_BACKTRACE` first.
fn carried_style() -> Style {
    style_of("RUST_LIB_BACKTRACE")
        .or_else(|| style_of("RUST_BACKTRACE"))
        .unwrap_or(Style::Off)
}

/// Runs `f`; the frames below this one are left out of short backtraces, as std leaves
/// out those below its own marker of the same name.
#[inline(never)]
pub(crate) fn __rust_begin_short_backtrace<T>(f: impl FnOnce() -> T) -> T {
    let value = f();
    // Keeps this frame from becoming a tail call, so it is on the stack to be found.
    std::hint::black_box(());
    value
}

/// A captured backtrace as text: `stack backtrace:`, the frames, std's closing note.
/// Short keeps the frames between the panic machinery and the function the child was
/// asked to run, as std keeps those between its markers.
fn render(backtrace: &Backtrace, style: Style) -> String {
    let frames = match style {
        Style::Full => format!("{backtrace:#}"),
        _ => trim_frames(&format!("{backtrace}")),
    };
    let mut text = String::from("stack backtrace:\n");
    text.push_str(&frames);
    if !frames.ends_with('\n') {
        text.push('\n');
    }
    if style == Style::Short {
        text.push_str(
            "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
        );
    }
    text
}

/// Splits std's backtrace text into frames, each starting at its `N: symbol` line.
fn split_frames(text: &str) -> Vec<Vec<&str>> {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        let starts_frame = line
            .trim_start()
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !starts_frame => frame.push(line),
            _ => frames.push(vec![line]),
        }
    }
    frames
}

/// Drops the frames of the panic machinery (down to std's end marker) and those of the
/// child's bootstrap (from our begin marker), then numbers the rest from 0.
fn trim_frames(text: &str) -> String {
    let frames = split_frames(text);
    let symbol_has = |frame: &Vec<&str>, marker: &str| frame[0].contains(marker);
    let start = frames
        .iter()
        .rposition(|f| symbol_has(f, "__rust_end_short_backtrace"))
        .map_or(0, |i| i + 1);
    let end = frames
        .iter()
        .skip(start)
        .position(|f| symbol_has(f, "__rust_begin_short_backtrace"))
        .map_or(frames.len(), |i| start + i);
    let mut out = String::new();
    for (n, frame) in frames[start..end].iter().enumerate() {
        let symbol = frame[0]
            .trim_start()
            .split_once(": ")
            .map_or("", |(_, s)| s);
        out.push_str(&format!("{n:>4}: {symbol}\n"));
        for line in &frame[1..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The message of a panic payload, as std's hook finds it.
fn message_of(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_string())
}

/// Installs the child's panic hook. Every panic is printed as `output` says; a panic
/// of the thread that runs the child's function is also handed to `record`, with a
/// backtrace if the environment asks for one.
pub(crate) fn install_hook(
    output: PanicOutput,
    process: String,
    record: impl Fn(Panic) + Send + Sync + 'static,
) {
    let function_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        let on_function_thread = std::thread::current().id() == function_thread;
        let printed = match output {
            PanicOutput::Full => printed_style(),
            _ => Style::Off,
        };
        let carried = match on_function_thread {
            true => carried_style(),
            false => Style::Off,
        };
        let captured = (printed.max(carried) > Style::Off).then(Backtrace::force_capture);
        let backtrace = |style: Style| match (&captured, style) {
            (Some(captured), Style::Short | Style::Full) => Some(render(captured, style)),
            _ => None,
        };
        let panic = Panic {
            message: message_of(info),
            location: info.location().map(|l| l.to_string()),
            process: process.clone(),
            pid: std::process::id(),
            backtrace: backtrace(carried),
        };
        print(output, &panic, on_function_thread, backtrace(printed));
        if on_function_thread {
            record(panic);
        }
    }));
}

/// Prints `panic` on standard error in one write, so that lines of processes sharing
/// the stream do not interleave.
fn print(output: PanicOutput, panic: &Panic, on_function_thread: bool, backtrace: Option<String>) {
    static NOTED: AtomicBool = AtomicBool::new(false);
    let process = match on_function_thread {
        true => panic.process.clone(),
        false => format!(
            "{}', thread '{}",
            panic.process,
            std::thread::current().name().unwrap_or("<unnamed>")
        ),
    };
    let location = panic.location.as_deref();
    let text = match output {
        PanicOutput::Silent => return,
        PanicOutput::Tidy => one_line(&process, panic.pid, location, &panic.message) + "\n",
        PanicOutput::Full => {
            let mut text = full_report(
                &process,
                panic.pid,
                location,
                &panic.message,
                backtrace.as_deref(),
            );
            if backtrace.is_none() && !NOTED.swap(true, Ordering::Relaxed) {
                text.push_str(
                    "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
                );
            }
            text
        }
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_line_breaks() {
        let line = one_line("p", 7, Some("a.rs:1:2"), "left\nright\r");
        assert_eq!(
            line,
            "process 'p' (pid 7) panicked at a.rs:1:2: left\\nright\\r"
        );
    }

    #[test]
    fn short_backtraces_keep_the_frames_between_the_markers() {
        let text = "   0: std::backtrace::Backtrace::force_capture
             at /rustc/x/library/std/src/backtrace.rs:1:1
   1: std::panicking::panic_with_hook
   2: std::panicking::begin_panic_handler::__rust_end_short_backtrace
   3: core::panicking::panic_fmt
   4: app::work
             at ./src/main.rs:4:5
   5: multiprocess::panic::__rust_begin_short_backtrace
   6: multiprocess::start::child::bootstrap
";
        assert_eq!(
            trim_frames(text),
            "   0: core::panicking::panic_fmt
   1: app::work
             at ./src/main.rs:4:5
"
        );
    }

    #[test]
    fn backtraces_without_markers_are_kept_whole() {
        let text = "   0: a\n   1: b\n             at b.rs:1:1\n";
        assert_eq!(trim_frames(text), text);
    }
}
