//! What one primitive costs this process: descriptors and memory mappings, counted
//! through `/proc/self` around creating one.

use multiprocess::{Barrier, Condition, Event, JoinableQueue, Lock, Queue, RLock, Semaphore};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Descriptors and mappings that creating (and holding) one `T` adds.
fn cost<T>(make: impl Fn() -> T) -> (usize, usize) {
    // A first one warms up whatever is made once per process.
    drop(make());
    let (fds_before, maps_before) = (fds(), maps());
    let made = make();
    let cost = (fds() - fds_before, maps() - maps_before);
    drop(made);
    assert_eq!(fds(), fds_before, "dropping it closes its descriptors");
    cost
}

/// One test, so that nothing else in this process opens or maps anything meanwhile.
#[test]
fn each_primitive_costs_few_descriptors_and_mappings() {
    let costs = [
        ("Lock", cost(|| Lock::new().unwrap())),
        ("RLock", cost(|| RLock::new().unwrap())),
        ("Semaphore", cost(|| Semaphore::new(1).unwrap())),
        ("Event", cost(|| Event::new().unwrap())),
        ("Condition", cost(|| Condition::new().unwrap())),
        ("Barrier", cost(|| Barrier::new(2).unwrap())),
        ("Queue", cost(|| Queue::<u8>::new(4).unwrap())),
        (
            "JoinableQueue",
            cost(|| JoinableQueue::<u8>::new(4).unwrap()),
        ),
    ];
    for (name, (fds, maps)) in costs {
        println!("{name}: {fds} descriptors, {maps} mappings");
    }
    let limits = [
        ("Lock", (2, 1)),
        ("RLock", (2, 1)),
        ("Semaphore", (2, 1)),
        ("Event", (2, 1)),
        ("Condition", (2, 1)),
        ("Barrier", (2, 1)),
        ("Queue", (4, 1)),
        ("JoinableQueue", (4, 1)),
    ];
    for ((name, cost), (_, limit)) in costs.iter().zip(limits) {
        assert!(
            cost.0 <= limit.0 && cost.1 <= limit.1,
            "{name} costs {} descriptors and {} mappings, more than {limit:?}",
            cost.0,
            cost.1
        );
    }
}
