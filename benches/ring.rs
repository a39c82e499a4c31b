//! Pure ring costs, no database:
//!
//! 1. Rebuilding a view and its owner table as the ring grows (16…4096
//!    members × 8 vnodes, ring sizes 1024…65536): `build` (a full read of
//!    the ring), `apply` (one join applied as a delta, what a member does per
//!    epoch), and a member's `adopt` of the new view (its ownership state
//!    machine: release/pending bookkeeping over the ring).
//! 2. Load balance of the placement: max/mean partitions per member, median
//!    and worst over many random rings (random node ids like the library's
//!    default ones), for 4, 16, 64 members × 8 vnodes on 1024 partitions.
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use leasering::protocol::{choose_positions, Ownership};
use leasering::{Change, RingView};
use leasering_testkit::rng::Rng;
use support::*;

const VNODES: u32 = 8;

/// `n` members joining one after the other with random ids: their
/// `(position, node id)` pairs.
fn random_ring(rng: &mut Rng, n: usize, ring_size: u32) -> Vec<(u32, String)> {
    let mut taken = vec![false; ring_size as usize];
    let mut pairs = Vec::with_capacity(n * VNODES as usize);
    for _ in 0..n {
        // An id like the library's default: `node_` + 16 hex digits.
        let id = format!("node_{:016x}", rng.next_u64());
        let ps =
            choose_positions(&id, VNODES, ring_size, |p| taken[p as usize]).expect("ring has room");
        for p in ps {
            taken[p as usize] = true;
            pairs.push((p, id.clone()));
        }
    }
    pairs
}

/// The change of `id` joining at epoch 2 with `positions`.
fn join_change(id: &str, positions: &[u32]) -> Change {
    Change {
        epoch: 2,
        removed: Vec::new(),
        added: Some((id.to_string(), positions.to_vec())),
        added_metadata: None,
    }
}

/// A member's ownership state machine right after joining with `view`: to
/// time what adopting the next view costs it.
fn joined_member(me: &str, ring_size: u32, view: RingView) -> Ownership {
    let ttl = Duration::from_secs(30);
    let mut m = Ownership::new(me, ring_size, ttl, ttl / 10);
    m.joined(view, Instant::now());
    m
}

/// Median microseconds of `reps` runs of `f`.
fn time_us<R>(reps: usize, mut f: impl FnMut() -> R) -> Stats {
    black_box(f());
    let v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect();
    stats(&v)
}

fn main() {
    print_machine("ring");
    let q = quick();
    let mut rng = Rng::new(0x1ea5e);

    // ---- 1. rebuild cost ----------------------------------------------------
    let members_list = [16usize, 64, 256, 512, 1024, 4096];
    let sizes = [1024u32, 4096, 16384, 65536];
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for &ring_size in &sizes {
        for &n in &members_list {
            if n as u64 * VNODES as u64 * 2 > ring_size as u64 {
                continue; // a ring needs room for the vnodes (and a free half)
            }
            let pairs = random_ring(&mut rng, n + 1, ring_size);
            let (base, joiner) = pairs.split_at(n * VNODES as usize);
            let joiner_id = joiner[0].1.clone();
            let joiner_pos: Vec<u32> = joiner.iter().map(|(p, _)| *p).collect();
            let work = ring_size as usize + pairs.len();
            let reps = if q {
                5
            } else {
                (4_000_000 / work).clamp(15, 400)
            };
            let build = time_us(reps, || {
                RingView::build(1, ring_size, base.iter().map(|(p, id)| (*p, id.as_str())))
            });
            let view = RingView::build(1, ring_size, base.iter().map(|(p, id)| (*p, id.as_str())));
            let apply = time_us(reps, || view.apply(&join_change(&joiner_id, &joiner_pos)));
            let next = view.apply(&join_change(&joiner_id, &joiner_pos));
            let me = base[0].1.clone();
            let adopt = time_us(reps, || {
                let mut m = joined_member(&me, ring_size, view.clone());
                m.adopt(next.clone()).len()
            });
            let joined_only = time_us(reps, || joined_member(&me, ring_size, view.clone()));
            let adopt_us = (adopt.p50 - joined_only.p50).max(0.0);
            rows.push(vec![
                ring_size.to_string(),
                n.to_string(),
                (n * VNODES as usize).to_string(),
                f(build.p50, 1),
                f(build.p99, 1),
                f(apply.p50, 1),
                f(apply.p99, 1),
                f(adopt_us, 1),
            ]);
            if (ring_size == 16384 && n == 512)
                || (ring_size == 65536 && n == 4096)
                || (ring_size == 1024 && n == 16)
            {
                summary.push(format!(
                    "ring_rebuild members={n} vnodes={VNODES} ring_size={ring_size} build_us={:.1} apply_us={:.1} adopt_us={adopt_us:.1}",
                    build.p50, apply.p50
                ));
            }
        }
    }
    println!();
    println!("View rebuild (µs, median and p99 over repetitions): build = from (position, node) pairs; apply = one join as a delta; adopt = a member's state machine taking the new view:");
    print_table(
        &[
            "ring_size",
            "members",
            "vnodes",
            "build p50",
            "build p99",
            "apply p50",
            "apply p99",
            "adopt p50",
        ],
        &rows,
    );

    // ---- 2. balance ----------------------------------------------------------
    let rings = if q {
        100
    } else {
        env_usize("LEASERING_BENCH_RINGS", 2000)
    };
    let ring_size = 1024u32;
    let mut brows = Vec::new();
    let mut blines = Vec::new();
    for n in [4usize, 16, 64] {
        let mut ratios = Vec::with_capacity(rings);
        for _ in 0..rings {
            let pairs = random_ring(&mut rng, n, ring_size);
            let view = RingView::build(1, ring_size, pairs.iter().map(|(p, id)| (*p, id.as_str())));
            let max = view
                .members()
                .iter()
                .map(|m| m.partition_count())
                .max()
                .unwrap_or(0);
            ratios.push(max as f64 / (ring_size as f64 / n as f64));
        }
        let s = stats(&ratios);
        brows.push(vec![
            n.to_string(),
            VNODES.to_string(),
            rings.to_string(),
            f(s.min, 2),
            f(s.p50, 2),
            f(s.p90, 2),
            f(s.p99, 2),
            f(s.max, 2),
        ]);
        blines.push(format!(
            "balance members={n} vnodes={VNODES} max_over_mean_median={:.2} max_over_mean_worst={:.2}",
            s.p50, s.max
        ));
    }
    println!();
    println!("Load balance on {ring_size} partitions (max/mean partitions per member over random rings; target for 16 × 8: <= 1.7, Go 2.4):");
    print_table(
        &[
            "members", "vnodes", "rings", "best", "median", "p90", "p99", "worst",
        ],
        &brows,
    );
    println!();
    for l in summary.iter().chain(blines.iter()) {
        println!("{l}");
    }
}
