//! `Semaphore` and `BoundedSemaphore` across real processes: Python's counting,
//! permits passed between processes, holder death, timeouts.

mod common;

use multiprocess::{BoundedSemaphore, Semaphore};

#[test]
fn a_failed_try_acquire_gives_nothing_back() {
    let sem = Semaphore::new(0).unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    assert!(sem.try_acquire().unwrap().is_none());
}

#[test]
fn a_failed_try_acquire_keeps_the_permit_held() {
    let sem = Semaphore::new(1).unwrap();
    let held = sem.try_acquire().unwrap().expect("a free permit");
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    assert!(sem.try_acquire().unwrap().is_none());
    drop(held);
    assert_eq!(sem.available(), 1);
}

#[test]
fn a_failed_try_acquire_on_a_bounded_semaphore_keeps_the_permit_held() {
    let sem = BoundedSemaphore::new(1).unwrap();
    let held = sem.acquire_blocking().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    drop(held);
    assert_eq!(sem.available(), 1);
    assert!(sem.release().is_err(), "at its bound");
}
