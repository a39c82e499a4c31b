//! The hot path of a live member: `owns(p)`, `owned_partitions()`,
//! `partition_for(key)` and `view().owner_of(p)`, in ns/op, on 1 and 2
//! threads. Each figure is the median of repeated timed loops (the p99 over
//! the repetitions is in the table too).
//!
//! The member is alone on a 1024-partition ring, so it owns every
//! partition: `owns` always takes its full path (bit test *and* the lease
//! deadline check against the coarse monotonic clock).
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run.

mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use leasering::RingNode;
use leasering_testkit::TestPostgres;
use support::*;

const RING: u32 = 1024;

/// Times `iters` calls of `f` (given the loop index); ns per call.
#[inline(never)]
fn time_loop<R>(iters: u32, f: &mut impl FnMut(u32) -> R) -> f64 {
    let t = Instant::now();
    for i in 0..iters {
        black_box(f(black_box(i)));
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Repeats `time_loop` `reps` times (after one warm-up loop).
fn measure<R>(iters: u32, reps: usize, mut f: impl FnMut(u32) -> R) -> Stats {
    time_loop(iters / 4, &mut f);
    let v: Vec<f64> = (0..reps).map(|_| time_loop(iters, &mut f)).collect();
    stats(&v)
}

/// The same, on `threads` threads at once (each rep: all threads start
/// together; the rep's figure is the mean of the threads' ns/op).
fn measure_threads<R>(
    threads: usize,
    iters: u32,
    reps: usize,
    f: impl Fn(u32) -> R + Sync,
) -> Stats {
    let barrier = Barrier::new(threads);
    let per_thread: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut g = |i: u32| f(i);
                    time_loop(iters / 4, &mut g);
                    (0..reps)
                        .map(|_| {
                            barrier.wait();
                            time_loop(iters, &mut g)
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let v: Vec<f64> = (0..reps)
        .map(|r| per_thread.iter().map(|t| t[r]).sum::<f64>() / threads as f64)
        .collect();
    stats(&v)
}

fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    print_machine("hot_path");
    let (iters, reps) = if quick() {
        (1_000_000, 11)
    } else {
        (
            env_usize("LEASERING_BENCH_ITERS", 1_000_000) as u32,
            env_usize("LEASERING_BENCH_REPS", 101),
        )
    };
    let db = TestPostgres::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    let node = RingNode::builder(pool(&db, "hot", 3), "hot-path")
        .ring_size(RING)
        .node_id("hot-0")
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.owned_partitions().len() != RING as usize {
        assert!(Instant::now() < deadline, "the member never owned the ring");
        std::thread::sleep(Duration::from_millis(5));
    }
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("customer-{i}").into_bytes())
        .collect();
    let view = node.view();
    let mask = RING - 1;

    let mut rows: Vec<(&str, Stats)> = Vec::new();
    rows.push(("empty loop (overhead)", measure(iters, reps, |i| i)));
    rows.push((
        "clock_gettime(MONOTONIC_COARSE)",
        measure(iters, reps, |_| coarse_ns()),
    ));
    rows.push(("Instant::now()", measure(iters, reps, |_| Instant::now())));
    let owns = measure(iters, reps, |i| node.owns(i & mask));
    rows.push(("owns(p)", owns));
    let owned = measure(iters, reps, |_| node.owned_partitions());
    rows.push(("owned_partitions()", owned));
    rows.push((
        "owned_partitions().contains(p)",
        measure(iters, reps, |i| node.owned_partitions().contains(i & mask)),
    ));
    let pf = measure(iters, reps, |i| {
        node.partition_for(&keys[(i & 1023) as usize])
    });
    rows.push(("partition_for(key) (10-13 byte keys)", pf));
    let oo = measure(iters, reps, |i| view.owner_of(i & mask).map(str::len));
    rows.push(("view.owner_of(p) (view held)", oo));
    rows.push((
        "view().owner_of(p) (view fetched per call)",
        measure(iters / 4, reps, |i| {
            node.view().owner_of(i & mask).map(str::len)
        }),
    ));
    let observer = leasering::RingObserver::builder(pool(&db, "hot-observer", 2), "hot-path")
        .start()
        .unwrap_or_else(|e| panic!("observer: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while observer.view().epoch() != view.epoch() {
        assert!(Instant::now() < deadline, "the observer never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ok = measure(iters / 4, reps, |i| {
        observer
            .owner_info_of_key(&keys[(i & 1023) as usize])
            .map(|m| m.node_id().len())
    });
    rows.push(("observer.owner_info_of_key(key)", ok));
    let ok2 = measure_threads(2, iters / 4, reps, |i| {
        observer
            .owner_info_of_key(&keys[(i & 1023) as usize])
            .map(|m| m.node_id().len())
    });
    rows.push(("observer.owner_info_of_key(key), 2 threads", ok2));
    let owns2 = measure_threads(2, iters, reps, |i| node.owns(i & mask));
    rows.push(("owns(p), 2 threads", owns2));
    let owned2 = measure_threads(2, iters, reps, |_| node.owned_partitions());
    rows.push(("owned_partitions(), 2 threads", owned2));
    rows.push((
        "view().owner_of(p), 2 threads",
        measure_threads(2, iters / 4, reps, |i| {
            node.view().owner_of(i & mask).map(str::len)
        }),
    ));

    println!();
    println!("ns/op over {reps} repetitions of {iters} calls (member alone on a {RING}-partition ring, owning all):");
    print_table(
        &["operation", "p50 ns", "p99 ns", "min ns"],
        &rows
            .iter()
            .map(|(name, s)| vec![name.to_string(), f(s.p50, 2), f(s.p99, 2), f(s.min, 2)])
            .collect::<Vec<_>>(),
    );
    println!("targets (DESIGN §9): owns <= 5 ns with the expiry check; owned_partitions <= 25 ns; Go's unchecked read 5.35 ns");
    println!("loadavg after: {}", loadavg());
    observer.stop().unwrap();
    node.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    println!();
    println!(
        "hot owns_ns={:.2} owned_partitions_ns={:.2} partition_for_ns={:.2} owner_of_ns={:.2} owns_2threads_ns={:.2}",
        owns.p50, owned.p50, pf.p50, oo.p50, owns2.p50
    );
    println!("hot_extra owned_partitions_2threads_ns={:.2}", owned2.p50);
    println!(
        "observer owner_of_key_ns={:.2} owner_of_key_2threads_ns={:.2}",
        ok.p50, ok2.p50
    );
}
