//! The store's statements against a real PostgreSQL (the shared throwaway
//! one).

use std::time::Duration;

use postgres::Client;

use super::*;
use crate::protocol::input::CatchUp;
use crate::Config;
use leasering_testkit::{unique_name, TestPostgres};

fn setup(node: &str) -> (Store, HeldConn, Client, String) {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let schema = unique_name("store");
    let mut cfg = Config::new(unique_name("ring"));
    cfg.schema = schema.clone();
    cfg.lease_ttl = Duration::from_secs(10);
    let store = Store::new(&cfg, node).unwrap();
    let pool = db.pool(2).unwrap();
    let mut admin = db.client().unwrap();
    store.schema_handle().unwrap().migrate(&mut admin).unwrap();
    let held = store
        .hold(
            crate::pool::ConnSource::get_raw(&pool, Duration::from_secs(5)).unwrap(),
            false,
        )
        .unwrap();
    (store, held, admin, schema)
}

#[test]
fn migrate_is_idempotent() {
    let (store, _held, mut admin, _) = setup("a");
    store.schema_handle().unwrap().migrate(&mut admin).unwrap();
    store.schema_handle().unwrap().check(&mut admin).unwrap();
}

#[test]
fn renewal_never_resurrects_an_expired_lease() {
    let (store, mut held, mut admin, schema) = setup("a");
    let joined = store.join(&mut admin).unwrap();
    let e = joined.view.epoch();
    assert_eq!(
        store
            .renew(&mut held, joined.incarnation, e)
            .unwrap()
            .renewed,
        Some(true)
    );
    admin
        .execute(
            &format!("UPDATE {schema}.members SET expires_at = now() - interval '1 second'"),
            &[],
        )
        .unwrap();
    let reply = store.renew(&mut held, joined.incarnation, e).unwrap();
    assert_eq!(reply.renewed, None, "an expired lease must not be renewed");
    // A rejoin removes the expired row and inserts a fresh one.
    let again = store.join(&mut admin).unwrap();
    assert_eq!(again.removed, vec!["a".to_string()]);
    assert_eq!(
        store
            .renew(&mut held, joined.incarnation, again.view.epoch())
            .unwrap()
            .renewed,
        None,
        "the old incarnation stays out"
    );
    assert_eq!(
        store
            .renew(&mut held, again.incarnation, again.view.epoch())
            .unwrap()
            .renewed,
        Some(true)
    );
}

#[test]
fn renewal_is_refused_to_a_member_trailing_the_epoch_too_long() {
    let (store, mut held, mut admin, schema) = setup("a");
    let joined = store.join(&mut admin).unwrap();
    let (e, inc) = (joined.view.epoch(), joined.incarnation);
    // The ring moves on; the member keeps acknowledging the old epoch.
    admin
        .execute(&format!("UPDATE {schema}.rings SET epoch = epoch + 1"), &[])
        .unwrap();
    assert_eq!(
        store.renew(&mut held, inc, e).unwrap().renewed,
        Some(true),
        "within the lag bound"
    );
    admin
        .execute(
            &format!("UPDATE {schema}.members SET behind_since = now() - interval '1 hour'"),
            &[],
        )
        .unwrap();
    assert_eq!(
        store.renew(&mut held, inc, e).unwrap().renewed,
        Some(false),
        "past the lag bound"
    );
    // Catching up lifts the refusal.
    assert_eq!(
        store.renew(&mut held, inc, e + 1).unwrap().renewed,
        Some(true)
    );
    // A member that is behind but adopts newer epochs is slow, not stuck:
    // each renewal that acknowledges a newer epoch starts the bound again.
    admin
        .execute(&format!("UPDATE {schema}.rings SET epoch = epoch + 3"), &[])
        .unwrap();
    assert_eq!(
        store.renew(&mut held, inc, e + 1).unwrap().renewed,
        Some(true)
    );
    let behind_an_hour =
        format!("UPDATE {schema}.members SET behind_since = now() - interval '1 hour'");
    admin.execute(&behind_an_hour, &[]).unwrap();
    assert_eq!(
        store.renew(&mut held, inc, e + 2).unwrap().renewed,
        Some(true),
        "a newer epoch acknowledged, still behind: renewed"
    );
    admin.execute(&behind_an_hour, &[]).unwrap();
    assert_eq!(
        store.renew(&mut held, inc, e + 2).unwrap().renewed,
        Some(false),
        "no newer epoch since the last renewal: stuck"
    );
}

#[test]
fn change_log_replays_and_gaps_fall_back_to_a_full_read() {
    let (a, mut held, mut admin, schema) = setup("a");
    let e1 = a.join(&mut admin).unwrap().view.epoch();
    let mut b = a.clone();
    b.node_id = "b".into();
    let e2 = b.join(&mut admin).unwrap().view.epoch();
    assert_eq!(e2, e1 + 1);
    match a.catch_up(&mut held, e1).unwrap() {
        CatchUp::Changes(chs) => {
            assert_eq!(chs.len(), 1);
            assert_eq!(chs[0].added.as_ref().unwrap().0, "b");
        }
        other => panic!("expected changes, got {other:?}"),
    }
    admin
        .execute(&format!("DELETE FROM {schema}.changes"), &[])
        .unwrap();
    match a.catch_up(&mut held, e1).unwrap() {
        CatchUp::Full(view) => {
            assert_eq!(view.epoch(), e2);
            assert_eq!(view.members().len(), 2);
        }
        other => panic!("expected a full read, got {other:?}"),
    }
    assert_eq!(b.leave(&mut admin).unwrap(), Some(e2 + 1));
    assert_eq!(b.leave(&mut admin).unwrap(), None, "leave is idempotent");
}

/// A second member of `a`'s ring, with its own held connection.
fn other(a: &Store, node: &str) -> (Store, HeldConn) {
    let db = TestPostgres::shared().unwrap();
    let mut b = a.clone();
    b.node_id = node.into();
    b.own_channel = super::node_channel(&a.schema, &a.ring_id, node);
    let pool = db.pool(1).unwrap();
    let held = b
        .hold(
            crate::pool::ConnSource::get_raw(&pool, Duration::from_secs(5)).unwrap(),
            false,
        )
        .unwrap();
    (b, held)
}

/// Every notification `listener` receives within `wait` of the first (which
/// must come within 30 s: it was sent at a commit that has returned), as
/// (channel, payload).
fn heard(listener: &mut Client, wait: Duration) -> Vec<(String, String)> {
    use postgres::fallible_iterator::FallibleIterator;
    let first = listener
        .notifications()
        .timeout_iter(Duration::from_secs(30))
        .next()
        .unwrap()
        .expect("a notification within 30 s");
    let mut all = vec![(first.channel().to_string(), first.payload().to_string())];
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(wait);
    while let Ok(Some(x)) = it.next() {
        all.push((x.channel().to_string(), x.payload().to_string()));
    }
    all
}

/// Issue 17: a claim two members wait for (views disagree for a moment in
/// a burst of joins and leaves) is released to both — one notification, on
/// the ring's channel — while a claim only one member waits for is told on
/// that member's channel alone; a release that frees claims of two
/// different waiters also sends one notification, on the ring's channel.
#[test]
fn a_release_tells_every_waiter_in_one_notification() {
    let (a, mut ha, mut admin, _schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    let (b, mut hb) = other(&a, "b");
    let jb = b.join(&mut admin).unwrap();
    let (c, mut hc) = other(&a, "c");
    let jc = c.join(&mut admin).unwrap();
    let got = a.take(&mut ha, ja.incarnation, &[1, 2, 3]).unwrap().got;
    assert_eq!(got.len(), 3);
    let mut listener = TestPostgres::shared().unwrap().client().unwrap();
    listener
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{}\"; LISTEN \"{}\"",
            a.channel, b.own_channel, c.own_channel
        ))
        .unwrap();
    // 1: b waits, then c too. 2: only b. 3: only c.
    assert_eq!(
        b.take(&mut hb, jb.incarnation, &[1, 2])
            .unwrap()
            .held_by
            .len(),
        2
    );
    assert_eq!(
        c.take(&mut hc, jc.incarnation, &[1, 3])
            .unwrap()
            .held_by
            .len(),
        2
    );
    // b's take again does not make a claim only b waits for a ring-wide one.
    b.take(&mut hb, jb.incarnation, &[2]).unwrap();
    let token = |p: u32| got.iter().find(|(q, _)| *q == p).unwrap().1;
    let release = |ps: &[u32], ha: &mut HeldConn| {
        let claims: Vec<(u32, u64)> = ps.iter().map(|p| (*p, token(*p))).collect();
        assert_eq!(
            a.release_claims(ha, ja.incarnation, &claims).unwrap(),
            ps.len() as u64
        );
    };
    release(&[1], &mut ha);
    assert_eq!(
        heard(&mut listener, Duration::from_millis(200)),
        vec![(
            a.channel.clone(),
            crate::store::payload::release_payload(&a.ring_id, &[1])
        )],
        "two waiters: the ring's channel, once"
    );
    release(&[2], &mut ha);
    assert_eq!(
        heard(&mut listener, Duration::from_millis(200)),
        vec![(
            b.own_channel.clone(),
            crate::store::payload::release_payload(&a.ring_id, &[2])
        )],
        "one waiter: its own channel"
    );
    // 2 and 3 again, b waiting for 2 and c for 3, released together.
    let got2 = a.take(&mut ha, ja.incarnation, &[2, 3]).unwrap().got;
    b.take(&mut hb, jb.incarnation, &[2]).unwrap();
    c.take(&mut hc, jc.incarnation, &[3]).unwrap();
    assert_eq!(a.release_claims(&mut ha, ja.incarnation, &got2).unwrap(), 2);
    assert_eq!(
        heard(&mut listener, Duration::from_millis(200)),
        vec![(
            a.channel.clone(),
            crate::store::payload::release_payload(&a.ring_id, &[2, 3])
        )],
        "two waiters of two claims: one notification, on the ring's channel"
    );
}

#[test]
fn claims_are_exclusive_tokened_and_freed_with_their_member() {
    let (a, mut ha, mut admin, schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    let (b, mut hb) = other(&a, "b");
    let jb = b.join(&mut admin).unwrap();
    let took = a.take(&mut ha, ja.incarnation, &[1, 2, 3]).unwrap();
    assert!(took.live);
    assert_eq!(
        took.got,
        vec![
            (1, jb.view.epoch()),
            (2, jb.view.epoch()),
            (3, jb.view.epoch())
        ]
    );
    // Taken again by its holder: the same claims, the same tokens.
    assert_eq!(
        a.take(&mut ha, ja.incarnation, &[1, 2, 3]).unwrap().got,
        took.got
    );
    // Another member gets none of them, learns who holds them, and is
    // marked as waiting for them. A third party listens on b's channel and
    // on a bystander's.
    let mut listener = TestPostgres::shared().unwrap().client().unwrap();
    let bystander = super::node_channel(&a.schema, &a.ring_id, "c");
    listener
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{bystander}\"",
            b.own_channel
        ))
        .unwrap();
    let tb = b.take(&mut hb, jb.incarnation, &[2, 3, 4]).unwrap();
    assert_eq!(tb.got, vec![(4, jb.view.epoch())]);
    assert_eq!(tb.held_by, vec![(2, "a".to_string()), (3, "a".to_string())]);
    assert!(!tb.retry, "nothing was locked");
    // A release naming another token frees nothing; the right one frees.
    assert_eq!(
        a.release_claims(&mut ha, ja.incarnation, &[(2, 999)])
            .unwrap(),
        0
    );
    assert_eq!(
        b.release_claims(&mut hb, jb.incarnation, &[(2, jb.view.epoch())])
            .unwrap(),
        0,
        "not b's"
    );
    assert_eq!(
        a.release_claims(
            &mut ha,
            ja.incarnation,
            &[(2, jb.view.epoch()), (1, jb.view.epoch())]
        )
        .unwrap(),
        2
    );
    // The release told the waiter, b, of 2 (not of 1, which nobody waited
    // for), and nobody else.
    let heard: Vec<(String, String)> = {
        use postgres::fallible_iterator::FallibleIterator;
        let first = listener
            .notifications()
            .timeout_iter(Duration::from_secs(30))
            .next()
            .unwrap()
            .expect("a notification for the waiter");
        let mut all = vec![(first.channel().to_string(), first.payload().to_string())];
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(x)) = it.next() {
            all.push((x.channel().to_string(), x.payload().to_string()));
        }
        all
    };
    assert_eq!(
        heard,
        vec![(
            b.own_channel.clone(),
            crate::store::payload::release_payload(&a.ring_id, &[2])
        )]
    );
    let (_, back) = a.take(&mut ha, ja.incarnation, &[1]).unwrap().got[0];
    assert!(back > jb.view.epoch(), "retaken with a higher token");
    let tb = b.take(&mut hb, jb.incarnation, &[2]).unwrap();
    assert_eq!(
        tb.got,
        vec![(2, jb.view.epoch() + 1)],
        "a new holder, a higher token"
    );
    // The renewal reads what each holds.
    assert_eq!(
        a.renew(&mut ha, ja.incarnation, jb.view.epoch())
            .unwrap()
            .held,
        vec![(1, back), (3, jb.view.epoch())]
    );
    // A leave frees every claim of the member.
    a.leave(&mut admin).unwrap();
    let tb = b.take(&mut hb, jb.incarnation, &[1, 3]).unwrap();
    assert_eq!(tb.got.len(), 2, "{tb:?}");
    // A member whose lease is not live takes nothing.
    admin
        .execute(
            &format!("UPDATE {schema}.members SET expires_at = now() - interval '1 second'"),
            &[],
        )
        .unwrap();
    let late = b.take(&mut hb, jb.incarnation, &[9]).unwrap();
    assert!(!late.live && late.got.is_empty());
    // Its removal at expiry frees its claims.
    let (c, mut hc) = other(&a, "c");
    let cleaned = c.cleanup(&mut admin).unwrap();
    assert_eq!(cleaned.removed, vec!["b".to_string()]);
    let jc = c.join(&mut admin).unwrap();
    assert_eq!(
        c.take(&mut hc, jc.incarnation, &[1, 2, 3, 4])
            .unwrap()
            .got
            .len(),
        4
    );
}

#[test]
fn racing_takes_never_both_get_a_claim() {
    let (a, _ha, mut admin, _) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    let (b, _hb) = other(&a, "b");
    let jb = b.join(&mut admin).unwrap();
    let partitions: Vec<u32> = (0..32).collect();
    let race = |s: Store, inc: i64| {
        let ps = partitions.clone();
        std::thread::spawn(move || {
            let (s2, mut h) = other(&s, &s.node_id.clone());
            let mut rounds = Vec::new();
            for _ in 0..40 {
                let got = s2.take(&mut h, inc, &ps).unwrap().got;
                s2.release_claims(&mut h, inc, &got).unwrap();
                rounds.push(got);
            }
            rounds
        })
    };
    let (ra, rb) = (
        race(a.clone(), ja.incarnation),
        race(b.clone(), jb.incarnation),
    );
    let (ra, rb) = (ra.join().unwrap(), rb.join().unwrap());
    // Tokens say who held what when: a token is never handed to both.
    let mut seen = std::collections::BTreeMap::new();
    for (who, rounds) in [("a", ra), ("b", rb)] {
        for got in rounds {
            for (p, t) in got {
                if let Some(prev) = seen.insert((p, t), who) {
                    assert_eq!(prev, who, "claim of {p} with token {t} given to both");
                }
            }
        }
    }
}

/// Holds, in a transaction of its own, the lock of a mark on claim `p` (as
/// a take of another member does) for `hold`, then commits it.
fn mark_in_flight(
    schema: &str,
    ring_id: &str,
    p: i32,
    hold: Duration,
) -> std::thread::JoinHandle<()> {
    let mut c = TestPostgres::shared().unwrap().client().unwrap();
    c.batch_execute("BEGIN").unwrap();
    let n = c
        .execute(
            &format!("UPDATE {schema}.claims SET waiter = 'someone' WHERE ring_id = $1 AND partition = $2"),
            &[&ring_id, &p],
        )
        .unwrap();
    assert_eq!(n, 1, "claim row {p} exists");
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        c.batch_execute("COMMIT").unwrap();
    })
}

/// How many claims of ring `ring_id` have a holder.
fn held_claims(admin: &mut Client, schema: &str, ring_id: &str) -> i64 {
    admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.claims WHERE ring_id = $1 AND holder IS NOT NULL"
            ),
            &[&ring_id],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_release_frees_a_claim_whose_row_was_marked_meanwhile() {
    // The release waits for the mark's row lock, then locks the row's
    // newest version: it must still free it (found by key, not by a
    // `ctid` its snapshot cannot see).
    let (a, mut ha, mut admin, schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    let got = a.take(&mut ha, ja.incarnation, &[1, 2, 3]).unwrap().got;
    assert_eq!(got.len(), 3);
    let marker = mark_in_flight(&schema, &a.ring_id, 2, Duration::from_millis(300));
    assert_eq!(a.release_claims(&mut ha, ja.incarnation, &got).unwrap(), 3);
    marker.join().unwrap();
    let held = held_claims(&mut admin, &schema, &a.ring_id);
    assert_eq!(held, 0, "every released claim is free");
}

#[test]
fn a_leave_frees_a_claim_whose_row_was_marked_meanwhile() {
    let (a, mut ha, mut admin, schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    assert_eq!(
        a.take(&mut ha, ja.incarnation, &[1, 2, 3])
            .unwrap()
            .got
            .len(),
        3
    );
    let marker = mark_in_flight(&schema, &a.ring_id, 2, Duration::from_millis(300));
    a.leave(&mut admin).unwrap();
    marker.join().unwrap();
    let named = held_claims(&mut admin, &schema, &a.ring_id);
    assert_eq!(named, 0, "no claim names a member that left");
}

#[test]
fn a_holder_of_the_ring_lock_left_idle_loses_it_within_the_bound() {
    // A member frozen between two statements of a transaction holding the
    // ring's lock (a leave, here) must not hold up everyone's joins and
    // cleanups for four statement timeouts: the server ends it after one.
    let (a, _ha, mut admin, _) = setup("a");
    a.join(&mut admin).unwrap();
    let db = TestPostgres::shared().unwrap();
    let mut frozen = db.client().unwrap();
    let mut tx = a.begin(&mut frozen).unwrap();
    a.lock_and_delete(&mut tx, "false").unwrap();
    let try_lock = |c: &mut Client| -> bool {
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&a.ring_lock])
            .unwrap()
            .get(0);
        if got {
            c.execute("SELECT pg_advisory_unlock($1)", &[&a.ring_lock])
                .unwrap();
        }
        got
    };
    assert!(
        !try_lock(&mut admin),
        "the frozen transaction holds the ring's lock"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while !try_lock(&mut admin) {
        assert!(
            std::time::Instant::now() < deadline,
            "the ring's lock was still held 8 s into an idle transaction (the bound is 3.3 s; without it 13.3 s)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(tx);
}

/// Issue 11, 3(b): a fresh database serves takes at once (the schema's
/// creation recorded its timeline); a database whose `timelines` table
/// only knows an earlier timeline (faked here by moving that row to
/// timeline 0, which no server has: timelines start at 1) takes nothing
/// for a TTL and the margin after its first take on the current one, and
/// says how long is left. Both ways of sending statements (prepared, and
/// unnamed in a transaction for a pooler in transaction mode).
#[test]
fn a_fresh_database_has_no_grace_and_a_later_timeline_has_one() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    for pooling in [false, true] {
        for earlier in [false, true] {
            let schema = unique_name("store");
            let mut cfg = Config::new(unique_name("ring"));
            cfg.schema = schema.clone();
            cfg.lease_ttl = Duration::from_secs(10);
            cfg.pooling = if pooling {
                crate::Pooling::Transaction
            } else {
                crate::Pooling::Session
            };
            let store = Store::new(&cfg, "a").unwrap();
            let pool = db.pool(2).unwrap();
            let mut admin = db.client().unwrap();
            store.schema_handle().unwrap().migrate(&mut admin).unwrap();
            let mut held = store
                .hold(
                    crate::pool::ConnSource::get_raw(&pool, Duration::from_secs(5)).unwrap(),
                    false,
                )
                .unwrap();
            // The schema's creation recorded its timeline (no grace).
            let recorded: i64 = admin
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {schema}.timelines WHERE first_served = '-infinity'"
                    ),
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(recorded, 1);
            if earlier {
                // As if the schema had been created on an earlier timeline.
                admin
                    .batch_execute(&format!(
                        "UPDATE {schema}.timelines SET timeline = 0, first_served = now() - interval '1 day'"
                    ))
                    .unwrap();
            }
            let joined = store.join(&mut admin).unwrap();
            let all: Vec<u32> = (0..cfg.ring_size).collect();
            let took = store.take(&mut held, joined.incarnation, &all).unwrap();
            let timeline: i64 = admin
                .query_one(
                    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8",
                    &[],
                )
                .unwrap()
                .get(0);
            assert!(took.live);
            assert_eq!(took.timeline, Some(timeline as u64), "pooling {pooling}");
            let renewal = store
                .renew(&mut held, joined.incarnation, joined.view.epoch())
                .unwrap();
            assert_eq!(renewal.timeline, Some(timeline as u64));
            if !earlier {
                assert_eq!(took.grace, None, "a cold start waits for nothing");
                assert_eq!(took.got.len(), all.len());
                continue;
            }
            let left = took.grace.expect("a new timeline's grace period");
            assert!(
                left > Duration::from_secs(9) && left <= Duration::from_secs(11),
                "a TTL and the margin: {left:?}"
            );
            assert!(took.got.is_empty(), "nothing taken in the grace period");
            assert!(took.held_by.is_empty());
            // Again: the first take's instant stands, nothing is taken.
            let again = store.take(&mut held, joined.incarnation, &all).unwrap();
            assert!(again.got.is_empty() && again.grace.is_some_and(|d| d <= left));
            // A member set up for promotions that lose nothing
            // (`failover_grace(0)`) takes at once on the same timeline.
            let mut sync_cfg = cfg.clone();
            sync_cfg.failover_grace = Some(Duration::ZERO);
            let sync_store = Store::new(&sync_cfg, "b").unwrap();
            let sync_joined = sync_store.join(&mut admin).unwrap();
            let first: Vec<u32> = vec![0, 1];
            let sync_took = sync_store
                .take(&mut held, sync_joined.incarnation, &first)
                .unwrap();
            assert_eq!(sync_took.grace, None, "pooling {pooling}");
            assert_eq!(sync_took.got.len(), first.len(), "pooling {pooling}");
            let rest: Vec<u32> = (2..cfg.ring_size).collect();
            // Once the grace period has passed, takes are served.
            admin
                .execute(
                    &format!("UPDATE {schema}.timelines SET first_served = now() - interval '12 seconds' WHERE timeline = $1"),
                    &[&timeline],
                )
                .unwrap();
            let after = store.take(&mut held, joined.incarnation, &rest).unwrap();
            assert_eq!(after.grace, None);
            assert_eq!(after.got.len(), rest.len(), "pooling {pooling}");
        }
    }
}

/// A try of a join whose answer was lost (the connection died around the
/// commit) is resumed by the next try of the same attempt: if it had
/// committed, the next try finds the membership instead of being refused as
/// "node id in use" by its own new row; if nothing of it is left, the next
/// try joins afresh, as a new incarnation.
#[test]
fn a_join_whose_answer_was_lost_is_resumed_not_refused() {
    let (store, _held, mut admin, schema) = setup("a");
    let t0 = std::time::Instant::now();
    let mut attempt = JoinAttempt::new(t0);
    let first = store.join_with(&mut admin, &mut attempt, None).unwrap();
    // The answer is lost: the caller tries again, with the same attempt.
    let again = store.join_with(&mut admin, &mut attempt, None).unwrap();
    assert_eq!(again.incarnation, first.incarnation, "the same membership");
    assert_eq!(again.positions, first.positions);
    assert!(again.view.epoch() >= first.view.epoch());
    assert_eq!(attempt.sent_at(), t0, "the lease counts from the first try");
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {schema}.members"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "no second row, no ghost");
    // A fresh attempt is refused by that live row, as before.
    let refused = store.join(&mut admin).unwrap_err();
    assert_eq!(refused.kind(), crate::ErrorKind::NodeIdInUse, "{refused}");
    // Gone since (removed, say): the next try is a new membership.
    admin
        .batch_execute(&format!("DELETE FROM {schema}.members"))
        .unwrap();
    let fresh = store.join_with(&mut admin, &mut attempt, None).unwrap();
    assert_ne!(fresh.incarnation, first.incarnation);
    assert!(attempt.sent_at() > t0);
}

/// A `timelines` table without a row for the server's timeline — even an
/// empty one, as on a standby promoted before the first take's row reached
/// it — means a new timeline: the first take starts the grace period. Only
/// the schema's creation records a timeline as needing none.
#[test]
fn an_empty_timelines_table_is_a_new_timeline_not_a_fresh_database() {
    let (store, mut held, mut admin, schema) = setup("a");
    admin
        .batch_execute(&format!("DELETE FROM {schema}.timelines"))
        .unwrap();
    let joined = store.join(&mut admin).unwrap();
    let took = store.take(&mut held, joined.incarnation, &[0, 1]).unwrap();
    assert!(took.got.is_empty(), "nothing taken: {took:?}");
    assert!(
        took.grace.is_some_and(|d| d > Duration::from_secs(9)),
        "a grace period of a TTL and the margin: {:?}",
        took.grace
    );
}

/// Issue 18: one NOTIFY per transaction. Three joins absorbed together
/// (their requests filed while the ring's lock was held elsewhere) make
/// three changes, three epochs — and one notification, carrying all three.
#[test]
fn a_group_commit_of_three_joins_sends_one_notification_with_three_changes() {
    let (a, _ha, mut admin, schema) = setup("a");
    a.join(&mut admin).unwrap();
    let mut listener = TestPostgres::shared().unwrap().client().unwrap();
    listener
        .batch_execute(&format!("LISTEN \"{}\"", a.channel))
        .unwrap();
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&a.ring_lock])
        .unwrap();
    let joiners: Vec<_> = ["b", "c", "d"]
        .into_iter()
        .map(|n| {
            let (s, _) = other(&a, n);
            std::thread::spawn(move || {
                let mut c = TestPostgres::shared().unwrap().client().unwrap();
                s.join(&mut c).map(|j| j.view.epoch())
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {schema}.join_requests WHERE refused IS NULL"),
                &[],
            )
            .unwrap()
            .get(0);
        if pending == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "three requests filed");
        std::thread::sleep(Duration::from_millis(5));
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&a.ring_lock])
        .unwrap();
    let mut epochs: Vec<u64> = joiners
        .into_iter()
        .map(|j| j.join().unwrap().unwrap())
        .collect();
    epochs.sort_unstable();
    let heard = heard(&mut listener, Duration::from_millis(300));
    assert_eq!(heard.len(), 1, "one NOTIFY for the transaction: {heard:?}");
    let notices = crate::store::payload::parse_payloads(&a.ring_id, &heard[0].1);
    let notified: Vec<u64> = notices
        .iter()
        .map(|n| match n {
            crate::protocol::input::Notice::Change { epoch, change } => {
                assert!(change.is_some(), "the change itself travels");
                *epoch
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(notified.len(), 3, "{notices:?}");
    assert_eq!(notified.last(), epochs.last(), "up to the last epoch");
}

/// Issue 19: an eligibility change (readiness or cordon) is a membership
/// change — one epoch, one change-log row, one NOTIFY carrying it — and
/// what members apply from it is what a full read of the ring gives.
fn eligibility_changes_are_membership_changes(placement: crate::Placement) {
    let db = TestPostgres::shared().unwrap();
    let schema = unique_name("store");
    let mut cfg = Config::new(unique_name("ring"));
    cfg.schema = schema.clone();
    cfg.ring_size = 64;
    cfg.placement = placement;
    cfg.lease_ttl = Duration::from_secs(10);
    let a = Store::new(&cfg, "a").unwrap();
    let mut admin = db.client().unwrap();
    a.schema_handle().unwrap().migrate(&mut admin).unwrap();
    let pool = db.pool(1).unwrap();
    let mut held = a
        .hold(
            crate::pool::ConnSource::get_raw(&pool, Duration::from_secs(5)).unwrap(),
            false,
        )
        .unwrap();
    a.join(&mut admin).unwrap();
    // b joins not ready: a member that owns nothing.
    let (b, _hb) = other(&a, "b");
    b.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    let joined = b.join(&mut admin).unwrap();
    let bi = joined.view.member("b").unwrap();
    assert!(!bi.is_eligible() && bi.partition_count() == 0);
    assert_eq!(joined.view.partitions_of("a").len(), 64);
    let mut view = joined.view;
    let mut listener = db.client().unwrap();
    listener
        .batch_execute(&format!("LISTEN \"{}\"", a.channel))
        .unwrap();
    let epoch_of = |admin: &mut Client| -> u64 {
        admin
            .query_one(
                &format!("SELECT epoch FROM {schema}.rings WHERE ring_id = $1"),
                &[&a.ring_id],
            )
            .unwrap()
            .get::<_, i64>(0) as u64
    };
    let check = |admin: &mut Client,
                 listener: &mut Client,
                 held: &mut HeldConn,
                 epoch: Option<u64>,
                 view: &mut crate::RingView,
                 want: (Vec<&str>, Vec<&str>)| {
        let before = view.epoch();
        let e = epoch.expect("an eligibility change");
        assert_eq!(e, before + 1, "one epoch");
        assert_eq!(epoch_of(admin), e);
        let heard = heard(listener, Duration::from_millis(300));
        assert_eq!(heard.len(), 1, "one NOTIFY: {heard:?}");
        let notices = crate::store::payload::parse_payloads(&a.ring_id, &heard[0].1);
        let crate::protocol::input::Notice::Change {
            change: Some(change),
            ..
        } = &notices[0]
        else {
            panic!("{notices:?}")
        };
        assert_eq!(change.epoch, e);
        assert_eq!(change.eligible, want.0);
        assert_eq!(change.ineligible, want.1);
        let rows: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {schema}.changes WHERE ring_id = $1 AND epoch = $2"),
                &[&a.ring_id, &(e as i64)],
            )
            .unwrap()
            .get(0);
        assert_eq!(rows, 1, "one change-log row");
        let CatchUp::Changes(logged) = a.catch_up(held, before).unwrap() else {
            panic!("the change log covers it")
        };
        assert_eq!(
            logged.as_slice(),
            std::slice::from_ref(change),
            "the log and the payload agree"
        );
        let applied = view.apply(change);
        let read = a.read_ring(held).unwrap();
        assert_eq!(read.epoch(), e);
        for p in 0..64 {
            assert_eq!(applied.owner_of(p), read.owner_of(p), "partition {p}");
        }
        for (x, y) in applied.members().iter().zip(read.members()) {
            assert_eq!(x.is_eligible(), y.is_eligible());
        }
        *view = applied;
    };
    let e = b.set_ready(&mut admin, true).unwrap();
    check(
        &mut admin,
        &mut listener,
        &mut held,
        e,
        &mut view,
        (vec!["b"], vec![]),
    );
    assert!(!view.partitions_of("b").is_empty());
    assert_eq!(b.set_ready(&mut admin, true).unwrap(), None, "no flip");
    // A cordon of a present member.
    let e = a.set_cordon(&mut admin, true).unwrap();
    check(
        &mut admin,
        &mut listener,
        &mut held,
        e,
        &mut view,
        (vec![], vec!["a"]),
    );
    assert!(view.partitions_of("a").is_empty());
    assert_eq!(view.partitions_of("b").len(), 64);
    // Readiness of a cordoned member flips nothing.
    assert_eq!(a.set_ready(&mut admin, false).unwrap(), None);
    assert_eq!(a.set_ready(&mut admin, true).unwrap(), None);
    assert_eq!(epoch_of(&mut admin), view.epoch());
    // b not ready either: nobody is eligible, nothing is assigned.
    let e = b.set_ready(&mut admin, false).unwrap();
    check(
        &mut admin,
        &mut listener,
        &mut held,
        e,
        &mut view,
        (vec![], vec!["b"]),
    );
    assert_eq!(view.unassigned(), 64);
    let e = a.set_cordon(&mut admin, false).unwrap();
    check(
        &mut admin,
        &mut listener,
        &mut held,
        e,
        &mut view,
        (vec!["a"], vec![]),
    );
    assert_eq!(view.partitions_of("a").len(), 64);
    // A cordon of an absent node id is stored, and its join is ineligible.
    let (c, _hc) = other(&a, "c");
    assert_eq!(c.set_cordon(&mut admin, true).unwrap(), None);
    let joined = c.join(&mut admin).unwrap();
    assert!(!joined.view.member("c").unwrap().is_eligible());
    assert!(joined.view.partitions_of("c").is_empty());
    let _ = heard(&mut listener, Duration::from_millis(100));
    // An unknown ring is an error naming it.
    let mut lost = a.clone();
    lost.ring_id = "no-such-ring".into();
    let err = lost.set_cordon(&mut admin, true).unwrap_err();
    assert!(err.to_string().contains("no-such-ring"), "{err}");
}

#[test]
fn an_eligibility_change_is_one_epoch_one_change_and_one_notification() {
    eligibility_changes_are_membership_changes(crate::Placement::Hashed);
}

#[test]
fn an_eligibility_change_of_a_balanced_ring_moves_the_stored_table_alike() {
    eligibility_changes_are_membership_changes(crate::Placement::Balanced);
}

/// Schema version 3 → 4 in place: existing members stay ready and
/// eligible, and the ring works on.
#[test]
fn a_version_3_schema_migrates_to_version_4_with_its_members() {
    let (a, mut held, mut admin, schema) = setup("a");
    a.join(&mut admin).unwrap();
    // Back to what version 3 had.
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.members DROP COLUMN ready, DROP COLUMN eligible;
             ALTER TABLE {schema}.join_requests DROP COLUMN ready;
             ALTER TABLE {schema}.changes DROP COLUMN eligible, DROP COLUMN ineligible,
                                          DROP COLUMN added_eligible;
             DROP TABLE {schema}.cordons;
             UPDATE {schema}.schema_version SET version = 3;"
        ))
        .unwrap();
    assert!(a.schema_handle().unwrap().check(&mut admin).is_err());
    a.schema_handle().unwrap().migrate(&mut admin).unwrap();
    a.schema_handle().unwrap().check(&mut admin).unwrap();
    let view = a.read_ring(&mut held).unwrap();
    assert!(view.member("a").unwrap().is_eligible());
    assert_eq!(view.partitions_of("a").len(), view.ring_size() as usize);
    let (b, _hb) = other(&a, "b");
    let joined = b.join(&mut admin).unwrap();
    assert!(joined.view.members().iter().all(|m| m.is_eligible()));
    assert!(a.set_cordon(&mut admin, true).unwrap().is_some());
}

/// A statistic of `schema`'s tables (`sql`, with `$1` the schema), once
/// the statistics of `conns` (whose last statement asked for a flush) are
/// in.
fn table_stat(admin: &mut Client, schema: &str, conns: &mut [&mut HeldConn], sql: &str) -> i64 {
    for c in conns.iter_mut() {
        // Flushed when the backend goes idle after this statement.
        c.client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
    }
    let read = |admin: &mut Client| -> i64 { admin.query_one(sql, &[&schema]).unwrap().get(0) };
    // Another backend's flush is not visible at once: read until two
    // reads 200 ms apart agree.
    let mut last = read(admin);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = read(admin);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Tuples read through `claims_by_holder` in `schema` so far.
fn holder_index_reads(admin: &mut Client, schema: &str, conns: &mut [&mut HeldConn]) -> i64 {
    table_stat(
        admin,
        schema,
        conns,
        "SELECT COALESCE(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
         WHERE schemaname = $1 AND indexrelname = 'claims_by_holder'",
    )
}

/// Rows of `schema`'s claims updated so far.
fn claim_updates(admin: &mut Client, schema: &str, conns: &mut [&mut HeldConn]) -> i64 {
    table_stat(
        admin,
        schema,
        conns,
        "SELECT COALESCE(sum(n_tup_upd), 0)::int8 FROM pg_stat_user_tables
         WHERE schemaname = $1 AND relname = 'claims'",
    )
}

/// A take marks a claim held by another member once: taken again while
/// the claim is still held (every view change and every safety-net retry
/// takes again), it finds its mark there and writes nothing — it wrote a
/// new version of every such claim each time, which at a cold start of
/// 512 members was most of the database's work (settled in 33–43 s; 22 s
/// without). A second member's take changes the mark (to the ring's
/// channel: both are told), once.
#[test]
fn a_repeated_take_marks_each_claim_once() {
    let (a, mut ha, mut admin, schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    let (b, mut hb) = other(&a, "b");
    let jb = b.join(&mut admin).unwrap();
    let (c, mut hc) = other(&a, "c");
    let jc = c.join(&mut admin).unwrap();
    let some: Vec<u32> = (0..100).collect();
    assert_eq!(
        a.take(&mut ha, ja.incarnation, &some).unwrap().got.len(),
        100
    );
    let mut conns = [&mut ha, &mut hb, &mut hc];
    let u0 = claim_updates(&mut admin, &schema, &mut conns);
    assert_eq!(
        b.take(&mut hb, jb.incarnation, &some)
            .unwrap()
            .held_by
            .len(),
        100
    );
    let mut conns = [&mut ha, &mut hb, &mut hc];
    let u1 = claim_updates(&mut admin, &schema, &mut conns);
    assert_eq!(u1 - u0, 100, "the first take marks each claim");
    for _ in 0..3 {
        assert_eq!(
            b.take(&mut hb, jb.incarnation, &some)
                .unwrap()
                .held_by
                .len(),
            100
        );
    }
    let mut conns = [&mut ha, &mut hb, &mut hc];
    let u2 = claim_updates(&mut admin, &schema, &mut conns);
    assert_eq!(
        u2 - u1,
        0,
        "takes repeated while the claims are held wrote {} rows",
        u2 - u1
    );
    // A second waiter: each mark becomes the ring's, once.
    for _ in 0..2 {
        assert_eq!(
            c.take(&mut hc, jc.incarnation, &some)
                .unwrap()
                .held_by
                .len(),
            100
        );
    }
    let mut conns = [&mut ha, &mut hb, &mut hc];
    let u3 = claim_updates(&mut admin, &schema, &mut conns);
    assert_eq!(u3 - u2, 100, "a second waiter changes each mark once");
    let waiters: Vec<Option<String>> = admin
        .query(
            &format!("SELECT DISTINCT waiter FROM {schema}.claims WHERE ring_id = $1 AND partition < 100"),
            &[&a.ring_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        waiters,
        vec![Some(a.channel.clone())],
        "every member is told"
    );
}

/// The take's and the release's plans belong to the server connection for
/// its life (they are functions), so they must not depend on the
/// statistics of the moment they were made. Here those statistics are the
/// ones taken when the ring was created — no claim held, so `holder IS NOT
/// NULL` looks like no rows at all — and a take of claims another member
/// holds (which marks them), and that member's release, still find each
/// claim by its key: nothing is read through the index of holders. With
/// `c.holder IS NOT NULL AND c.holder <> $2` in the take, its plan scanned
/// that index once per claim (512 × 512 tuples).
#[test]
fn takes_and_releases_find_claims_by_key_whatever_the_statistics() {
    let (a, mut ha, mut admin, schema) = setup("a");
    assert_eq!(a.ring_size, 1024);
    let ja = a.join(&mut admin).unwrap();
    let (b, mut hb) = other(&a, "b");
    let jb = b.join(&mut admin).unwrap();
    let half: Vec<u32> = (0..512).collect();
    let took = a.take(&mut ha, ja.incarnation, &half).unwrap();
    assert_eq!(took.got.len(), 512);
    let before = holder_index_reads(&mut admin, &schema, &mut [&mut ha, &mut hb]);
    let tb = b.take(&mut hb, jb.incarnation, &half).unwrap();
    assert!(tb.got.is_empty());
    assert_eq!(tb.held_by.len(), 512, "b waits for every claim a holds");
    assert_eq!(
        a.release_claims(&mut ha, ja.incarnation, &took.got)
            .unwrap(),
        512
    );
    let after = holder_index_reads(&mut admin, &schema, &mut [&mut ha, &mut hb]);
    assert_eq!(
        after - before,
        0,
        "a take of 512 claims held by another member and their release read {} tuples \
         through claims_by_holder: their plans must find each claim by its key",
        after - before
    );
    // And what was freed is b's at its next take.
    assert_eq!(
        b.take(&mut hb, jb.incarnation, &half).unwrap().got.len(),
        512
    );
}

/// Backends waiting for the advisory lock `key` (an int8 key).
fn lock_waiters(admin: &mut Client, key: i64) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
               AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1",
            &[&key],
        )
        .unwrap()
        .get(0)
}

/// A join resumed after its answer was lost waits for the ring's lock, to
/// see what became of its request. If the request is still pending when it
/// gets the lock, it absorbs it there, with every other pending one, rather
/// than handing the lock on to the next waiter and going back to trying
/// the lock without waiting. Here the next waiter takes the lock and keeps
/// it until the join has returned. A join that only looked finds the lock
/// held and nobody absorbing, and times out. That is the convoy that kept
/// half of a 1,024-member cold start out of the ring for minutes.
#[test]
fn a_resumed_join_absorbs_the_pending_requests_when_it_gets_the_lock() {
    let (a, _ha, mut admin, schema) = setup("a");
    a.join(&mut admin).unwrap();
    let (b, _hb) = other(&a, "b");
    // The requests of b (its earlier try filed it, the answer was lost)
    // and of c, both pending.
    let (ib, ic) = (4242_i64, 4343_i64);
    for (inc, node) in [(ib, "b"), (ic, "c")] {
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.join_requests
                       (incarnation, ring_id, node_id, vnode_count, ring_size, ttl_ms, expires_at, placement, ready)
                     VALUES ($1, $2, $3, $4, $5, $6, now() + interval '1 minute', $7, true)"
                ),
                &[
                    &inc,
                    &a.ring_id,
                    &node,
                    &(a.vnode_count as i32),
                    &(a.ring_size as i32),
                    &(a.ttl_s * 1000.0),
                    &a.placement_text(),
                ],
            )
            .unwrap();
    }
    let db = TestPostgres::shared().unwrap();
    let key = a.ring_lock;
    // Someone holds the ring's lock; b's resumed join queues for it first,
    // a second waiter after it.
    let mut holder = db.client().unwrap();
    holder
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({key})"))
        .unwrap();
    let joiner = std::thread::spawn(move || {
        let mut c = TestPostgres::shared().unwrap().client().unwrap();
        b.join_with(&mut c, &mut JoinAttempt::resumed(ib), None)
    });
    let wait_for = |admin: &mut Client, n: i64, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lock_waiters(admin, key) < n {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(
        &mut admin,
        1,
        "b's resumed join to wait for the ring's lock",
    );
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let convoy = std::thread::spawn(move || {
        let mut c = TestPostgres::shared().unwrap().client().unwrap();
        c.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({key})"))
            .unwrap();
        // Holds the lock until the join has returned.
        let _ = released.recv();
        c.batch_execute("ROLLBACK").unwrap();
    });
    wait_for(&mut admin, 2, "the second waiter to queue behind b");
    holder.batch_execute("COMMIT").unwrap();
    let joined = joiner.join().unwrap();
    release.send(()).unwrap();
    convoy.join().unwrap();
    let joined = joined.unwrap_or_else(|e| {
        panic!("b's resumed join, which got the ring's lock with its request pending, must absorb it: {e}")
    });
    assert_eq!(joined.incarnation, ib);
    let members: Vec<String> = admin
        .query(
            &format!("SELECT node_id FROM {schema}.members WHERE ring_id = $1 ORDER BY node_id"),
            &[&a.ring_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        members,
        ["a", "b", "c"],
        "c's pending request was absorbed with b's"
    );
}

/// A renewal reads the other member whose lease ends first (the crash
/// cleanup's plan) through `members_by_expiry`, not by reading every
/// member of the ring: with 500 members, ten renewals read a handful of
/// member rows each. Without the index (schema version 6) each renewal
/// read all 501, and a ring's renewals cost O(n²) per heartbeat (at 512
/// members, 2.3 ms a renewal and most of the database's CPU at rest).
#[test]
fn a_renewal_reads_the_next_expiry_without_reading_every_member() {
    let (a, mut ha, mut admin, schema) = setup("a");
    let ja = a.join(&mut admin).unwrap();
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.members (ring_id, node_id, vnode_count, acked_epoch, expires_at, incarnation)
                 SELECT $1, 'other-' || i, 1, 0, now() + interval '1 hour' + i * interval '1 second', -1000 - i
                 FROM generate_series(1, 500) i"
            ),
            &[&a.ring_id],
        )
        .unwrap();
    admin
        .batch_execute(&format!("ANALYZE {schema}.members"))
        .unwrap();
    let reads = |admin: &mut Client, ha: &mut HeldConn| {
        table_stat(
            admin,
            &schema,
            &mut [ha],
            "SELECT COALESCE(sum(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)), 0)::int8
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'members'",
        )
    };
    // The first renewal prepares the statement.
    a.renew(&mut ha, ja.incarnation, ja.view.epoch()).unwrap();
    let before = reads(&mut admin, &mut ha);
    for _ in 0..10 {
        let r = a.renew(&mut ha, ja.incarnation, ja.view.epoch()).unwrap();
        assert_eq!(r.renewed, Some(true));
        assert_eq!(
            r.next_expiry.as_ref().map(|(n, _)| n.as_str()),
            Some("other-1"),
            "the member whose lease ends first"
        );
    }
    let per_renewal = (reads(&mut admin, &mut ha) - before) / 10;
    assert!(
        per_renewal < 50,
        "a renewal read {per_renewal} member rows of 501: the next expiry should come from members_by_expiry"
    );
}
