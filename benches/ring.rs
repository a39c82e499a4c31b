//! Pure ring costs, no database:
//!
//! 1. Rebuilding a view and its owner table as the ring grows (16…4096
//!    members × 8 vnodes, ring sizes 1024…65536): `build` (a full read of
//!    the ring), `apply` (one join applied as a delta, what a member does per
//!    epoch), and a member's `adopt` of the new view (its ownership state
//!    machine: release/pending bookkeeping over the ring).
//! 2. Balance and movement of both placements (hashed, balanced): max/mean
//!    partitions per member, median and worst over many random id sets (ids
//!    like the library's default ones), for 4, 16, 64, 256 members × 8
//!    vnodes on 1024 and 16384 partitions; and for one join and one leave,
//!    the partitions moved over the minimum that must move.
//! 3. A balanced view change (one join as a delta) at 512 members on
//!    16384 partitions.
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use leasering::protocol::{choose_positions, Ownership};
use leasering::{Change, Placement, RingView};
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

/// `n` members with random ids joining one by one under `placement` (the
/// balanced placement's table is history, so the view is built by applying
/// each join, as members do). Returns the view and the ids.
fn placed_ring(
    rng: &mut Rng,
    n: usize,
    ring_size: u32,
    placement: Placement,
) -> (RingView, Vec<String>) {
    let pairs = random_ring(rng, n, ring_size);
    let mut ids: Vec<String> = Vec::with_capacity(n);
    for (_, id) in &pairs {
        if ids.last() != Some(id) {
            ids.push(id.clone());
        }
    }
    let view = match placement {
        Placement::Hashed => RingView::build(
            n as u64,
            ring_size,
            pairs.iter().map(|(p, id)| (*p, id.as_str())),
        ),
        _ => {
            let mut v = RingView::empty_with(0, ring_size, placement);
            for (i, id) in ids.iter().enumerate() {
                let ps: Vec<u32> = pairs
                    .iter()
                    .filter(|(_, n)| n == id)
                    .map(|(p, _)| *p)
                    .collect();
                v = v.apply(&Change {
                    epoch: i as u64 + 1,
                    removed: vec![],
                    added: Some((id.clone(), ps)),
                    added_metadata: None,
                    ..Default::default()
                });
            }
            v
        }
    };
    (view, ids)
}

/// The largest member's partitions over the mean.
fn max_over_mean(view: &RingView) -> f64 {
    let max = view
        .members()
        .iter()
        .map(|m| m.partition_count())
        .max()
        .unwrap_or(0);
    max as f64 / (view.ring_size() as f64 / view.members().len() as f64)
}

/// Partitions whose owner changed from `old` to `new`, over the fewest
/// that must move for every member of `new` to hold strictly within one
/// partition of its weighted share (`lo ..= hi`): the larger of what the
/// members above `hi` must shed and what those below `lo` must gain (a
/// member that left has `hi` 0, one that joined held 0).
fn moved_over_min(old: &RingView, new: &RingView) -> f64 {
    let moved = (0..new.ring_size())
        .filter(|p| old.owner_of(*p) != new.owner_of(*p))
        .count() as f64;
    let total: u64 = new.members().iter().map(|m| m.weight() as u64).sum();
    let r = new.ring_size() as u64;
    let (mut shed, mut gain) = (0u64, 0u64);
    for m in new.members() {
        let (num, den) = (r * m.weight() as u64, total);
        let (lo, hi) = if num % den == 0 {
            (num / den, num / den)
        } else {
            (num / den, num / den + 1)
        };
        let had = old
            .member(m.node_id())
            .map_or(0, |o| o.partition_count() as u64);
        shed += had.saturating_sub(hi);
        gain += lo.saturating_sub(had);
    }
    for m in old.members() {
        if new.member(m.node_id()).is_none() {
            shed += m.partition_count() as u64;
        }
    }
    moved / shed.max(gain).max(1) as f64
}

/// The change of `id` joining at epoch 2 with `positions`.
fn join_change(id: &str, positions: &[u32]) -> Change {
    Change {
        epoch: 2,
        removed: Vec::new(),
        added: Some((id.to_string(), positions.to_vec())),
        added_metadata: None,
        ..Default::default()
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

    // ---- 2. balance and movement, both placements --------------------------
    let sets = if q {
        8
    } else {
        env_usize("LEASERING_BENCH_RINGS", 60)
    };
    let mut brows = Vec::new();
    let mut blines = Vec::new();
    for placement in [Placement::Hashed, Placement::Balanced] {
        for ring_size in [1024u32, 16384] {
            for n in [4usize, 16, 64, 256] {
                if n as u32 * VNODES > ring_size {
                    // 2048 vnodes do not fit on 1024 positions: such a ring
                    // refuses the join (RingFull), whatever the placement.
                    continue;
                }
                let mut ratios = Vec::with_capacity(sets);
                let (mut join_ratio, mut leave_ratio) = (Vec::new(), Vec::new());
                for _ in 0..sets {
                    let (view, ids) = placed_ring(&mut rng, n, ring_size, placement);
                    ratios.push(max_over_mean(&view));
                    // One more member joins; then one of the first n leaves.
                    let id = format!("node_{:016x}", rng.next_u64());
                    let taken: Vec<u32> = view.vnodes().map(|(p, _)| p).collect();
                    let ps = choose_positions(&id, VNODES, ring_size, |p| taken.contains(&p))
                        .expect("room");
                    let joined = view.apply(&Change {
                        epoch: view.epoch() + 1,
                        removed: vec![],
                        added: Some((id, ps)),
                        added_metadata: None,
                        ..Default::default()
                    });
                    join_ratio.push(moved_over_min(&view, &joined));
                    let leaver = ids[rng.below(ids.len() as u64) as usize].clone();
                    let left = joined.apply(&Change {
                        epoch: joined.epoch() + 1,
                        removed: vec![leaver],
                        added: None,
                        added_metadata: None,
                        ..Default::default()
                    });
                    leave_ratio.push(moved_over_min(&joined, &left));
                }
                let s = stats(&ratios);
                let (j, l) = (stats(&join_ratio), stats(&leave_ratio));
                brows.push(vec![
                    placement.to_string(),
                    ring_size.to_string(),
                    n.to_string(),
                    sets.to_string(),
                    f(s.p50, 3),
                    f(s.max, 3),
                    f(j.p50, 2),
                    f(j.max, 2),
                    f(l.p50, 2),
                    f(l.max, 2),
                ]);
                blines.push(format!(
                    "balance placement={placement} ring_size={ring_size} members={n} vnodes={VNODES} max_over_mean_median={:.3} max_over_mean_worst={:.3} moved_over_min_join={:.2} moved_over_min_leave={:.2}",
                    s.p50, s.max, j.max, l.max
                ));
            }
        }
    }
    println!();
    println!("Balance and movement ({sets} random id sets each; max/mean partitions per member; moved ÷ minimum for one join and one leave: the partitions whose owner changed over the fewest that must move for every member to be within one of its share; < 1 where the placement does not reach that balance):");
    print_table(
        &[
            "placement",
            "ring_size",
            "members",
            "sets",
            "max/mean p50",
            "max/mean worst",
            "join p50",
            "join worst",
            "leave p50",
            "leave worst",
        ],
        &brows,
    );

    // ---- 3. a balanced view change at 512 members, 16384 partitions ---------
    let (view, _) = placed_ring(&mut rng, 512, 16384, Placement::Balanced);
    let id = format!("node_{:016x}", rng.next_u64());
    let taken: Vec<u32> = view.vnodes().map(|(p, _)| p).collect();
    let ps = choose_positions(&id, VNODES, 16384, |p| taken.contains(&p)).expect("room");
    let change = Change {
        epoch: view.epoch() + 1,
        removed: vec![],
        added: Some((id, ps)),
        added_metadata: None,
        ..Default::default()
    };
    let apply = time_us(if q { 5 } else { 100 }, || view.apply(&change));
    summary.push(format!(
        "ring_rebuild placement=balanced members=512 vnodes={VNODES} ring_size=16384 apply_us={:.1} apply_p99_us={:.1}",
        apply.p50, apply.p99
    ));
    println!();
    for l in summary.iter().chain(blines.iter()) {
        println!("{l}");
    }
}
