//! `ringnode status`: a ring read straight from its database — members
//! (lease left by the database's clock, acknowledged view epoch, vnodes,
//! partitions claimed, metadata), partitions waiting for a claim and on
//! whom, the ring's epoch. Read-only: it takes no lock and changes nothing.
//!
//! Exit codes: 0 the ring was read, 1 another error, 2 bad flags, 3 ring not
//! found (or no leasering schema), 4 database unreachable.

use std::collections::BTreeMap;
use std::io::Write;

use leasering::RingView;
use postgres::error::SqlState;
use serde_json::json;

use crate::cli::{CordonArgs, PinArgs, StatusArgs};
use crate::util::{describe_target, parse_database_url, with_sources, AppError, AppResult};

/// `ringnode status`: the ring was not found (or the schema is missing).
pub const EXIT_NOT_FOUND: u8 = 3;
/// `ringnode status`: the database could not be reached.
pub const EXIT_UNREACHABLE: u8 = 4;

/// One member row.
struct Member {
    node_id: String,
    vnodes: i32,
    acked_epoch: i64,
    /// By the database's clock; negative once expired (not cleaned up yet).
    lease_left_ms: f64,
    claimed: i64,
    metadata: Option<String>,
    incarnation: Option<i64>,
    /// Its own readiness (`set_ready`); true on schemas before version 4.
    ready: bool,
    /// An operator cordoned its node id.
    cordoned: bool,
    /// Its zone and capacity (schema version 5), as the view shows them.
    zone: Option<String>,
    capacity: Option<u32>,
}

/// A partition whose claim is not held by the member the ring assigns it to.
struct Waiting {
    partition: u32,
    assigned_to: String,
    /// The holder's node id; `None`: the claim is free (not taken yet).
    held_by: Option<String>,
    /// The assignee's take marked itself as the claim's waiter.
    marked: bool,
}

struct Ring {
    ring_id: String,
    schema: String,
    ring_size: u32,
    placement: leasering::Placement,
    epoch: i64,
    changed_ago_ms: f64,
    members: Vec<Member>,
    /// Every cordoned node id of the ring, present or not.
    cordons: Vec<String>,
    waiting: Vec<Waiting>,
    /// Partitions the placement gives to nobody (every member ineligible,
    /// or capacities below the ring's size).
    unassigned: u32,
    /// `(partition, node id)` pinned by an operator (schema version 5).
    pins: Vec<(u32, String)>,
    /// The ring's move budget, if it has one.
    max_moving: Option<u32>,
    /// Moves the budget still holds back ([`RingView::moves_pending`]).
    moves_pending: u64,
}

/// Runs the command; the exit code on success or a known failure.
pub fn run(args: StatusArgs) -> AppResult<u8> {
    if !valid_ident(&args.schema) {
        return Err(AppError(format!(
            "invalid --schema {:?}: letters, digits and underscores, not starting with a digit",
            args.schema
        )));
    }
    let pg = parse_database_url(&args.database_url)?;
    let mut client = match pg.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ringnode: database unreachable: {}: {}",
                describe_target(&pg),
                with_sources(&e)
            );
            return Ok(EXIT_UNREACHABLE);
        }
    };
    let ring = match read(&mut client, &args.schema, &args.ring_id) {
        Ok(Some(ring)) => ring,
        Ok(None) => {
            let others = ring_ids(&mut client, &args.schema).unwrap_or_default();
            eprintln!(
                "ringnode: ring {:?} not found in schema {:?}{}",
                args.ring_id,
                args.schema,
                if others.is_empty() {
                    String::new()
                } else {
                    format!(" (rings there: {})", others.join(", "))
                }
            );
            return Ok(EXIT_NOT_FOUND);
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            eprintln!(
                "ringnode: ring {:?} not found: no leasering schema {:?} in {}",
                args.ring_id,
                args.schema,
                describe_target(&pg)
            );
            return Ok(EXIT_NOT_FOUND);
        }
        Err(e) if e.is_closed() || e.as_db_error().is_none() => {
            eprintln!("ringnode: database unreachable: {}", with_sources(&e));
            return Ok(EXIT_UNREACHABLE);
        }
        Err(e) => {
            return Err(AppError(format!(
                "cannot read ring {:?}: {}",
                args.ring_id,
                with_sources(&e)
            )))
        }
    };
    let text = if args.json {
        serde_json::to_string_pretty(&to_json(&ring)).expect("json") + "\n"
    } else {
        to_text(&ring)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    Ok(0)
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn ring_ids(client: &mut postgres::Client, schema: &str) -> Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        &format!("SELECT ring_id FROM {schema}.rings ORDER BY ring_id LIMIT 20"),
        &[],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Reads the ring in one repeatable-read transaction (one snapshot: the
/// members, vnodes and claims agree with each other).
fn read(
    client: &mut postgres::Client,
    s: &str,
    ring_id: &str,
) -> Result<Option<Ring>, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let Some(row) = tx.query_opt(
        &format!(
            "SELECT ring_size, epoch, extract(epoch FROM now() - changed_at)::float8 * 1000,
                    to_jsonb(r)->>'placement'
               FROM {s}.rings r WHERE ring_id = $1"
        ),
        &[&ring_id],
    )?
    else {
        return Ok(None);
    };
    let ring_size: i32 = row.get(0);
    let epoch: i64 = row.get(1);
    let changed_ago_ms: f64 = row.get(2);
    // `balanced max_moving=<m>` (leasering's text for a ring with a move
    // budget); an older schema has no placement column.
    let max_moving: Option<u32> = row.get::<_, Option<String>>(3).and_then(|t| {
        t.split_once(" max_moving=")
            .and_then(|(_, m)| m.parse().ok())
    });
    // `to_jsonb(m)`: the row whatever its columns, so that `metadata` (a
    // later schema's column) and `incarnation` read as null when absent.
    let rows = tx.query(
        &format!(
            "SELECT m.node_id, m.vnode_count, m.acked_epoch,
                    extract(epoch FROM m.expires_at - now())::float8 * 1000,
                    to_jsonb(m)->>'metadata',
                    (to_jsonb(m)->>'incarnation')::bigint,
                    COALESCE((to_jsonb(m)->>'ready')::bool, true)
               FROM {s}.members m WHERE m.ring_id = $1 ORDER BY m.node_id"
        ),
        &[&ring_id],
    )?;
    let mut members: Vec<Member> = rows
        .iter()
        .map(|r| Member {
            node_id: r.get(0),
            vnodes: r.get(1),
            acked_epoch: r.get(2),
            lease_left_ms: r.get(3),
            metadata: r.get(4),
            incarnation: r.get(5),
            ready: r.get(6),
            cordoned: false,
            claimed: 0,
            zone: None,
            capacity: None,
        })
        .collect();
    // Cordons (schema version 4), in a savepoint: an older schema has none.
    let cordons: Vec<String> = {
        let mut sp = tx.transaction()?;
        match sp.query(
            &format!("SELECT node_id FROM {s}.cordons WHERE ring_id = $1 ORDER BY node_id"),
            &[&ring_id],
        ) {
            Ok(rows) => {
                sp.commit()?;
                rows.iter().map(|r| r.get(0)).collect()
            }
            Err(_) => Vec::new(),
        }
    };
    for m in &mut members {
        m.cordoned = cordons.contains(&m.node_id);
    }
    // Pins (schema version 5), in a savepoint: an older schema has none.
    let pins: Vec<(u32, String)> = {
        let mut sp = tx.transaction()?;
        match sp.query(
            &format!(
                "SELECT partition, node_id FROM {s}.pins WHERE ring_id = $1 ORDER BY partition"
            ),
            &[&ring_id],
        ) {
            Ok(rows) => {
                sp.commit()?;
                rows.iter()
                    .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    };
    // The view as the members see it (a balanced ring's stored table
    // included), in a savepoint: a schema older than the library's has no
    // placement columns, and is then read as the hashed ring it is.
    let mut sp = tx.transaction()?;
    let stored = leasering::read_ring(&mut sp, s, ring_id);
    let view = match stored {
        Ok(Some(view)) => {
            sp.commit()?;
            view
        }
        _ => {
            drop(sp);
            let vnodes = tx.query(
                &format!("SELECT position, node_id FROM {s}.vnodes WHERE ring_id = $1"),
                &[&ring_id],
            )?;
            let pairs: Vec<(u32, String)> = vnodes
                .iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
                .collect();
            RingView::build(
                epoch as u64,
                ring_size as u32,
                pairs.iter().map(|(p, n)| (*p, n.as_str())),
            )
        }
    };
    for m in &mut members {
        if let Some(info) = view.member(&m.node_id) {
            m.zone = info.zone().map(str::to_string);
            m.capacity = info.capacity();
        }
    }
    let assigned: u32 = view.members().iter().map(|m| m.partition_count()).sum();
    let unassigned = if view.members().is_empty() {
        0
    } else {
        view.ring_size() - assigned
    };
    let by_inc: BTreeMap<i64, usize> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.incarnation.map(|inc| (inc, i)))
        .collect();
    // Claims: a version-1 schema has none (nothing waits for a claim).
    let claims = tx.query(
        &format!(
            "SELECT partition, holder, waiter IS NOT NULL FROM {s}.claims
              WHERE ring_id = $1 ORDER BY partition"
        ),
        &[&ring_id],
    );
    let mut waiting = Vec::new();
    if let Ok(claims) = claims {
        for r in &claims {
            let p = r.get::<_, i32>(0) as u32;
            let holder: Option<i64> = r.get(1);
            let marked: bool = r.get(2);
            let held_by = holder.and_then(|h| by_inc.get(&h).copied());
            if let Some(i) = held_by {
                members[i].claimed += 1;
            }
            let Some(owner) = view.owner_of(p) else {
                continue;
            };
            let held_name = held_by.map(|i| members[i].node_id.clone());
            if held_name.as_deref() != Some(owner) {
                waiting.push(Waiting {
                    partition: p,
                    assigned_to: owner.to_string(),
                    held_by: held_name,
                    marked,
                });
            }
        }
    }
    tx.commit()?;
    Ok(Some(Ring {
        ring_id: ring_id.to_string(),
        schema: s.to_string(),
        ring_size: ring_size as u32,
        placement: view.placement(),
        epoch,
        changed_ago_ms,
        members,
        cordons,
        waiting,
        unassigned,
        pins,
        max_moving,
        moves_pending: view.moves_pending(),
    }))
}

/// `0-3,7,9-10`.
fn ranges(ps: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ps.len() {
        let mut j = i;
        while j + 1 < ps.len() && ps[j + 1] == ps[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ps[i].to_string()
        } else {
            format!("{}-{}", ps[i], ps[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn secs(ms: f64) -> String {
    format!("{:.1} s", ms / 1000.0)
}

fn to_text(r: &Ring) -> String {
    let mut s = format!(
        "ring {:?} (schema {:?}): epoch {}, changed {} ago, {} partitions ({} placement), {} members\n",
        r.ring_id,
        r.schema,
        r.epoch,
        secs(r.changed_ago_ms),
        r.ring_size,
        r.placement,
        r.members.len()
    );
    if !r.members.is_empty() {
        let w = r
            .members
            .iter()
            .map(|m| m.node_id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        s.push_str(&format!(
            "\n{:<w$}  {:>11}  {:>9}  {:>6}  {:>7}  {:<17}  {:<10}  {:>5}  METADATA\n",
            "NODE", "LEASE LEFT", "ACKED", "VNODES", "CLAIMED", "STATE", "ZONE", "CAP"
        ));
        for m in &r.members {
            let lease = if m.lease_left_ms >= 0.0 {
                secs(m.lease_left_ms)
            } else {
                format!("expired {} ago", secs(-m.lease_left_ms))
            };
            let lag = r.epoch - m.acked_epoch;
            let acked = if lag > 0 {
                format!("{} (-{lag})", m.acked_epoch)
            } else {
                m.acked_epoch.to_string()
            };
            s.push_str(&format!(
                "{:<w$}  {:>11}  {:>9}  {:>6}  {:>7}  {:<17}  {:<10}  {:>5}  {}\n",
                m.node_id,
                lease,
                acked,
                m.vnodes,
                m.claimed,
                state(m),
                m.zone.as_deref().unwrap_or("-"),
                m.capacity.map_or("-".to_string(), |c| c.to_string()),
                m.metadata.as_deref().unwrap_or("-")
            ));
        }
    }
    let absent: Vec<&str> = r
        .cordons
        .iter()
        .filter(|n| !r.members.iter().any(|m| &m.node_id == *n))
        .map(String::as_str)
        .collect();
    if !absent.is_empty() {
        s.push_str(&format!(
            "\ncordoned, not members now: {}\n",
            absent.join(", ")
        ));
    }
    if !r.pins.is_empty() {
        let shown: Vec<String> = r
            .pins
            .iter()
            .map(|(p, n)| {
                if r.members.iter().any(|m| &m.node_id == n) {
                    format!("{p} -> {n}")
                } else {
                    format!("{p} -> {n} (away: placed as usual)")
                }
            })
            .collect();
        s.push_str(&format!("\npinned: {}\n", shown.join(", ")));
    }
    if !r.members.is_empty() && r.members.iter().all(|m| !m.ready || m.cordoned) {
        s.push_str("\nevery member is cordoned or not ready: no partition has an owner\n");
    } else if r.unassigned > 0 {
        s.push_str(&format!(
            "\n{} of {} partitions have no owner: the members' capacities add up to less than the ring (add members or capacity)\n",
            r.unassigned, r.ring_size
        ));
    }
    if let Some(m) = r.max_moving {
        s.push_str(&format!(
            "\nmove budget {m}: {} in motion, {} moves held back for later steps{}\n",
            r.waiting.len(),
            r.moves_pending,
            if r.moves_pending == 0 {
                " (balanced)"
            } else {
                ""
            }
        ));
    }
    if r.waiting.is_empty() {
        s.push_str("\nno partition waits for a claim\n");
    } else {
        s.push_str(&format!(
            "\n{} partitions wait for a claim:\n",
            r.waiting.len()
        ));
        let mut groups: BTreeMap<(String, Option<String>), Vec<u32>> = BTreeMap::new();
        for w in &r.waiting {
            groups
                .entry((w.assigned_to.clone(), w.held_by.clone()))
                .or_default()
                .push(w.partition);
        }
        for ((to, by), ps) in groups {
            let on = match by {
                Some(b) => format!("held by {b}"),
                None => "free, not taken yet".into(),
            };
            s.push_str(&format!(
                "  {to} waits for {} ({on}): {}\n",
                ps.len(),
                ranges(&ps)
            ));
        }
    }
    s
}

/// A member's eligibility, one word or two: `eligible`, `unready`,
/// `cordoned`, `cordoned,unready`.
fn state(m: &Member) -> &'static str {
    match (m.cordoned, m.ready) {
        (false, true) => "eligible",
        (false, false) => "unready",
        (true, true) => "cordoned",
        (true, false) => "cordoned,unready",
    }
}

/// `ringnode cordon` / `uncordon`: through [`leasering::cordon`], so that
/// the change is recorded under the ring's lock like any membership change.
pub fn cordon(args: CordonArgs, yes: bool) -> AppResult<u8> {
    if !valid_ident(&args.schema) {
        return Err(AppError(format!(
            "invalid --schema {:?}: letters, digits and underscores, not starting with a digit",
            args.schema
        )));
    }
    let pg = parse_database_url(&args.database_url)?;
    let mut client = match pg.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ringnode: database unreachable: {}: {}",
                describe_target(&pg),
                with_sources(&e)
            );
            return Ok(EXIT_UNREACHABLE);
        }
    };
    let verb = if yes { "cordoned" } else { "uncordoned" };
    match leasering::cordon(&mut client, &args.schema, &args.ring_id, &args.node_id, yes) {
        Ok(epoch) => {
            let mut out = std::io::stdout().lock();
            let _ = match epoch {
                Some(e) => writeln!(
                    out,
                    "{verb} node {:?} of ring {:?} (epoch {e})",
                    args.node_id, args.ring_id
                ),
                None => writeln!(
                    out,
                    "{verb} node {:?} of ring {:?} (no member's eligibility changed)",
                    args.node_id, args.ring_id
                ),
            };
            Ok(0)
        }
        Err(e) if e.kind() == leasering::ErrorKind::InvalidConfig => {
            eprintln!("ringnode: {e}");
            Ok(if e.to_string().contains("no ring") {
                EXIT_NOT_FOUND
            } else {
                2
            })
        }
        Err(e) if e.kind() == leasering::ErrorKind::Schema => {
            eprintln!("ringnode: {e}");
            Ok(EXIT_NOT_FOUND)
        }
        Err(e) => Err(AppError(format!(
            "cannot {} node {:?}: {e}",
            if yes { "cordon" } else { "uncordon" },
            args.node_id
        ))),
    }
}

fn to_json(r: &Ring) -> serde_json::Value {
    json!({
        "ring_id": r.ring_id,
        "schema": r.schema,
        "epoch": r.epoch,
        "ring_size": r.ring_size,
        "placement": r.placement.to_string(),
        "changed_ago_seconds": r.changed_ago_ms / 1000.0,
        "members": r.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "lease_left_seconds": m.lease_left_ms / 1000.0,
            "expired": m.lease_left_ms < 0.0,
            "acked_epoch": m.acked_epoch,
            "epoch_lag": r.epoch - m.acked_epoch,
            "vnodes": m.vnodes,
            "partitions_claimed": m.claimed,
            "metadata": m.metadata,
            "ready": m.ready,
            "cordoned": m.cordoned,
            "zone": m.zone,
            "capacity": m.capacity,
        })).collect::<Vec<_>>(),
        "partitions_unassigned": r.unassigned,
        "max_moving": r.max_moving,
        "moves_pending": r.moves_pending,
        "pins": r.pins.iter().map(|(p, n)| json!({
            "partition": p,
            "node_id": n,
            "present": r.members.iter().any(|m| &m.node_id == n),
        })).collect::<Vec<_>>(),
        "cordoned": r.cordons,
        "waiting": r.waiting.iter().map(|w| json!({
            "partition": w.partition,
            "assigned_to": w.assigned_to,
            "held_by": w.held_by,
            "waiter_marked": w.marked,
        })).collect::<Vec<_>>(),
    })
}

/// `ringnode pin` / `unpin`: through [`leasering::pin`] and
/// [`leasering::unpin`], recorded under the ring's lock like any
/// membership change.
pub fn pin(args: PinArgs, yes: bool) -> AppResult<u8> {
    if !valid_ident(&args.schema) {
        return Err(AppError(format!(
            "invalid --schema {:?}: letters, digits and underscores, not starting with a digit",
            args.schema
        )));
    }
    let node = match (&args.node_id, yes) {
        (Some(n), true) => Some(n.as_str()),
        (None, true) => {
            eprintln!(
                "ringnode: pin needs --node-id: the node to pin partition {} to",
                args.partition
            );
            return Ok(2);
        }
        (Some(n), false) => {
            eprintln!("ringnode: unpin takes no --node-id (got {n:?}): a partition has one pin");
            return Ok(2);
        }
        (None, false) => None,
    };
    let pg = parse_database_url(&args.database_url)?;
    let mut client = match pg.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ringnode: database unreachable: {}: {}",
                describe_target(&pg),
                with_sources(&e)
            );
            return Ok(EXIT_UNREACHABLE);
        }
    };
    let done = match node {
        Some(n) => leasering::pin(&mut client, &args.schema, &args.ring_id, args.partition, n),
        None => leasering::unpin(&mut client, &args.schema, &args.ring_id, args.partition),
    };
    let what = match node {
        Some(n) => format!(
            "pinned partition {} of ring {:?} to node {n:?}",
            args.partition, args.ring_id
        ),
        None => format!(
            "unpinned partition {} of ring {:?}",
            args.partition, args.ring_id
        ),
    };
    match done {
        Ok(epoch) => {
            let mut out = std::io::stdout().lock();
            let _ = match epoch {
                Some(e) => writeln!(out, "{what} (epoch {e})"),
                None => writeln!(out, "{what} (it was already)"),
            };
            Ok(0)
        }
        Err(e) if e.kind() == leasering::ErrorKind::InvalidConfig => {
            eprintln!("ringnode: {e}");
            Ok(if e.to_string().contains("no ring") {
                EXIT_NOT_FOUND
            } else {
                2
            })
        }
        Err(e) if e.kind() == leasering::ErrorKind::Schema => {
            eprintln!("ringnode: {e}");
            Ok(EXIT_NOT_FOUND)
        }
        Err(e) => Err(AppError(format!(
            "cannot {} partition {}: {e}",
            if yes { "pin" } else { "unpin" },
            args.partition
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[5]), "5");
    }

    #[test]
    fn schema_names() {
        assert!(valid_ident("leasering"));
        assert!(!valid_ident("a;drop"));
        assert!(!valid_ident("1a"));
    }
}
