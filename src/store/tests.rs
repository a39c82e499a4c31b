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
    store.migrate(&mut admin).unwrap();
    let held = store
        .hold(
            crate::pool::ConnSource::get(&pool, Duration::from_secs(5)).unwrap(),
            false,
        )
        .unwrap();
    (store, held, admin, schema)
}

#[test]
fn migrate_is_idempotent() {
    let (store, _held, mut admin, _) = setup("a");
    store.migrate(&mut admin).unwrap();
    store.check_schema(&mut admin).unwrap();
}

#[test]
fn renewal_never_resurrects_an_expired_lease() {
    let (store, mut held, mut admin, schema) = setup("a");
    let joined = store.join(&mut admin).unwrap();
    let e = joined.view.epoch();
    assert_eq!(store.sync(&mut held, e).unwrap().renewed, Some(true));
    admin
        .execute(
            &format!("UPDATE {schema}.members SET expires_at = now() - interval '1 second'"),
            &[],
        )
        .unwrap();
    let reply = store.sync(&mut held, e).unwrap();
    assert_eq!(reply.renewed, None, "an expired lease must not be renewed");
    // A rejoin removes the expired row and inserts a fresh one.
    let again = store.join(&mut admin).unwrap();
    assert_eq!(again.removed, vec!["a".to_string()]);
    assert_eq!(
        store.sync(&mut held, again.view.epoch()).unwrap().renewed,
        Some(true)
    );
}

#[test]
fn renewal_is_refused_to_a_member_trailing_the_epoch_too_long() {
    let (store, mut held, mut admin, schema) = setup("a");
    let e = store.join(&mut admin).unwrap().view.epoch();
    // The ring moves on; the member keeps acknowledging the old epoch.
    admin
        .execute(&format!("UPDATE {schema}.rings SET epoch = epoch + 1"), &[])
        .unwrap();
    assert_eq!(
        store.sync(&mut held, e).unwrap().renewed,
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
        store.sync(&mut held, e).unwrap().renewed,
        Some(false),
        "past the lag bound"
    );
    // Catching up lifts the refusal.
    assert_eq!(store.sync(&mut held, e + 1).unwrap().renewed, Some(true));
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
