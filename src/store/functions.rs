//! The take and the release of claims as server-side functions (schema
//! version 6): `take_claims` and `release_claims`, PL/pgSQL wrappers of one
//! statement each, which members call with `SELECT * FROM …`.
//!
//! Why functions: a take or a release runs on a connection borrowed from
//! the pool for it and given back soon after, so a statement prepared by
//! the client was planned again on nearly every borrow — the take's plan
//! cost 2.2 ms at p50 (22 ms at worst) of a handoff's critical path on two
//! busy cores, its execution 2.6 ms; once planned it is bound in 0.07 ms.
//! A PL/pgSQL function's plans belong to the server's backend and stay
//! there across borrows, so a pooled connection plans them once, and again
//! only when the tables' statistics change (an autovacuum `ANALYZE`
//! invalidates them). Behind a pooler in transaction mode, where nothing
//! the client prepares survives its transaction, the same holds per server
//! connection. (A connection used once or twice in its life — a cold start
//! of hundreds of members, each with a pool of its own — plans on nearly
//! every call either way.)
//!
//! The planner settings the statements need (generic plans, index probes
//! only: see [`Store::planner_sql`](super::Store)) are the functions' own
//! `SET` clauses, so a plan is made alike whatever the session's settings
//! are. The statements are unchanged: a function runs its one statement
//! with one snapshot, as the statement sent alone did, and its locks, its
//! `now()` (the transaction's start) and its notifications are the same.

use super::statements::{GRACE, HELD_BY, LIVE, MINE, TAKEN, TIMELINE};

/// The `SET` clauses of the functions: generic plans, and the planner
/// settings of the repeated statements.
///
/// A plan is made once per server connection, from the statistics of that
/// moment, so the statements leave the planner one sound choice: each
/// claim row is found by its key. A condition on the holder is written so
/// that it cannot prove `holder IS NOT NULL` — `COALESCE(c.holder, $2) <>
/// $2` rather than `c.holder IS NOT NULL AND c.holder <> $2`, `IS NOT
/// DISTINCT FROM $2` (`$2` is never null) rather than `= $2` — because a
/// condition that proves it lets the planner scan the partial index
/// `claims_by_holder` instead, which statistics taken before any claim was
/// held estimate at no rows: a take of 184 claims then read the 1,023
/// held claims of the ring once per claim (190,000 rows, 98 ms). And the
/// join that creates a ring analyzes the claims table (see `join.rs`).
const SETTINGS: &str = "SET plan_cache_mode = force_generic_plan \
                        SET enable_hashjoin = off SET enable_mergejoin = off \
                        SET enable_bitmapscan = off SET enable_seqscan = off";

/// `CREATE OR REPLACE` of both functions in schema `s` (quoted).
pub(super) fn functions_ddl(s: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {s}.take_claims(text, int8, int[], text, float8, text)
             RETURNS TABLE (r_kind int4, r_partition int4, r_token int8, r_node text)
             LANGUAGE plpgsql VOLATILE {SETTINGS}
         AS $leasering$
         #variable_conflict use_column
         BEGIN RETURN QUERY {take}; END
         $leasering$;
         CREATE OR REPLACE FUNCTION {s}.release_claims(text, int8, int[], int8[], text, int4, text)
             RETURNS TABLE (r_freed int8, r_notified int8)
             LANGUAGE plpgsql VOLATILE {SETTINGS}
         AS $leasering$
         #variable_conflict use_column
         BEGIN RETURN QUERY {release}; END
         $leasering$;",
        take = take_sql(s),
        release = release_sql(s),
    )
}

/// A free claim (never taken, released, or its holder's row
/// deleted) gets this member and a token above every earlier one
/// of the partition; one already this member's keeps its token.
/// The taker's member row is key-share locked first: its deletion
/// (cleanup after expiry) waits for the take, or the take finds
/// it gone. Free claims are locked in partition order, skipping
/// those another transaction has locked (a release or take in
/// flight). Claims held by others get this member as their
/// waiter (`$4`, its channel), so that their release tells it;
/// a claim another member already waits for gets the ring's
/// channel (`$6`) instead, so that its release tells every
/// member — each waiter is told, whichever views marked it (a
/// claim once had one waiter, the latest: a member whose mark a
/// stale view overwrote waited for the safety net, up to 2 s).
/// Also skipping locked ones, so a take never makes a release
/// wait: a claim that is neither taken nor marked (locked, or
/// freed since the snapshot) is looked at again at once.
/// Lock order is the partition order everywhere (takes,
/// releases, removals), so that nothing deadlocks. Every claim
/// row exists from the ring's creation on: inserting them here,
/// at a cold start, made takes wait for each other's inserts
/// (a unique-key check waits for the inserting transaction);
/// `fresh` only covers rows that are missing all the same.
///
/// Every part is linear in the partitions asked for: who holds a marked
/// claim is read from the row its lock saw, one member found by its key
/// each — it was a test of each asked-for partition against the list of
/// marked ones, quadratic: at a cold start, when the first members' views
/// give each of them thousands of partitions still held by others, a take
/// cost 43 ms on average over 2,483 takes of 512 members, most of the
/// database's time. And a claim whose mark (read under the lock) is the
/// one this take would write is locked but not written again: a take
/// repeated while its claims are still held wrote a new version of every
/// one of them each time.
///
/// Failover (docs/protocol.md §6): tokens are at least
/// `(timeline - 1) << 32`, above every token of an earlier
/// timeline; and nothing is taken (nor returned as already this
/// member's) until `$5` seconds after the first take served on
/// this timeline (`timelines`; the schema's creation records its
/// own timeline as `-infinity`: no grace at a cold start). `g.wait_ms` is
/// the grace left (NULL: none), or a short retry when a
/// concurrent first take's row is not visible to this snapshot.
///
/// Parameters: `$1` ring, `$2` the taker's incarnation, `$3` the
/// partitions, `$4` its channel, `$5` the failover grace (s), `$6` the
/// ring's channel. Rows: (kind, partition, token, node id).
fn take_sql(s: &str) -> String {
    format!(
        "WITH me AS (SELECT m.incarnation FROM {s}.members m
                                 WHERE m.ring_id = $1 AND m.incarnation = $2 AND m.expires_at > now()
                                 FOR KEY SHARE),
                     r AS (SELECT epoch FROM {s}.rings WHERE ring_id = $1),
                     tl AS (SELECT {TIMELINE} AS t),
                     seen AS (INSERT INTO {s}.timelines (timeline, first_served)
                              SELECT tl.t, now() FROM tl
                              ON CONFLICT (timeline) DO NOTHING
                              RETURNING first_served),
                     fs AS (SELECT COALESCE((SELECT first_served FROM seen),
                                            (SELECT x.first_served FROM {s}.timelines x, tl WHERE x.timeline = tl.t)) AS at),
                     g AS (SELECT CASE WHEN fs.at IS NULL THEN 50::float8
                                       WHEN fs.at <= now() - $5 * interval '1 second' THEN NULL
                                       ELSE (extract(epoch FROM fs.at - now()) + $5) * 1000 END AS wait_ms
                           FROM fs),
                     ok AS (SELECT 1 FROM me, g WHERE g.wait_ms IS NULL),
                     cur AS (SELECT w.p, c.holder, c.token, c.found
                             FROM unnest($3::int[]) AS w(p)
                             LEFT JOIN LATERAL (SELECT c.holder, c.token, true AS found FROM {s}.claims c
                                                WHERE c.ring_id = $1 AND c.partition = w.p OFFSET 0) c ON true),
                     free AS (SELECT f.p FROM unnest($3::int[]) AS w(p),
                              LATERAL (SELECT c.partition AS p FROM {s}.claims c
                                       WHERE c.ring_id = $1 AND c.partition = w.p AND c.holder IS NULL
                                       FOR UPDATE SKIP LOCKED) f
                              WHERE EXISTS (SELECT 1 FROM ok)),
                     took AS (UPDATE {s}.claims c SET holder = $2,
                                     token = GREATEST(c.token + 1, r.epoch, (tl.t - 1) << 32),
                                     claimed_at = now(), waiter = NULL
                              FROM free f, r, tl WHERE c.ring_id = $1 AND c.partition = f.p
                              RETURNING c.partition, c.token),
                     fresh AS (INSERT INTO {s}.claims (ring_id, partition, holder, token, claimed_at)
                               SELECT $1, cur.p, me.incarnation, GREATEST(r.epoch, (tl.t - 1) << 32), now()
                               FROM cur, me, r, tl WHERE cur.found IS NULL AND EXISTS (SELECT 1 FROM ok)
                               ORDER BY cur.p
                               ON CONFLICT (ring_id, partition) DO NOTHING
                               RETURNING partition, token),
                     mk AS (SELECT k.p, k.holder, k.waiter FROM cur,
                            LATERAL (SELECT c.partition AS p, c.holder, c.waiter FROM {s}.claims c
                                     WHERE c.ring_id = $1 AND c.partition = cur.p
                                       AND COALESCE(c.holder, $2) <> $2
                                     FOR UPDATE SKIP LOCKED) k
                            WHERE cur.holder <> $2 AND EXISTS (SELECT 1 FROM ok)),
                     marked AS (UPDATE {s}.claims c
                                SET waiter = CASE WHEN c.waiter IS NULL OR c.waiter = $4 THEN $4 ELSE $6 END
                                FROM mk WHERE c.ring_id = $1 AND c.partition = mk.p
                                  AND mk.waiter IS DISTINCT FROM (CASE WHEN mk.waiter IS NULL OR mk.waiter = $4 THEN $4 ELSE $6 END)
                                RETURNING c.partition)
                     SELECT {TAKEN}, t.partition, t.token, NULL::text FROM took t
                     UNION ALL
                     SELECT {TAKEN}, f.partition, f.token, NULL FROM fresh f
                     UNION ALL
                     SELECT {MINE}, cur.p, cur.token, NULL FROM cur WHERE cur.holder = $2 AND EXISTS (SELECT 1 FROM ok)
                     UNION ALL
                     SELECT {HELD_BY}, k.p, 0, m.node_id FROM mk k JOIN {s}.members m ON m.incarnation = k.holder
                     UNION ALL
                     SELECT {LIVE}, 0, tl.t, NULL FROM me, tl
                     UNION ALL
                     SELECT {GRACE}, 0, ceil(g.wait_ms)::int8, NULL FROM g WHERE g.wait_ms IS NOT NULL"
    )
}

/// Frees only a claim this member holds under the named token, so
/// a stale or repeated release never frees a newer claim; every
/// member waiting for one (its take marked the claim, under the
/// same row lock) hears of it at once, in one notification per
/// release: on the one waiter's channel when all the freed
/// claims name the same one, else on the ring's (`$7`), which
/// every member hears; nobody when nobody waits. `$5` is the
/// payload's head, the partitions follow when they fit (see
/// `payload::release_payload`).
///
/// Parameters: `$1` ring, `$2` the holder's incarnation, `$3` partitions
/// and `$4` their tokens, `$5` the payload's head, `$6` the largest
/// payload, `$7` the ring's channel. One row: (claims freed,
/// notifications sent).
fn release_sql(s: &str) -> String {
    format!(
        "WITH lk AS (SELECT c.p, c.waiter
                                 FROM unnest($3::int[], $4::bigint[]) AS w(p, tok),
                                      LATERAL (SELECT c.partition AS p, c.waiter FROM {s}.claims c
                                               WHERE c.ring_id = $1 AND c.partition = w.p AND c.token = w.tok
                                                 AND c.holder IS NOT DISTINCT FROM $2
                                               FOR UPDATE) c),
                     rel AS (UPDATE {s}.claims c SET holder = NULL, released_at = now(), waiter = NULL
                             FROM lk WHERE c.ring_id = $1 AND c.partition = lk.p
                             RETURNING c.partition),
                     n AS (SELECT CASE WHEN count(DISTINCT lk.waiter) = 1 THEN min(lk.waiter) ELSE $7 END AS ch,
                                  $5 || ' ' || string_agg(lk.p::text, ',' ORDER BY lk.p) AS pl
                           FROM lk WHERE lk.waiter IS NOT NULL AND EXISTS (SELECT 1 FROM rel)
                           HAVING count(*) > 0)
                     SELECT (SELECT count(*) FROM rel),
                            (SELECT count(pg_notify(n.ch, CASE WHEN octet_length(n.pl) > $6 THEN $5 ELSE n.pl END)) FROM n)"
    )
}
