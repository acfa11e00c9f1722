//! Work done once in the fork server before it forks any child, shared copy-on-write.

use std::sync::Mutex;

use super::entry::{CallPlain, Named};

/// The preloads registered so far, and how many times the list changed.
static PRELOADS: Mutex<(Vec<Preload>, u64)> = Mutex::new((Vec::new(), 0));

/// A preload function, named for the fork server.
pub(crate) type Preload = Named<(), ()>;

/// Registers `f` to run once in the fork server before it forks any child, as Python's
/// `set_forkserver_preload`: whatever `f` builds (a large table in a static, a parsed
/// model, a warmed allocator) every fork-server child starts with, shared copy-on-write
/// instead of built again in each child.
///
/// A global function rather than a builder option, because there is one fork server per
/// process, shared by every builder and pool. Register preloads early, before the first
/// spawn: registering one later makes the next fork-server spawn start a fresh server
/// that runs them all. Children started by [`StartMethod::Exec`](crate::StartMethod::Exec)
/// do not run preloads. If a preload panics, every fork-server spawn fails with
/// [`Error::Bootstrap`](crate::Error::Bootstrap) carrying its message, rather than
/// children starting without the work done.
///
/// `f` must be a function of this program (not of a dynamic library): it is named to
/// the fork server by its address in the executable, like a child's function. Returns
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise.
///
/// ```
/// use std::sync::OnceLock;
///
/// static SQUARES: OnceLock<Vec<u64>> = OnceLock::new();
///
/// fn build_squares() {
///     SQUARES.get_or_init(|| (0..1_000).map(|i| i * i).collect());
/// }
///
/// fn square(i: usize) -> u64 {
///     // Built in the fork server, or here if this child was started otherwise.
///     SQUARES.get_or_init(|| (0..1_000).map(|i| i * i).collect())[i]
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// multiprocess::preload(build_squares)?;
/// assert_eq!(multiprocess::spawn_process(square, 12)?.await?, 144);
/// # Ok(())
/// # }
/// ```
pub fn preload(f: fn()) -> crate::error::Result<()> {
    let named = Named::new::<CallPlain>(f).map_err(|err| {
        crate::error::Error::InvalidArgument(format!("a preload function: {err}"))
    })?;
    let mut preloads = PRELOADS.lock().unwrap_or_else(|p| p.into_inner());
    preloads.0.push(named);
    preloads.1 += 1;
    Ok(())
}

/// The preloads registered so far, and a number that changes whenever they do.
pub(super) fn registered() -> (Vec<Preload>, u64) {
    PRELOADS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The number that changes whenever the registered preloads do.
pub(super) fn generation() -> u64 {
    PRELOADS.lock().unwrap_or_else(|p| p.into_inner()).1
}

/// Runs `preloads` in order; the first panic's message if one panics.
pub(super) fn run_all(preloads: Vec<Preload>) -> Result<(), String> {
    for preload in preloads {
        if let Err(payload) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| preload.call(())))
        {
            return Err(payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<dyn Any>".to_string()));
        }
    }
    Ok(())
}
