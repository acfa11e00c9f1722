//! A function of this program named across processes.
//!
//! A child is told what to run as two code addresses, each an offset from [`anchor`]: a *trampoline*, instantiated for the function's argument and
//! result types, and the function itself. The sender checks that both lie in the
//! executable's own code; offsets only name the same functions in the very same build,
//! which every receiving process checks (its build identity against the sender's, see
//! `identity`) before
//! it calls anything named this way.
//!
//! Turning an address back into a callable function is the one `unsafe` step, in
//! [`resolve`], with its argument stated there once.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::EXE;

/// How a named function is called on the receiving side: the trampoline's behaviour,
/// for one function pointer type.
pub(crate) trait Trampoline {
    /// The function pointer type the trampoline calls, such as `fn(A) -> R`.
    type Function: Copy;
    /// What the receiving process hands the trampoline.
    type Input;
    /// What the trampoline gives back.
    type Output;
    /// The code address of `function`.
    fn address(function: Self::Function) -> usize;
    /// Calls `function` with `input`.
    fn run(function: Self::Function, input: Self::Input) -> Self::Output;
}

/// The trampoline for a plain `fn()`: a barrier's action, a fork-server preload.
pub(crate) struct CallPlain;

impl Trampoline for CallPlain {
    type Function = fn();
    type Input = ();
    type Output = ();

    fn address(function: fn()) -> usize {
        function as usize
    }

    fn run(function: fn(), (): ()) {
        function()
    }
}

/// A function of this program together with the trampoline that calls it, as it crosses
/// to another process of the same build: called there with an `I`, giving an `O`.
pub(crate) struct Named<I, O> {
    trampoline: i64,
    function: i64,
    signature: PhantomData<fn(I) -> O>,
}

impl<I, O> Named<I, O> {
    /// Names `function`, to be called through trampoline `T`. Fails for a function
    /// outside the executable's own code (a dynamic library's), which no offset names.
    pub(crate) fn new<T>(function: T::Function) -> io::Result<Named<I, O>>
    where
        T: Trampoline<Input = I, Output = O>,
    {
        let trampoline = bounce::<T> as fn(usize, I) -> O as usize;
        let function = T::address(function);
        if !in_own_code(trampoline) || !in_own_code(function) {
            return Err(io::Error::other(
                "the function is not in the program's own executable (a dynamic library?)",
            ));
        }
        Ok(Named {
            trampoline: offset_of(trampoline),
            function: offset_of(function),
            signature: PhantomData,
        })
    }

    /// Calls the function with `input`, through its trampoline.
    pub(crate) fn call(self, input: I) -> O {
        // SAFETY: see `resolve`; `trampoline` is the `bounce::<T>` that `new` coerced to
        // `fn(usize, I) -> O`.
        let trampoline: fn(usize, I) -> O = unsafe { resolve(addr_of(self.trampoline)) };
        trampoline(addr_of(self.function), input)
    }
}

/// The trampoline proper: turns the function's address back into `T::Function`.
fn bounce<T: Trampoline>(function: usize, input: T::Input) -> T::Output {
    // SAFETY: see `resolve`; `new` paired this instantiation with a `T::Function`.
    let function: T::Function = unsafe { resolve(function) };
    T::run(function, input)
}

/// The function pointer of type `F` at code address `addr`.
///
/// # Safety
///
/// `addr` must come from a [`Named`] made by [`Named::new`] in a process running the
/// very same build as this one, and `F` must be the type `new` took that address from
/// (the trampoline's `fn(usize, I) -> O`, or the function's `T::Function` inside
/// `bounce::<T>`), the offset made relative to this process's anchor. A `Named` is only made by `new`, which records the trampoline and the
/// function together with their types; it travels only from a parent to its children
/// (or a pool to its workers), and every such process checks its build identity against
/// its parent's before it calls one (see `start::child`), so the address names the
/// same function of the same type here. Decoding also refuses addresses outside our code.
unsafe fn resolve<F: Copy>(addr: usize) -> F {
    assert_eq!(size_of::<F>(), size_of::<usize>(), "a function pointer");
    // SAFETY: the caller's guarantee above: `addr` is a function of type `F`.
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

/// The function every offset is measured from.
#[inline(never)]
extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as extern "C" fn() as usize
}

/// The offset of a code address from the anchor.
fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

/// The code address an offset names in this process.
fn addr_of(offset: i64) -> usize {
    anchor_addr().wrapping_add(offset as usize)
}

/// Whether `addr` lies in an executable mapping of this process's own binary.
fn in_own_code(addr: usize) -> bool {
    static RANGES: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    RANGES
        .get_or_init(|| own_code_ranges().unwrap_or_default())
        .iter()
        .any(|(start, end)| (*start..*end).contains(&addr))
}

fn own_code_ranges() -> io::Result<Vec<(usize, usize)>> {
    let inode = std::fs::metadata(EXE)?.ino();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let ranges = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let ino: u64 = fields.nth(2)?.parse().ok()?;
            if ino != inode || !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    Ok(ranges)
}

impl<I, O> Clone for Named<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for Named<I, O> {}

impl<I, O> fmt::Debug for Named<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Named")
            .field("trampoline", &self.trampoline)
            .field("function", &self.function)
            .finish()
    }
}

impl<I, O> Serialize for Named<I, O> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.trampoline, self.function).serialize(serializer)
    }
}

impl<'de, I, O> Deserialize<'de> for Named<I, O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (trampoline, function) = <(i64, i64)>::deserialize(deserializer)?;
        let outside = |offset| !in_own_code(addr_of(offset));
        if outside(trampoline) || outside(function) {
            return Err(serde::de::Error::custom(
                "a function outside this executable's code",
            ));
        }
        Ok(Named {
            trampoline,
            function,
            signature: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_is_in_own_code_and_heap_is_not() {
        assert!(in_own_code(anchor_addr()));
        let on_heap = Box::new(0u8);
        assert!(!in_own_code(&*on_heap as *const u8 as usize));
    }

    #[test]
    fn offsets_round_trip() {
        let f = anchor_is_in_own_code_and_heap_is_not as fn() as usize;
        assert_eq!(addr_of(offset_of(f)), f);
    }
}
