//! Shared memory between processes: [`SharedMemory`], [`Value`], [`Array`].
//!
//! A region is a memfd mapped into each process that holds a handle. It has no name in
//! any file system, so nothing is left behind: the memory is freed when the last handle
//! in the last process is gone. Handles travel to children inside arguments and
//! messages, like connections.

mod value;

pub use value::{Array, AtomicInt, Value};

use std::ffi::CString;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ipc::PassFd;

/// One mapping of a memfd in this process.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory shared on purpose; every access goes through raw
// pointer copies or atomics, never through references that assume exclusivity.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and nothing uses the
        // mapping any more (this is the last reference).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A region of memory shared between processes (a memfd, mapped).
///
/// Reads and writes copy bytes in and out; several processes writing the same bytes
/// at once get no torn-value protection from this type (use a [`Value`] or [`Array`],
/// which lock, or atomics). The region is zeroed when created.
///
/// ```
/// use multiprocess::{SharedMemory, spawn_process};
///
/// fn fill(mem: SharedMemory) {
///     mem.write(0, b"written by the child");
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let mem = SharedMemory::new(64)?;
/// spawn_process(fill, mem.clone())?.join().await?;
/// let mut buf = [0u8; 20];
/// mem.read(0, &mut buf);
/// assert_eq!(&buf, b"written by the child");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    map: Arc<Mapping>,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("len", &self.map.len)
            .finish()
    }
}

impl SharedMemory {
    /// A new zeroed region of `len` bytes.
    ///
    /// ```
    /// let mem = multiprocess::SharedMemory::new(4096)?;
    /// assert_eq!(mem.len(), 4096);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(len: usize) -> Result<SharedMemory> {
        Self::named("multiprocess", len)
    }

    /// A new zeroed region whose name shows in `/proc/<pid>/fd` and `/proc/<pid>/maps`
    /// (as `memfd:name`), for debugging. Other processes get it by being handed the
    /// handle, not by name.
    ///
    /// ```
    /// let mem = multiprocess::SharedMemory::named("frame-buffer", 1 << 20)?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn named(name: &str, len: usize) -> Result<SharedMemory> {
        let name = CString::new(name.replace('\0', "")).expect("no NUL left");
        let fd =
            nix::sys::memfd::memfd_create(name.as_c_str(), nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(std::io::Error::from)?;
        nix::unistd::ftruncate(&fd, len.max(1) as i64).map_err(std::io::Error::from)?;
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<SharedMemory> {
        let size = NonZeroUsize::new(len.max(1)).expect("at least one byte");
        let actual = nix::sys::stat::fstat(&fd)
            .map_err(std::io::Error::from)?
            .st_size as usize;
        if actual < size.get() {
            return Err(Error::Protocol(format!(
                "shared memory of {actual} bytes is smaller than its announced {len}"
            )));
        }
        // SAFETY: a fresh shared mapping of a memfd we hold, at an address the kernel
        // picks; it does not alias any Rust object.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(SharedMemory {
            map: Arc::new(Mapping {
                ptr: ptr.cast(),
                len: size.get(),
                fd,
            }),
        })
    }

    /// The region's size in bytes.
    ///
    /// ```
    /// assert_eq!(multiprocess::SharedMemory::new(10)?.len(), 10);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Whether the region is empty (it never is: the smallest region has one byte).
    ///
    /// ```
    /// assert!(!multiprocess::SharedMemory::new(1)?.is_empty());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    fn check(&self, offset: usize, len: usize) {
        let end = offset.checked_add(len).expect("range overflows");
        assert!(
            end <= self.map.len,
            "range {offset}..{end} outside shared memory of {} bytes",
            self.map.len
        );
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`. Panics if out of range.
    ///
    /// ```
    /// let mem = multiprocess::SharedMemory::new(8)?;
    /// let mut buf = [1u8; 8];
    /// mem.read(0, &mut buf);
    /// assert_eq!(buf, [0; 8]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // SAFETY: in range (checked), and `buf` is our own memory, disjoint from the map.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Copies `data` into the region at `offset`. Panics if out of range.
    ///
    /// ```
    /// let mem = multiprocess::SharedMemory::new(8)?;
    /// mem.write(2, &[9, 9]);
    /// let mut buf = [0u8; 4];
    /// mem.read(1, &mut buf);
    /// assert_eq!(buf, [0, 9, 9, 0]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: in range (checked), and `data` is disjoint from the map.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.ptr.as_ptr().add(offset),
                data.len(),
            )
        }
    }

    /// A pointer to byte `offset`, for the crate's own atomics and copies.
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> *mut u8 {
        self.check(offset, len);
        // SAFETY: in range (checked).
        unsafe { self.map.ptr.as_ptr().add(offset) }
    }

    /// An atomic in the region. `offset` must be aligned for `A`.
    pub(crate) fn atomic<A>(&self, offset: usize) -> &A {
        let ptr = self.ptr_at(offset, std::mem::size_of::<A>());
        assert_eq!(
            ptr as usize % std::mem::align_of::<A>(),
            0,
            "misaligned atomic"
        );
        // SAFETY: in range and aligned (checked); atomics may be shared and mutated
        // through `&`, including by other processes; the mapping lives as long as `self`.
        unsafe { &*(ptr as *const A) }
    }
}

/// A fixed range of a region, checked once, whose atomics are then reached with no more
/// than a comparison against the range's length: a primitive reaches its words several
/// times in every operation, and a full check of the region each time costs more than
/// the atomic operation itself.
#[derive(Clone)]
pub(crate) struct Words {
    mem: SharedMemory,
    base: usize,
    len: usize,
}

impl Words {
    /// The `len` bytes of `mem` from `base`. Panics if out of range.
    pub(crate) fn new(mem: &SharedMemory, base: usize, len: usize) -> Words {
        mem.check(base, len);
        Words {
            mem: mem.clone(),
            base,
            len,
        }
    }

    /// The region the words are in.
    pub(crate) fn memory(&self) -> &SharedMemory {
        &self.mem
    }

    /// Where the words start in their region.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// The first byte of the words, valid for their length.
    pub(crate) fn start(&self) -> *mut u8 {
        // SAFETY: `base` is in range of the mapping (checked by `new`).
        unsafe { self.mem.map.ptr.as_ptr().add(self.base) }
    }

    /// The atomic at `offset` in the words. Panics if out of range or misaligned.
    #[inline]
    pub(crate) fn atomic<A>(&self, offset: usize) -> &A {
        let size = std::mem::size_of::<A>();
        assert!(
            offset <= self.len && size <= self.len - offset,
            "atomic at {offset} outside words of {} bytes",
            self.len
        );
        // The mapping is page-aligned: the address is aligned if its offset is.
        assert!(
            (self.base + offset) % std::mem::align_of::<A>() == 0,
            "misaligned atomic"
        );
        // SAFETY: in range and aligned (checked); atomics may be shared and mutated
        // through `&`, including by other processes; the mapping lives as long as `self`.
        unsafe { &*self.start().add(offset).cast::<A>() }
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fd = self.map.fd.try_clone().map_err(serde::ser::Error::custom)?;
        (PassFd(fd), self.map.len as u64).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (PassFd(fd), len) = <(PassFd, u64)>::deserialize(deserializer)?;
        SharedMemory::map(fd, len as usize).map_err(serde::de::Error::custom)
    }
}
