//! The join, as a request that whoever holds the ring's lock absorbs
//! (group commit).
//!
//! A joiner files a request row and tries the ring's advisory lock without
//! waiting. The one that gets it *absorbs* every pending request at once:
//! it removes expired members, places each requester (positions are a pure
//! function of a node id and the positions taken, so it can place others),
//! inserts them all, records one change per member and notifies, in one
//! transaction. A joiner that did not get the lock waits for the next
//! change notification on the ring's channel and looks up what became of
//! its request: absorbed (it reads its view), refused (a typed error:
//! node id in use, ring size, protocol, ring full), or still pending (it
//! tries the lock again).
//!
//! Why: joins serialised one by one on the lock made a cold start of 512
//! members take ~32 s on two cores — each join held the lock for five
//! round trips of a database busy with everyone else, and each commit woke
//! every listening backend. Absorbed in batches, 512 joins are a few dozen
//! commits. Epochs stay one per member, so the change log, the NOTIFY
//! payloads and the members' delta application are unchanged.
//!
//! Safety does not depend on any of this: a member's lease starts at the
//! absorber's `statement_timestamp()` of the insert — not `now()`, which is
//! its *transaction's* start and may precede a request the transaction
//! reads later (an absorber paused between its statements would start the
//! joiner's lease before the joiner sent its request, the instant the
//! joiner counts its local lease from). The insert starts after the read
//! that saw the request committed, so after it was sent. And claims, not
//! the view, decide who may use a partition.

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::Client;

use std::sync::Arc;

use super::budget::Motion;
use super::membership::{
    parse_placement_text, Added, ChangeSet, Param, RecordValues, StoredPlacement, Vnodes,
};
use super::payload::Pins;
use super::{pg_i64, Store, Tx};
use crate::balanced::Table;
use crate::config::random_incarnation;
use crate::error::{Error, ErrorKind, Result};
use crate::placement::choose_positions;
use crate::protocol::input::Joined;
use crate::ring::RingView;

/// How long a joiner first waits for the lock holder's notification before
/// it looks at its request anyway (a holder that refused everyone, or only
/// removed nobody, does not notify); doubled after each wait that no
/// notification ended, up to [`OUTCOME_POLL_MAX`]: at a cold start of 512
/// members, the waiters' polls every 25 ms were two fifths of the
/// database's statements.
const OUTCOME_POLL: Duration = Duration::from_millis(25);

/// The longest wait of a joiner between two looks at its request.
const OUTCOME_POLL_MAX: Duration = Duration::from_millis(200);

/// A pending request, as the absorber reads it.
struct Request {
    incarnation: i64,
    node_id: String,
    vnode_count: u32,
    ring_size: u32,
    ttl_ms: f64,
    placement: String,
    metadata: Option<String>,
    /// Its placement attributes, stored form.
    attrs: Option<String>,
    /// Its readiness (`join_requests.ready`).
    ready: bool,
    /// Whether it joins eligible: ready and its node id not cordoned.
    eligible: bool,
}

/// Why the absorber refused a request (stored in `join_requests.refused`
/// for the requester to read).
enum Refusal {
    NodeId,
    RingSize(u32),
    /// The ring's placement as stored ([`placement_text`]).
    Placement(String),
    Protocol(Vec<String>),
    RingFull(usize),
}

impl Refusal {
    fn code(&self) -> String {
        match self {
            Refusal::NodeId => "node_id".into(),
            Refusal::RingSize(n) => format!("ring_size:{n}"),
            Refusal::Placement(p) => format!("placement:{p}"),
            Refusal::Protocol(names) => format!("protocol:{}", names.join(",")),
            Refusal::RingFull(free) => format!("ring_full:{free}"),
        }
    }
}

/// What became of this member's request.
enum Outcome {
    Joined(Joined),
    Refused(Error),
    Pending,
    /// Neither absorbed nor pending (it expired unabsorbed): file it again.
    Gone,
}

/// One join, kept across tries. A try can fail without saying whether it
/// took effect — the connection dies while the commit's answer is on its
/// way — and a blind retry would then find its own new row and be refused
/// as "node id in use" until that row expired (a ghost member for a TTL).
/// So every try of an attempt files the same incarnation, and a try after
/// the first looks up what became of it first: joined (the view is read),
/// refused, still waiting, or gone (then filed again).
#[derive(Debug, Clone, Copy)]
pub(crate) struct JoinAttempt {
    incarnation: i64,
    tried: bool,
    sent_at: Instant,
    /// When the caller gives up (`start()`'s deadline): a try waits for
    /// its request's absorption no longer than this.
    deadline: Option<Instant>,
}

impl JoinAttempt {
    /// A new attempt, made at `now` (before its first statement).
    pub(crate) fn new(now: Instant) -> JoinAttempt {
        JoinAttempt {
            incarnation: random_incarnation(),
            tried: false,
            sent_at: now,
            deadline: None,
        }
    }

    /// An attempt whose try of `incarnation` filed its request and lost
    /// the answer: the next try resumes it.
    #[cfg(test)]
    pub(crate) fn resumed(incarnation: i64) -> JoinAttempt {
        JoinAttempt {
            incarnation,
            tried: true,
            sent_at: Instant::now(),
            deadline: None,
        }
    }

    /// This attempt, given up at `deadline`.
    pub(crate) fn until(mut self, deadline: Instant) -> JoinAttempt {
        self.deadline = Some(deadline);
        self
    }

    /// An instant no later than the commit of the join, whichever try made
    /// it: the local lease counts from here.
    pub(crate) fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// The incarnation of a try that may have filed a request (or been
    /// absorbed), if any: the one a failed start withdraws.
    pub(crate) fn filed(&self) -> Option<i64> {
        self.tried.then_some(self.incarnation)
    }
}

impl Store {
    /// Joins the ring (docs/protocol.md §4, "Join") in one attempt of its own; the
    /// connection is left as it was.
    #[cfg(test)]
    pub(crate) fn join(&self, client: &mut Client) -> Result<Joined> {
        self.join_with(client, &mut JoinAttempt::new(Instant::now()), None)
    }

    /// One try of `attempt`. With `keep` (statements that set the
    /// connection up for its next owner: session settings), they are sent
    /// with the join's first statement. The connection is left listening
    /// on nothing (the `UNLISTEN` goes with the commit).
    pub(crate) fn join_with(
        &self,
        client: &mut Client,
        attempt: &mut JoinAttempt,
        keep: Option<&str>,
    ) -> Result<Joined> {
        let mut unlisten = self.session_state;
        let joined = self.join_listening(client, attempt, keep.unwrap_or(""), &mut unlisten);
        if joined.is_err() || unlisten {
            let _ = client.batch_execute("UNLISTEN *");
        }
        joined
    }

    /// The join. `keep` goes with the first `BEGIN`; `unlisten`: the
    /// connection is to be left unlistened — done with the absorbing
    /// commit (then cleared) when this try absorbs.
    fn join_listening(
        &self,
        client: &mut Client,
        attempt: &mut JoinAttempt,
        keep: &str,
        unlisten: &mut bool,
    ) -> Result<Joined> {
        // Behind a pooler in transaction mode nothing is listened to: the
        // waits below are then plain polls. The LISTEN goes with the first
        // BEGIN (one round trip): a joiner that does not get the ring's
        // lock hears its holder's commit.
        let mut prelude = if self.session_state {
            let listen = format!("LISTEN \"{}\"", self.channel);
            Some(if keep.is_empty() {
                listen
            } else {
                format!("{listen}; {keep}")
            })
        } else {
            None
        };
        let began = Instant::now();
        let mut give_up = began + Duration::from_millis(self.statement_timeout_ms * 4);
        if let Some(d) = attempt.deadline {
            give_up = give_up.min(d);
        }
        let mut filed = false;
        if attempt.tried {
            if let Some(p) = prelude.take() {
                client
                    .batch_execute(&p)
                    .map_err(|e| Error::db("listen for the ring's changes", e))?;
            }
            match self.resumed_outcome(client, attempt.incarnation)? {
                (Outcome::Joined(j), absorbed) => {
                    if absorbed {
                        log::info!(target: "leasering", ring = self.ring_id.as_str(), node = self.node_id.as_str();
                            "node {}: its earlier try's request was still pending: absorbed it (and every other pending one) under the ring's lock", self.node_id);
                    } else {
                        log::info!(target: "leasering", ring = self.ring_id.as_str(), node = self.node_id.as_str();
                            "node {}: an earlier try of its join had committed (its answer was lost)", self.node_id);
                    }
                    return Ok(j);
                }
                (Outcome::Refused(e), _) => return Err(e),
                (Outcome::Pending, _) => filed = true,
                // Nothing of it is left (never committed, or joined and
                // removed since; or expired unabsorbed): a new membership,
                // counted from now.
                (Outcome::Gone, _) => {
                    *attempt = JoinAttempt {
                        deadline: attempt.deadline,
                        ..JoinAttempt::new(Instant::now())
                    }
                }
            }
        }
        attempt.tried = true;
        let incarnation = attempt.incarnation;
        let mut poll = OUTCOME_POLL;
        loop {
            let mut tx = self.begin_with(client, prelude.take().as_deref().unwrap_or(""))?;
            let locked = self.file_and_try_lock(&mut tx, incarnation, !filed)?;
            filed = true;
            if locked {
                let after = if std::mem::take(unlisten) {
                    "UNLISTEN *"
                } else {
                    ""
                };
                let absorbed = self.absorb(tx, incarnation, after);
                if absorbed.is_err() && !after.is_empty() {
                    *unlisten = true;
                }
                match absorbed? {
                    Outcome::Joined(j) => return Ok(j),
                    Outcome::Refused(e) => return Err(e),
                    Outcome::Pending | Outcome::Gone => filed = false,
                }
                if !after.is_empty() {
                    // Unlistened with that commit: listen again.
                    *unlisten = true;
                    prelude = Some(format!("LISTEN \"{}\"", self.channel));
                }
                continue;
            }
            tx.commit()
                .map_err(|e| Error::db("commit the join request", e))?;
            // The holder's commit notifies; then see what it did with us.
            poll = match client.notifications().timeout_iter(poll).next() {
                Ok(Some(_)) => OUTCOME_POLL,
                _ => (poll * 2).min(OUTCOME_POLL_MAX),
            };
            while let Ok(Some(_)) = client.notifications().iter().next() {}
            match self.join_outcome(client, incarnation)? {
                Outcome::Joined(j) => return Ok(j),
                Outcome::Refused(e) => return Err(e),
                Outcome::Pending => {}
                Outcome::Gone => filed = false,
            }
            if Instant::now() > give_up {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the join request of {:?} to ring {:?} was not taken up within {:?}",
                        self.node_id,
                        self.ring_id,
                        give_up.saturating_duration_since(began)
                    ),
                ));
            }
        }
    }

    /// Files this member's request (when `file`) and tries the ring's lock
    /// without waiting, in one statement. With the lock, the request is in
    /// this transaction, visible to the absorption that follows.
    fn file_and_try_lock(&self, tx: &mut Tx<'_>, incarnation: i64, file: bool) -> Result<bool> {
        let s = &self.s;
        let placement = self.placement_text();
        let (vnodes, size) = (self.vnode_count as i32, self.ring_size as i32);
        let (ttl_ms, expiry_ms) = (self.ttl_s * 1000.0, self.statement_timeout_ms as f64 * 4.0);
        let rows = tx
            .query_typed(
                &format!(
                    "WITH ins AS (INSERT INTO {s}.join_requests
                                    (incarnation, ring_id, node_id, vnode_count, ring_size, ttl_ms, expires_at,
                                     placement, metadata, ready, attrs)
                                  SELECT $2, $1, $3, $4, $5, $6, now() + $7 * interval '1 millisecond', $11, $12, $13, $14
                                  WHERE $8),
                          lk AS (SELECT pg_try_advisory_xact_lock($9) AS got)
                     SELECT got, CASE WHEN got THEN set_config('idle_in_transaction_session_timeout', $10, true) END
                     FROM lk"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&incarnation, Type::INT8),
                    (&self.node_id, Type::TEXT),
                    (&vnodes, Type::INT4),
                    (&size, Type::INT4),
                    (&ttl_ms, Type::FLOAT8),
                    (&expiry_ms, Type::FLOAT8),
                    (&file, Type::BOOL),
                    (&self.ring_lock, Type::INT8),
                    (&self.ring_lock_idle(), Type::TEXT),
                    (&placement, Type::TEXT),
                    (&self.metadata, Type::TEXT),
                    (&self.is_ready(), Type::BOOL),
                    (&self.attrs, Type::TEXT),
                ],
            )
            .map_err(|e| Error::db("file the join request", e))?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    /// With the ring's lock: takes every pending request, places and
    /// inserts the accepted ones, records the changes, stores the
    /// refusals, and commits. Returns this member's outcome.
    fn absorb(&self, mut tx: Tx<'_>, me: i64, after: &str) -> Result<Outcome> {
        let (read, (stored_size, epoch, placement)) = self.read_for_absorb(&mut tx, me)?;
        let stored_text = placement.text();
        let mut taken = vec![false; stored_size as usize];
        for (p, _) in &read.vnodes {
            if let Some(t) = taken.get_mut(*p as usize) {
                *t = true;
            }
        }
        let mut live: Vec<&str> = read.live_ids.iter().map(String::as_str).collect();
        let mut accepted: Vec<(&Request, Vec<u32>)> = Vec::new();
        let mut refused: Vec<(&Request, Refusal)> = Vec::new();
        for req in &read.requests {
            let refusal = if !read.older.is_empty() {
                Some(Refusal::Protocol(read.older.clone()))
            } else if req.ring_size != stored_size {
                Some(Refusal::RingSize(stored_size))
            } else if req.placement != stored_text {
                Some(Refusal::Placement(stored_text.clone()))
            } else if live.contains(&req.node_id.as_str()) {
                Some(Refusal::NodeId)
            } else {
                match choose_positions(&req.node_id, req.vnode_count, stored_size, |p| {
                    taken[p as usize]
                }) {
                    Some(ps) => {
                        for p in &ps {
                            taken[*p as usize] = true;
                        }
                        live.push(&req.node_id);
                        accepted.push((req, ps));
                        None
                    }
                    None => Some(Refusal::RingFull(taken.iter().filter(|t| !**t).count())),
                }
            };
            if let Some(r) = refusal {
                refused.push((req, r));
            }
        }
        let last = epoch
            + if accepted.is_empty() {
                u64::from(!read.removed.is_empty())
            } else {
                accepted.len() as u64
            };
        let motion = if last > epoch {
            self.read_motion(&mut tx, &placement)?
        } else {
            None
        };
        let (table, budgets) = match &placement {
            StoredPlacement::Hashed => (None, Vec::new()),
            StoredPlacement::Balanced(stored, _) => {
                let (t, b) =
                    self.next_table(stored.as_deref(), motion.as_ref(), &read, &accepted)?;
                (Some(t), b)
            }
        };
        if epoch == 0 && last > epoch {
            // A new ring: its claim rows were inserted above. Without
            // statistics (autovacuum analyzes a table a minute or more
            // later) a plan of the take or the release — made once per
            // server connection, in the functions — guessed a ring's
            // claims at a handful of rows and wrote a take's claims by
            // reading all of the ring's into a materialized list that each
            // taken claim scanned again (768 rows read and 36 × 339
            // compared for a take of 36: 5 ms instead of 0.5). The
            // analysis counts this transaction's rows; its commit makes
            // the cached plans be made again. A role that does not own
            // the table gets a warning, not an error.
            tx.batch_execute(&format!("ANALYZE {}.claims", self.s))
                .map_err(|e| Error::db("analyze the claims of a new ring", e))?;
        }
        let encoded = table.as_ref().filter(|_| last > epoch).map(Table::encode);
        self.insert_absorbed(
            &mut tx,
            (epoch, last),
            &accepted,
            &refused,
            &read,
            (encoded, budgets),
        )?;
        tx.commit_with(after)
            .map_err(|e| Error::db("commit the join", e))?;
        if accepted.len() + refused.len() > 1 {
            log::debug!(target: "leasering",
                "node {}: absorbed {} join requests ({} refused) into epochs {}..={last}",
                self.node_id, accepted.len() + refused.len(), refused.len(), epoch + 1);
        }
        if let Some((_, r)) = refused.iter().find(|(q, _)| q.incarnation == me) {
            return Ok(Outcome::Refused(self.refusal_error(&r.code())));
        }
        let mine = accepted.iter().any(|(q, _)| q.incarnation == me);
        if !mine && !read.already_member {
            return Ok(Outcome::Gone);
        }
        let mut pairs: Vnodes = read.vnodes;
        let mut metadata = read.metadata;
        let mut ineligible = read.ineligible;
        let mut attrs = read.attrs;
        for (q, ps) in &accepted {
            pairs.extend(ps.iter().map(|p| (*p, q.node_id.clone())));
            if let Some(md) = &q.metadata {
                metadata.push((q.node_id.clone(), md.clone()));
            }
            if let Some(a) = &q.attrs {
                attrs.push((q.node_id.clone(), a.clone()));
            }
            if !q.eligible {
                ineligible.push(q.node_id.clone());
            }
        }
        Ok(Outcome::Joined(self.joined_from(
            last,
            &pairs,
            read.removed,
            me,
            table,
            Described {
                metadata,
                ineligible,
                attrs,
            },
        )))
    }

    /// The balanced table after this absorption: the stored one (checked
    /// against the members it must place), with the expired members
    /// removed in the first change and each accepted member added in its
    /// own, exactly as members applying the changes compute it.
    ///
    /// On a ring with a move budget (`motion`: the budget and who holds
    /// each claim), each change gets what the budget leaves it, in order;
    /// returned with the table, by change.
    fn next_table(
        &self,
        stored: Option<&[u8]>,
        motion: Option<&(u32, Motion)>,
        read: &AbsorbRead,
        accepted: &[(&Request, Vec<u32>)],
    ) -> Result<(Table, Vec<Option<u32>>)> {
        let allowance = |t: &Table| motion.map(|(m, mo)| mo.left(*m, t));
        let mut budgets = Vec::new();
        let mut t = self.table_or_empty(stored)?;
        // The members the table must place before this change: the
        // eligible ones with vnodes now, and the expired ones this change
        // removes (the table never holds an ineligible member).
        let mut weights: std::collections::BTreeMap<&str, u32> = Default::default();
        for (_, n) in &read.vnodes {
            if !read.ineligible.contains(n) {
                *weights.entry(n.as_str()).or_default() += 1;
            }
        }
        let consistent = t.members().len()
            == weights.len()
                + read
                    .removed
                    .iter()
                    .filter(|r| t.member(r).is_some())
                    .count()
            && t.members().iter().all(|m| {
                weights.get(m.node_id()) == Some(&m.weight())
                    || read.removed.iter().any(|r| r == m.node_id())
            });
        if !consistent {
            // Never written by this code; rebuilt rather than refusing every
            // change to the ring (members re-read the table on a gap).
            log::warn!(target: "leasering",
                "ring {:?}: the stored placement table does not match its members ({} vs {}): rebuilt",
                self.ring_id, t.members().len(), weights.len());
            // The pins are the ring's, not the members': carried over.
            let pins: Vec<(u32, String)> = t.pins().map(|(p, n)| (p, n.to_string())).collect();
            t = Table::empty(self.ring_size);
            for (n, w) in &weights {
                let a = read
                    .attrs
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, a)| a.as_str());
                t.join_with(n, *w, &crate::attrs::decode(a));
            }
            if !pins.is_empty() {
                t.apply_change(&[], &[], &[], None, (&pins, &[]));
            }
        }
        if accepted.is_empty() {
            let budget = allowance(&t);
            budgets.push(budget);
            t.apply_change_within(&read.removed, &[], &[], None, (&[], &[]), budget);
        }
        for (i, (q, ps)) in accepted.iter().enumerate() {
            let removed: &[String] = if i == 0 { &read.removed } else { &[] };
            let budget = allowance(&t);
            budgets.push(budget);
            t.apply_change_within(
                removed,
                &[],
                &[],
                Some((
                    q.node_id.as_str(),
                    ps.len() as u32,
                    q.eligible,
                    crate::attrs::decode(q.attrs.as_deref()),
                )),
                (&[], &[]),
                budget,
            );
        }
        Ok((t, budgets))
    }

    /// The `Joined` of this member from the ring's vnodes at `epoch`.
    fn joined_from(
        &self,
        epoch: u64,
        pairs: &Vnodes,
        removed: Vec<String>,
        me: i64,
        table: Option<Table>,
        described: Described,
    ) -> Joined {
        let Described {
            metadata,
            ineligible,
            attrs,
        } = described;
        let metadata: fnv::FnvHashMap<String, Arc<str>> = metadata
            .into_iter()
            .map(|(n, md)| (n, Arc::from(md)))
            .collect();
        let attrs: fnv::FnvHashMap<String, crate::attrs::MemberAttrs> = attrs
            .into_iter()
            .map(|(n, a)| (n, crate::attrs::decode(Some(&a))))
            .collect();
        let view = RingView::build_with(
            epoch,
            self.ring_size,
            pairs.iter().map(|(p, n)| (*p, n.as_str())),
            table.map(Arc::new),
            |n| metadata.get(n).cloned(),
            |n| !ineligible.iter().any(|x| x == n),
            |n| attrs.get(n).cloned().unwrap_or_default(),
        );
        let mut positions: Vec<u32> = pairs
            .iter()
            .filter(|(_, n)| *n == self.node_id)
            .map(|(p, _)| *p)
            .collect();
        positions.sort_unstable();
        Joined {
            view,
            positions,
            removed,
            incarnation: me,
        }
    }

    /// One snapshot, taken after the lock: removes the expired members
    /// (their deletion is not visible to the rest of the statement, hence
    /// `expires_at > now()` and the filter below) and takes the pending
    /// requests (dropping expired ones and refusals nobody read); reads the
    /// live members that hold a requested node id, the live members of
    /// protocol version 1, the vnodes, and whether this member is one
    /// already (absorbed by an earlier holder).
    fn read_for_absorb(
        &self,
        tx: &mut Tx<'_>,
        me: i64,
    ) -> Result<(AbsorbRead, (u32, u64, StoredPlacement))> {
        let s = &self.s;
        let size = self.ring_size as i32;
        let placement_text = self.placement_text();
        // The ring's row is created — with a free claim row for each
        // partition — or locked in the same statement (`DO UPDATE`, a
        // no-op, locks it and returns it): one round trip less per join.
        let rows = tx
            .query_typed(
                &format!(
                    "WITH up AS (INSERT INTO {s}.rings AS r (ring_id, ring_size, placement) VALUES ($1, $3, $4)
                                 ON CONFLICT (ring_id) DO UPDATE SET epoch = r.epoch
                                 RETURNING r.ring_size, r.epoch, (r.xmax = 0) AS created,
                                           r.placement, r.placement_table),
                          cl AS (INSERT INTO {s}.claims (ring_id, partition, token)
                                 SELECT $1, g, 0 FROM up, generate_series(0, up.ring_size - 1) g
                                 WHERE up.created
                                 ON CONFLICT (ring_id, partition) DO NOTHING),
                          gone AS (DELETE FROM {s}.members WHERE ring_id = $1 AND expires_at <= statement_timestamp()
                                   RETURNING node_id, incarnation),
                          req AS (DELETE FROM {s}.join_requests
                                  WHERE ring_id = $1 AND (refused IS NULL OR expires_at <= statement_timestamp())
                                  RETURNING incarnation, node_id, vnode_count, ring_size, ttl_ms, placement, metadata, ready, attrs,
                                            refused IS NULL AND expires_at > statement_timestamp() AS live)
                     SELECT 8, placement, ring_size, epoch, 0::float8, NULL::text, placement_table, NULL::text FROM up
                     UNION ALL
                     SELECT 0, node_id, 0, incarnation, 0::float8, NULL::text, NULL::bytea, NULL FROM gone
                     UNION ALL
                     SELECT 1, m.node_id, 0, 0, 0, NULL, NULL, NULL FROM {s}.members m
                      WHERE m.ring_id = $1 AND m.expires_at > statement_timestamp() AND m.node_id IN (SELECT node_id FROM req)
                     UNION ALL
                     SELECT 2, node_id, position, 0, 0, NULL, NULL, NULL FROM {s}.vnodes WHERE ring_id = $1
                     UNION ALL
                     SELECT 3, node_id, 0, 0, 0, NULL, NULL, NULL FROM {s}.members WHERE ring_id = $1 AND protocol = 1 AND expires_at > statement_timestamp()
                     UNION ALL
                     SELECT 4, node_id, vnode_count, incarnation, ttl_ms, metadata, NULL, attrs FROM req WHERE live
                     UNION ALL
                     SELECT 5, node_id, ring_size, incarnation, 0, placement, NULL, NULL FROM req WHERE live
                     UNION ALL
                     SELECT 6, node_id, 0, incarnation, 0, NULL, NULL, NULL FROM {s}.members WHERE incarnation = $2
                     UNION ALL
                     SELECT 7, node_id, CASE WHEN eligible THEN 0 ELSE 1 END, 0, 0, metadata, NULL, attrs FROM {s}.members
                      WHERE ring_id = $1 AND (metadata IS NOT NULL OR attrs IS NOT NULL OR NOT eligible)
                        AND expires_at > statement_timestamp()
                     UNION ALL
                     SELECT 9, q.node_id, CASE WHEN q.ready THEN 0 ELSE 1 END, q.incarnation, 0, NULL, NULL, NULL FROM req q
                      WHERE q.live AND (NOT q.ready OR EXISTS (SELECT 1 FROM {s}.cordons c
                                                              WHERE c.ring_id = $1 AND c.node_id = q.node_id))"
                ),
                &[
                    (&self.ring_id, Type::TEXT),
                    (&me, Type::INT8),
                    (&size, Type::INT4),
                    (&placement_text, Type::TEXT),
                ],
            )
            .map_err(|e| Error::db("lock and read the ring and its join requests", e))?;
        let mut read = AbsorbRead::default();
        let mut ring = None;
        let mut sizes: Vec<(i64, u32, String)> = Vec::new();
        let mut gone: Vec<i64> = Vec::new();
        let mut unready: Vec<(i64, bool)> = Vec::new();
        for r in &rows {
            match r.get::<_, i32>(0) {
                0 => {
                    read.removed.push(r.get(1));
                    gone.push(r.get(3));
                }
                1 => read.live_ids.push(r.get(1)),
                2 => read.vnodes.push((r.get::<_, i32>(2) as u32, r.get(1))),
                3 => read.older.push(r.get(1)),
                4 => read.requests.push(Request {
                    incarnation: r.get(3),
                    node_id: r.get(1),
                    vnode_count: r.get::<_, i32>(2) as u32,
                    ring_size: 0,
                    ttl_ms: r.get(4),
                    placement: String::new(),
                    metadata: r.get(5),
                    attrs: r.get(7),
                    ready: true,
                    eligible: true,
                }),
                5 => sizes.push((r.get(3), r.get::<_, i32>(2) as u32, r.get(5))),
                6 => read.already_member = true,
                7 => {
                    let n: String = r.get(1);
                    if r.get::<_, i32>(2) == 1 {
                        read.ineligible.push(n.clone());
                    }
                    if let Some(a) = r.get::<_, Option<String>>(7) {
                        read.attrs.push((n.clone(), a));
                    }
                    if let Some(md) = r.get::<_, Option<String>>(5) {
                        read.metadata.push((n, md));
                    }
                }
                // Not eligible: not ready (1), or cordoned (0).
                9 => unready.push((r.get::<_, i64>(3), r.get::<_, i32>(2) == 0)),
                8 => {
                    ring = Some((
                        r.get::<_, i32>(2) as u32,
                        r.get::<_, i64>(3) as u64,
                        StoredPlacement::from_row(r.get(1), r.get(6))?,
                    ))
                }
                _ => {}
            }
        }
        for q in &mut read.requests {
            if let Some((_, n, p)) = sizes.iter().find(|(i, _, _)| *i == q.incarnation) {
                q.ring_size = *n;
                q.placement = p.clone();
            }
            match unready.iter().find(|(i, _)| *i == q.incarnation) {
                Some((_, ready)) => (q.ready, q.eligible) = (*ready, false),
                None => (q.ready, q.eligible) = (true, true),
            }
        }
        // First come, first placed: a fixed order (by node id) so that two
        // requests for one id are decided the same way by any holder.
        read.requests.sort_by(|a, b| {
            a.node_id
                .cmp(&b.node_id)
                .then(a.incarnation.cmp(&b.incarnation))
        });
        read.vnodes.retain(|(_, n)| !read.removed.contains(n));
        read.metadata.retain(|(n, _)| !read.removed.contains(n));
        read.attrs.retain(|(n, _)| !read.removed.contains(n));
        read.ineligible.retain(|n| !read.removed.contains(n));
        read.gone = gone;
        let ring = ring.ok_or_else(|| Error::new(ErrorKind::Database, "lock the ring: no row"))?;
        Ok((read, ring))
    }

    /// Inserts the accepted members and their vnodes, records their
    /// changes (epochs `epoch + 1 ..= last`; the first also removes the
    /// expired members and frees their claims; the balanced table, if any,
    /// is the one after the last), and stores the refusals, in one
    /// statement.
    fn insert_absorbed(
        &self,
        tx: &mut Tx<'_>,
        (epoch, last): (u64, u64),
        accepted: &[(&Request, Vec<u32>)],
        refused: &[(&Request, Refusal)],
        read: &AbsorbRead,
        (table, budgets): (Option<Vec<u8>>, Vec<Option<u32>>),
    ) -> Result<()> {
        if last == epoch && refused.is_empty() {
            return Ok(());
        }
        let s = &self.s;
        let names: Vec<&str> = accepted.iter().map(|(q, _)| q.node_id.as_str()).collect();
        let vcs: Vec<i32> = accepted.iter().map(|(q, _)| q.vnode_count as i32).collect();
        let ttls: Vec<f64> = accepted.iter().map(|(q, _)| q.ttl_ms).collect();
        let incs: Vec<i64> = accepted.iter().map(|(q, _)| q.incarnation).collect();
        let mds: Vec<Option<&str>> = accepted
            .iter()
            .map(|(q, _)| q.metadata.as_deref())
            .collect();
        let readies: Vec<bool> = accepted.iter().map(|(q, _)| q.ready).collect();
        let eligibles: Vec<bool> = accepted.iter().map(|(q, _)| q.eligible).collect();
        let attrss: Vec<Option<&str>> = accepted.iter().map(|(q, _)| q.attrs.as_deref()).collect();
        let (mut vps, mut vns, mut vis) = (Vec::new(), Vec::new(), Vec::new());
        for (q, ps) in accepted {
            for (i, p) in ps.iter().enumerate() {
                vps.push(*p as i32);
                vns.push(q.node_id.as_str());
                vis.push(i as i32);
            }
        }
        let rincs: Vec<i64> = refused.iter().map(|(q, _)| q.incarnation).collect();
        let rns: Vec<&str> = refused.iter().map(|(q, _)| q.node_id.as_str()).collect();
        let rwhy: Vec<String> = refused.iter().map(|(_, r)| r.code()).collect();
        let acked = pg_i64(last);
        let mut params: Vec<Param<'_>> = vec![
            (&self.ring_id, Type::TEXT),
            (&names, Type::TEXT_ARRAY),
            (&vcs, Type::INT4_ARRAY),
            (&ttls, Type::FLOAT8_ARRAY),
            (&incs, Type::INT8_ARRAY),
            (&acked, Type::INT8),
            (&vps, Type::INT4_ARRAY),
            (&vns, Type::TEXT_ARRAY),
            (&vis, Type::INT4_ARRAY),
            (&rincs, Type::INT8_ARRAY),
            (&rns, Type::TEXT_ARRAY),
            (&rwhy, Type::TEXT_ARRAY),
            (&mds, Type::TEXT_ARRAY),
            (&readies, Type::BOOL_ARRAY),
            (&eligibles, Type::BOOL_ARRAY),
            (&attrss, Type::TEXT_ARRAY),
        ];
        let added: Vec<Added<'_>> = accepted
            .iter()
            .map(|(q, ps)| {
                (
                    q.node_id.as_str(),
                    ps.as_slice(),
                    q.metadata.as_deref(),
                    q.eligible,
                    q.attrs.as_deref(),
                )
            })
            .collect();
        let set = ChangeSet {
            first_epoch: epoch + 1,
            removed: &read.removed,
            eligible: &[],
            ineligible: &[],
            freeing: &read.gone,
            added: &added,
            table,
            pins: Pins::default(),
            budgets,
        };
        let mut values = RecordValues::default();
        let tail = if last > epoch {
            let (tail, record) = self.record_changes(&set, params.len() + 1, &mut values);
            params.extend(record);
            tail
        } else {
            "none AS (SELECT 1) SELECT 0::bigint".to_string()
        };
        tx.query_typed(
            &format!(
                "WITH mem AS (INSERT INTO {s}.members
                                (ring_id, node_id, vnode_count, acked_epoch, expires_at, incarnation, protocol, metadata,
                                 ready, eligible, attrs)
                              SELECT $1, a.n, a.vc, $6, statement_timestamp() + a.ttl * interval '1 millisecond', a.inc, 2, a.md,
                                     a.rd, a.el, a.at
                              FROM unnest($2::text[], $3::int4[], $4::float8[], $5::int8[], $13::text[], $14::bool[],
                                          $15::bool[], $16::text[])
                                   AS a(n, vc, ttl, inc, md, rd, el, at)),
                      vn AS (INSERT INTO {s}.vnodes (ring_id, position, node_id, vnode_idx)
                             SELECT $1, v.p, v.n, v.i FROM unnest($7::int4[], $8::text[], $9::int4[]) AS v(p, n, i)),
                      ref AS (INSERT INTO {s}.join_requests
                                (incarnation, ring_id, node_id, vnode_count, ring_size, ttl_ms, expires_at, refused)
                              SELECT r.inc, $1, r.n, 0, 0, 0, now() + interval '1 minute', r.why
                              FROM unnest($10::int8[], $11::text[], $12::text[]) AS r(inc, n, why)),
                      {tail}"
            ),
            &params,
        )
        .map(|rows| super::notified(rows.first().map_or(0, |r| r.get(0))))
        .map_err(|e| Error::db("insert the joining members", e))?;
        Ok(())
    }

    /// What became of the request of an earlier try, `me`. That try may
    /// still be committing on its lost connection (the server finishes a
    /// statement before it notices the client is gone): while it holds
    /// the ring's lock its outcome is not visible, and "gone" would be
    /// wrong. So the ring's lock is taken first (waiting, within the lock
    /// timeout): a try that absorbed requests committed or rolled back by
    /// then.
    ///
    /// A request still pending is absorbed then and there, with every other
    /// pending one (the second of the answer: `true`), since this
    /// transaction holds the ring's lock anyway. It only looked, once: at a
    /// cold start of 1,024 members on two cores, joins that had timed out
    /// queued 464 deep on the ring's lock, each took it in turn only to
    /// find its request pending and let it go to the next, and the joiners
    /// that try the lock without waiting — the absorbers — never got it:
    /// 625 requests waited, most of them past their expiry, and half the
    /// fleet stayed out of the ring for minutes.
    fn resumed_outcome(&self, client: &mut Client, me: i64) -> Result<(Outcome, bool)> {
        let mut tx = self.begin(client)?;
        tx.query_typed(
            "SELECT pg_advisory_xact_lock($1), set_config('idle_in_transaction_session_timeout', $2, true)",
            &[(&self.ring_lock, Type::INT8), (&self.ring_lock_idle(), Type::TEXT)],
        )
        .map_err(|e| Error::db("wait for the ring's lock before resuming the join", e))?;
        let outcome = self.join_outcome(&mut tx, me)?;
        if matches!(outcome, Outcome::Pending) {
            return self.absorb(tx, me, "").map(|o| (o, true));
        }
        tx.commit()
            .map_err(|e| Error::db("look up an earlier try of the join", e))?;
        Ok((outcome, false))
    }

    /// What became of request `me`, in one statement (one snapshot):
    /// absorbed (then the ring's epoch and vnodes), refused (the refusal is
    /// read and deleted), pending, or gone.
    fn join_outcome(&self, client: &mut Client, me: i64) -> Result<Outcome> {
        let s = &self.s;
        let rows = client
            .query_typed(
                &format!(
                    "WITH q AS (DELETE FROM {s}.join_requests WHERE incarnation = $2 AND refused IS NOT NULL
                                RETURNING refused),
                          m AS (SELECT 1 FROM {s}.members WHERE incarnation = $2)
                     SELECT 0, r.epoch, r.placement, 0, r.placement_table, NULL::text, NULL::text FROM {s}.rings r
                      WHERE r.ring_id = $1 AND EXISTS (SELECT 1 FROM m)
                     UNION ALL
                     SELECT 1, 0, v.node_id, v.position, NULL, NULL, NULL FROM {s}.vnodes v WHERE v.ring_id = $1 AND EXISTS (SELECT 1 FROM m)
                     UNION ALL
                     SELECT 2, 0, q.refused, 0, NULL, NULL, NULL FROM q
                     UNION ALL
                     SELECT 3, 0, NULL, 0, NULL, NULL, NULL FROM {s}.join_requests WHERE incarnation = $2 AND refused IS NULL
                     UNION ALL
                     SELECT 4, 0, mm.node_id, CASE WHEN mm.eligible THEN 0 ELSE 1 END, NULL, mm.metadata, mm.attrs
                       FROM {s}.members mm
                      WHERE mm.ring_id = $1 AND (mm.metadata IS NOT NULL OR mm.attrs IS NOT NULL OR NOT mm.eligible)
                        AND EXISTS (SELECT 1 FROM m)"
                ),
                &[(&self.ring_id, Type::TEXT), (&me, Type::INT8)],
            )
            .map_err(|e| Error::db("look up the join request", e))?;
        let mut epoch = None;
        let mut placement = StoredPlacement::Hashed;
        let mut pairs: Vnodes = Vec::new();
        let mut metadata = Vec::new();
        let mut ineligible = Vec::new();
        let mut attrs = Vec::new();
        for r in &rows {
            match r.get::<_, i32>(0) {
                0 => {
                    epoch = Some(r.get::<_, i64>(1) as u64);
                    placement = StoredPlacement::from_row(r.get(2), r.get(4))?;
                }
                1 => pairs.push((r.get::<_, i32>(3) as u32, r.get(2))),
                4 => {
                    let n: String = r.get(2);
                    if r.get::<_, i32>(3) == 1 {
                        ineligible.push(n.clone());
                    }
                    if let Some(a) = r.get::<_, Option<String>>(6) {
                        attrs.push((n.clone(), a));
                    }
                    if let Some(md) = r.get::<_, Option<String>>(5) {
                        metadata.push((n, md));
                    }
                }
                2 => return Ok(Outcome::Refused(self.refusal_error(&r.get::<_, String>(2)))),
                3 => return Ok(Outcome::Pending),
                _ => {}
            }
        }
        Ok(match epoch {
            Some(e) => {
                let table = match placement {
                    StoredPlacement::Hashed => None,
                    StoredPlacement::Balanced(t, _) => Some(self.table_or_empty(t.as_deref())?),
                };
                Outcome::Joined(self.joined_from(
                    e,
                    &pairs,
                    Vec::new(),
                    me,
                    table,
                    Described {
                        metadata,
                        ineligible,
                        attrs,
                    },
                ))
            }
            None => Outcome::Gone,
        })
    }

    /// The typed error of a refusal code (see [`Refusal::code`]).
    fn refusal_error(&self, code: &str) -> Error {
        let (kind, arg) = code.split_once(':').unwrap_or((code, ""));
        match kind {
            "node_id" => Error::node_id_in_use(&self.node_id, &self.ring_id),
            "ring_size" => {
                Error::ring_size_mismatch(&self.ring_id, arg.parse().unwrap_or(0), self.ring_size)
            }
            "placement" => match parse_placement_text(arg) {
                Some((p, stored)) if p == self.placement => {
                    Error::max_moving_mismatch(&self.ring_id, stored, self.max_moving)
                }
                parsed => Error::placement_mismatch(
                    &self.ring_id,
                    parsed.map(|(p, _)| p).unwrap_or_default(),
                    self.placement,
                ),
            },
            "protocol" => Error::protocol_mismatch(
                &self.ring_id,
                arg.split(',').map(str::to_string).collect(),
            ),
            _ => Error::new(
                ErrorKind::RingFull,
                format!(
                    "ring {:?} has {arg} free positions, node {:?} needs vnode_count {}",
                    self.ring_id, self.node_id, self.vnode_count
                ),
            ),
        }
    }
}

/// What the absorber read under the lock.
#[derive(Default)]
struct AbsorbRead {
    /// Expired members removed, and their incarnations.
    removed: Vec<String>,
    gone: Vec<i64>,
    /// Live members holding a requested node id.
    live_ids: Vec<String>,
    /// Live members of protocol version 1.
    older: Vec<String>,
    /// The remaining members' vnodes.
    vnodes: Vnodes,
    /// The live requests, in placement order.
    requests: Vec<Request>,
    /// Whether this member's incarnation is a member already.
    already_member: bool,
    /// The remaining members' metadata, where they have any.
    metadata: Vec<(String, String)>,
    /// The remaining members that are ineligible.
    ineligible: Vec<String>,
    /// The remaining members' placement attributes (stored form), where
    /// they have any.
    attrs: Vec<(String, String)>,
}

/// What a view needs besides the vnodes: each member's metadata,
/// eligibility and placement attributes (listed only where not the
/// default).
struct Described {
    metadata: Vec<(String, String)>,
    ineligible: Vec<String>,
    attrs: Vec<(String, String)>,
}
