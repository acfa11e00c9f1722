//! [`Value`] and [`Array`]: typed plain-old-data in shared memory.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicIsize, AtomicU32, AtomicU64, AtomicUsize};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SharedMemory;
use crate::error::{Error, Result};
use crate::sync::Lock;

/// Integer types that also have lock-free atomic access in shared memory.
///
/// ```
/// use std::sync::atomic::Ordering;
/// let hits = multiprocess::Value::new(0u64)?;
/// hits.atomic().fetch_add(1, Ordering::SeqCst);
/// assert_eq!(hits.get(), 1);
/// # Ok::<(), multiprocess::Error>(())
/// ```
pub trait AtomicInt: Pod {
    /// The matching `std::sync::atomic` type.
    type Atomic;
}

macro_rules! atomic_int {
    ($($int:ty => $atomic:ty),*) => {
        $(impl AtomicInt for $int {
            type Atomic = $atomic;
        })*
    };
}

atomic_int!(u32 => AtomicU32, i32 => AtomicI32, u64 => AtomicU64, i64 => AtomicI64, usize => AtomicUsize, isize => AtomicIsize);

/// `n` values of `T` in shared memory, behind a cross-process lock; `Value` and
/// `Array` are views of it.
struct Cells<T> {
    mem: SharedMemory,
    lock: Lock,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T: Pod> Cells<T> {
    fn new(values: &[T]) -> Result<Cells<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mem = SharedMemory::named("multiprocess-value", bytes.len().max(8))?;
        mem.write(0, bytes);
        Ok(Cells {
            mem,
            lock: Lock::new()?,
            len: values.len(),
            _type: PhantomData,
        })
    }

    /// Runs `f` holding the lock. A holder that died mid-copy could only have left
    /// one value half-written, so the poison is ignored: the data is plain bytes.
    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let acquired = self.lock.acquire_blocking(true, None).is_ok();
        let result = f();
        if acquired {
            self.lock.unlock();
        }
        result
    }

    fn size() -> usize {
        std::mem::size_of::<T>()
    }

    fn get(&self, index: usize) -> T {
        assert!(
            index < self.len,
            "index {index} out of range for {} values",
            self.len
        );
        let mut value = T::zeroed();
        self.locked(|| {
            self.mem
                .read(index * Self::size(), bytemuck::bytes_of_mut(&mut value))
        });
        value
    }

    fn set(&self, index: usize, value: T) {
        assert!(
            index < self.len,
            "index {index} out of range for {} values",
            self.len
        );
        self.locked(|| {
            self.mem
                .write(index * Self::size(), bytemuck::bytes_of(&value))
        });
    }

    fn update<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            index < self.len,
            "index {index} out of range for {} values",
            self.len
        );
        self.locked(|| {
            let mut value = T::zeroed();
            self.mem
                .read(index * Self::size(), bytemuck::bytes_of_mut(&mut value));
            let result = f(&mut value);
            self.mem
                .write(index * Self::size(), bytemuck::bytes_of(&value));
            result
        })
    }

    fn to_vec(&self) -> Vec<T> {
        let mut values = vec![T::zeroed(); self.len];
        self.locked(|| self.mem.read(0, bytemuck::cast_slice_mut(&mut values)));
        values
    }

    fn atomic(&self, index: usize) -> &T::Atomic
    where
        T: AtomicInt,
    {
        assert!(
            index < self.len,
            "index {index} out of range for {} values",
            self.len
        );
        self.mem.atomic(index * Self::size())
    }
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            mem: self.mem.clone(),
            lock: self.lock.clone(),
            len: self.len,
            _type: PhantomData,
        }
    }
}

impl<T: Pod> Serialize for Cells<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.mem, &self.lock, self.len as u64).serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Cells<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (mem, lock, len) = <(SharedMemory, Lock, u64)>::deserialize(deserializer)?;
        let len = len as usize;
        let needed = len.checked_mul(std::mem::size_of::<T>());
        if needed.is_none_or(|n| n > mem.len()) {
            return Err(serde::de::Error::custom(Error::Protocol(format!(
                "shared region of {} bytes cannot hold {len} values of {} bytes",
                mem.len(),
                std::mem::size_of::<T>()
            ))));
        }
        Ok(Cells {
            mem,
            lock,
            len,
            _type: PhantomData,
        })
    }
}

/// One plain-old-data value shared by processes, like Python's `multiprocessing.Value`.
///
/// `get`, `set` and `update` hold a cross-process lock while they copy, so a value is
/// never seen half-written; integer types also offer lock-free [`atomic`](Value::atomic)
/// access. Use one style or the other for a given value.
///
/// ```
/// use multiprocess::{Value, spawn_process};
///
/// fn bump(v: Value<[f32; 2]>) {
///     v.update(|p| p[0] += 1.5);
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let point = Value::new([0.0f32, 2.0])?;
/// spawn_process(bump, point.clone())?.await?;
/// assert_eq!(point.get(), [1.5, 2.0]);
/// # Ok(())
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Pod")]
pub struct Value<T> {
    cells: Cells<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cells: self.cells.clone(),
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

impl<T: Pod> Value<T> {
    /// A new shared value.
    ///
    /// ```
    /// let v = multiprocess::Value::new(7i32)?;
    /// assert_eq!(v.get(), 7);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(value: T) -> Result<Value<T>> {
        Ok(Value {
            cells: Cells::new(std::slice::from_ref(&value))?,
        })
    }

    /// A copy of the value.
    ///
    /// See [`Value::new`] for an example.
    pub fn get(&self) -> T {
        self.cells.get(0)
    }

    /// Replaces the value.
    ///
    /// ```
    /// let v = multiprocess::Value::new(1u8)?;
    /// v.set(2);
    /// assert_eq!(v.get(), 2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn set(&self, value: T) {
        self.cells.set(0, value)
    }

    /// Reads, modifies and writes the value under the lock, as one step for every
    /// process.
    ///
    /// See [`Value`] for an example.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.cells.update(0, f)
    }
}

impl<T: AtomicInt> Value<T> {
    /// The value as an atomic, for lock-free access from every process.
    ///
    /// See [`AtomicInt`] for an example.
    pub fn atomic(&self) -> &T::Atomic {
        self.cells.atomic(0)
    }
}

/// A fixed-length array of plain-old-data values shared by processes, like Python's
/// `multiprocessing.Array`. Element access locks as [`Value`] does; integer elements
/// also offer atomics.
///
/// ```
/// use multiprocess::{Array, spawn_process};
///
/// fn square_all(a: Array<u32>) {
///     for i in 0..a.len() {
///         a.set(i, a.get(i) * a.get(i));
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let a = Array::from_slice(&[1u32, 2, 3])?;
/// spawn_process(square_all, a.clone())?.await?;
/// assert_eq!(a.to_vec(), [1, 4, 9]);
/// # Ok(())
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Pod")]
pub struct Array<T> {
    cells: Cells<T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            cells: self.cells.clone(),
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

impl<T: Pod> Array<T> {
    /// `len` zeroed elements.
    ///
    /// ```
    /// let a = multiprocess::Array::<f64>::zeroed(4)?;
    /// assert_eq!(a.to_vec(), [0.0; 4]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn zeroed(len: usize) -> Result<Array<T>> {
        Self::from_slice(&vec![T::zeroed(); len])
    }

    /// A copy of `values`, shared.
    ///
    /// See [`Array`] for an example.
    pub fn from_slice(values: &[T]) -> Result<Array<T>> {
        Ok(Array {
            cells: Cells::new(values)?,
        })
    }

    /// The number of elements.
    ///
    /// See [`Array`] for an example.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether there are no elements.
    ///
    /// ```
    /// assert!(multiprocess::Array::<u8>::zeroed(0)?.is_empty());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// A copy of element `index`. Panics if out of range.
    ///
    /// See [`Array`] for an example.
    pub fn get(&self, index: usize) -> T {
        self.cells.get(index)
    }

    /// Replaces element `index`. Panics if out of range.
    ///
    /// See [`Array`] for an example.
    pub fn set(&self, index: usize, value: T) {
        self.cells.set(index, value)
    }

    /// Reads, modifies and writes element `index` under the lock.
    ///
    /// ```
    /// let a = multiprocess::Array::from_slice(&[1i64, 2])?;
    /// a.update(1, |x| *x *= 10);
    /// assert_eq!(a.get(1), 20);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn update<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
        self.cells.update(index, f)
    }

    /// A copy of every element, taken under the lock (a consistent snapshot).
    ///
    /// See [`Array`] for an example.
    pub fn to_vec(&self) -> Vec<T> {
        self.cells.to_vec()
    }
}

impl<T: AtomicInt> Array<T> {
    /// Element `index` as an atomic. Panics if out of range.
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let counts = multiprocess::Array::<u32>::zeroed(3)?;
    /// counts.atomic(2).fetch_add(5, Ordering::Relaxed);
    /// assert_eq!(counts.to_vec(), [0, 0, 5]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn atomic(&self, index: usize) -> &T::Atomic {
        self.cells.atomic(index)
    }
}
