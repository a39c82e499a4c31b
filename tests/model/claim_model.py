"""Randomised model check of the per-partition claim handoff (docs/protocol.md §4).

The ring view says who *should* own a partition; a claim row per partition says who *may*
use it. A member uses partition p only while it holds p's claim and its local lease is
valid. A claim is taken only when it is free: never claimed, released by its holder, or its
holder's membership row is gone (removed after its lease expired in the database).
A holder stops using p locally *before* it writes the release; with a drain hook the
release is written only after the user's work on p has stopped (drain), so the next owner
starts only after that.

Discrete-event simulation: one database (atomic operations at real time; DB clock = real
time), members with drifting clocks, random request/reply delays (heavy tail), pauses up to
3 x TTL, crashes, graceful leaves, joins, database outages, rejoins under the same name.
Notifications (issue 17). Every membership change (join, leave, removal) notifies the ring: each
member hears it after a delivery delay and adopts the ring it carries. A take that finds a claim
held by a live member marks itself as the claim's waiter: the claim names that one member, or --
once a second member marks it -- ALL. A release of claims somebody waited for sends one
notification: to the one waiter when the freed claims name the same one, else to every member.
A member takes again at once: the partitions a release names that it waits for (or asked for in
a take whose answer has not come yet: a notification may overtake an answer); those whose holder
a change removed (also a holder that a take's answer names but that the member's view no longer
has: the removal was heard first); everything waiting after its connection to the database was
re-established or the timeline changed. Outside quiet periods a notification is lost now and
then; the safety net then retakes everything waiting after a backoff (100 ms doubling to 2 s).
Invariants checked every 5 ms of simulated time:
  1. no two members *report* the same partition (owns(p) true);
  2. no two members are *busy* on the same partition (reported, or draining before the
     release is written) -- the user-level guarantee of the drain hook;
  3. tokens strictly increase per partition.
  4. liveness: after a quiet last stretch (no faults, database up, no pauses) every partition
     is in use by exactly one member.
  5. liveness without timers (issue 17, widened by issue 19): in that quiet stretch, bursts of 2 or 4 graceful leaves
     and as many joins at one instant, every 0.3-1.5 s (views disagree for a moment, so two
     members may wait for one claim); a claim that is free while the member the database's ring
     gives it to has it pending is taken within TAKE_BOUND: one delivery and one request
     (2 x 20 ms), plus one check interval -- no backoff in between. And from the moment such a
     claim is free, whether or not the member's view has the partition yet, within VIEW_BOUND
     (one more delivery: the change's own notification) -- no heartbeat in between. The grace
     of a new timeline is a timer the protocol states, and is not measured.

Eligibility (issue 19). A member may join not ready (it takes nothing until it says it is), and
become ready, or not, later; an operator may cordon a member by name, and uncordon it -- stored
in the database, so a member restarted under a cordoned name joins cordoned. A member is
*eligible* when it is ready and not cordoned, and the ring places partitions on eligible members
only. An eligibility change is a membership change: it bumps the epoch in the transaction that
writes it and notifies the ring, so the member that loses partitions drains and releases them
(a live member giving up a share, as on a join) and the ones that gain them take them as after
any other change. Chaos toggles readiness and cordons at random; the quiet bursts join some
members not ready (ready 50-300 ms later) and cordon and uncordon now and then, all inside the
liveness check (an ineligible member owns nothing in the database's ring, so nobody waits for
it).
Move budget (issue 19). Odd seeds place partitions with a balanced table (equal shares, rounding
toward what is held) and a move budget M = BUDGET instead of hashing: every membership change
(join, leave, removal, eligibility) recomputes the table under the ring's lock; partitions whose
owner is gone or ineligible (orphans) are placed at once, and moves between two live members are
limited to M minus the partitions *in motion* (the table gives them to a member that does not hold
their claim). A member whose take got claims asks for the next *step* (and now and then, as a
safety net, without one): under the lock, once a quarter of the budget is free (or what is
pending fits), the moves it allows are made as a change that bumps the epoch and notifies, like
any other. Checked: 6. at every check, at most M partitions that
a budgeted move gave to a live member have not been taken by it yet; 7. at the end the table is
balanced (every step was made). Every rule above holds with the table as the ring.
Database failover (docs/protocol.md §6). At random moments (about 4 per run, none
in the quiet last stretch) the primary dies, requests and replies in flight are lost, and after
an outage of 0.1-2 s a standby is promoted on a new timeline (the DB's timeline starts at 1 and
increments; its clock is continuous). A *lossy* promotion (an asynchronous standby that lagged)
comes up with the database as it was at t_s = t_fail - lag, lag random in (0, TTL/2]: a copy of
the state (members, claims with holders and tokens, epoch, the timelines table) is kept every
50-100 ms and the last one before t_s is restored; everything written after it is gone, rows of
the timelines table included. A *lossless* promotion (a synchronous standby) loses nothing.
Incarnations are random numbers in the library, so they stay unique across timelines (not
reverted). Three rules make it safe:
  A. token floor: a take gives a new holder max(old + 1, (timeline - 1) * 2**32), above every
     token an earlier (possibly lost) timeline can have issued;
  B. grace: table timelines (timeline -> first_served); the schema's creation records its own
     timeline as -infinity (no grace at a cold start), and the first take a later timeline
     serves inserts (timeline, now). No take succeeds (nor returns a claim already the taker's)
     before first_served + GRACE; a refused take says how long is left and the member retries.
     GRACE (the library's failover_grace) is TTL + MARGIN: every lease granted on the old
     primary has ended by then, so a claim the new primary lost is not handed on while its
     old holder may still use it;
  C. check on a timeline change: renewal replies (and takes, before any timeline is known)
     carry the timeline; a member remembers the first it sees. A successful renewal from
     another timeline is checked against that reply: DB epoch >= the member's view epoch, and
     every claim it uses (active or draining, as (partition, token)) held by its incarnation
     with that token. Pass: adopt the timeline. Fail: fence -- stop using everything at once,
     delete its own (stale) row, rejoin with a new incarnation.
Views: a member here reads the whole ring whenever it adopts a view, so a view made under the
same epoch on another timeline is never mixed with its own; the library's members and observers
read the whole ring again after a timeline change for the same reason (deltas are numbered by
epoch, and epochs of two timelines are not comparable).
Invariant 3 is over tokens members activated with (not the DB's current values), so tokens
issued on a lost timeline count. At the end the run prints the failovers (lossy, lossless),
timeline fences and takes refused in a grace.
Run:  python3 claim_model.py [SEEDS] [MUTATION]
Mutations that must produce violations: no_exclusive, no_deadline_check, release_before_stop,
untokened_release (safety); no_incarnation (liveness: a restarted member under the same name
would be blocked by its predecessor's claims forever -- the bursts leave only members that an
earlier burst started, so that the blocked ones stay); and for failover:
  no_timeline_token (drop rule A: the new timeline reissues token numbers that members already
    used on the lost one -- invariant 3);
  no_timeline_grace (GRACE = 0 with lossy promotions: a claim lost with the old timeline is
    taken at once while its old holder, not yet renewed on the new primary, still uses it);
  no_timeline_check (rule C off: a member keeps using a claim the new primary lost; the next
    handoff of that partition then waits for nobody -- the taker starts while it still uses it.
    Needs a take lost in the lag and a later handoff of that very partition, so it breaks fewer
    seeds than the other two).
  unseeded (rule B as first built: no row at the schema's creation; the first take inserts
    -infinity if the table is empty, taking it for a fresh database): with one extra lossy
    failover in the first 4 s whose standby lags behind the first take, the new primary's table
    is empty, so takes get no grace while members still use claims of the lost timeline.
  single_waiter (issue 17: a claim has one waiter, the latest take to mark it): a member whose mark
    a stale view's take overwrote is not told of the release and waits for the safety net's
    backoff -- invariant 5.
  silent_eligibility (issue 19: an eligibility change bumps the epoch but notifies nobody, as a
    column update outside the membership path would): the members that gain partitions learn it
    from their next heartbeat -- invariant 5.
  per_change_budget (each change may move M, whatever is still in motion: a burst of joins puts
    2M and more in motion -- invariant 6); no_budget (a change moves everything at once --
    invariant 6); no_step (nobody asks for the next step: the table stays unbalanced after the
    first M moves -- invariant 7).
Modes (must stay clean): cold_failover -- that extra early failover with rule B as built;
  ring_release -- every release that freed a waited-for claim notifies every member (the
    simpler rule, at the cost of a delivery to every member per release);
  lossless_no_grace -- every promotion lossless and GRACE = 0: nothing is lost, the check
  passes, tokens are unchanged; justifies failover_grace = 0 where only synchronous standbys
  are ever promoted (mixing lossy ones in is no_timeline_grace).
Mutations that do NOT break it, and why: no_removal_recheck (a holder removed while a take that
found it holding was on its way, the removal heard before the take's answer: the answer's
partitions then wait for the safety net; it needs a leave to commit in the few milliseconds
between a take and its answer, for a claim the taker did not wait for before, and the bursts'
takes mostly come after the leaves they race with; in the library a take's answer and the
notifications share the watcher's connection, where PostgreSQL delivers a notification only
after the statement's result, so the rule guards the order of takes on other connections),
resurrect (claims are freed only when a member row is
deleted, so renewing an expired-but-present row cannot let two hold one claim; the rule stays as
defence in depth), claim_while_releasing (a late answer with a token being released is never
used), no_drain (drains are a user-level promise, checked by invariant 2 only when enabled).
"""
import heapq, random, sys

R = 32
TTL = 10.0
MARGIN = TTL / 10
RHO = 0.02
MUT = None
GRACE = TTL + MARGIN     # failover_grace: nothing is taken this long after a new timeline's first take
TL_STRIDE = 2 ** 32      # tokens on timeline k are >= (k - 1) * TL_STRIDE
SNAP_EVERY = (0.05, 0.1) # the standby's replay position advances in steps of this much simulated time
FIRST_TAKE_RETRY = 0.1   # the safety net for a lost notification: retake everything waiting after
MAX_TAKE_BACKOFF = 2.0   # 100 ms, doubling, at most 2 s (the library's FIRST_TAKE_RETRY/MAX_TAKE_BACKOFF)
QUIET_DELAY = (0.001, 0.02)  # a request, a reply or a notification in a quiet period
NOTE_LOSS = 0.05         # a notification lost (outside quiet periods): only the safety net finds it
# Liveness in a quiet period: once a claim is free and the member that should own it (by the
# database's ring) has that partition pending in its view, the claim is taken within one
# notification and one take: a delivery, then a request -- no timer in between. Checked every
# CHECK_EVERY, hence the slack of one check.
CHECK_EVERY = 0.005
TAKE_BOUND = 2 * QUIET_DELAY[1] + CHECK_EVERY + 1e-6
# The same, counted whether or not the member's view has the partition yet (issue 19): the
# change that gave it to the member notifies it too, so its view lags by at most one delivery.
VIEW_BOUND = TAKE_BOUND + QUIET_DELAY[1]
BUDGET = 4               # max_moving of the seeds with balanced placement (issue 19)


class DB:
    def __init__(s):
        s.epoch = 0
        s.members = {}   # name -> dict(inc, expires, vnodes, ready)
        s.cordoned = set()  # node ids an operator cordoned: kept across the member's restarts
        s.claims = {}    # p -> dict(owner=(name, inc) or None, token, waiter)
        # waiter: None, a member's name (the one member waiting: its release tells it alone), or
        # ALL (two or more waited: the release tells every member, in one notification)
        s.up = True
        s.inc = 0          # incarnations are random in the library: unique across timelines, not reverted
        s.timeline = 1     # the server's timeline (not a table: it is the promoted server's own)
        # table timelines: timeline -> first_served (reverted with the rest). Its first row is
        # written with the schema, before any member exists (not so under mutation unseeded: the
        # first take then finds the table empty and takes that for a fresh database)
        s.timelines = {} if MUT == 'unseeded' else {1: float('-inf')}
        # the move budget (issue 19): None -- hashed placement, a function of the ring; else
        # balanced placement with at most `budget` live-to-live moves in motion (see place())
        s.budget = None
        s.table = [None] * R   # p -> the member the balanced placement gives it to
        s.moving = set()       # partitions a budgeted move gave a new owner that has not taken them yet

    def snapshot(s):
        """What a standby that replayed up to now would hold."""
        return dict(epoch=s.epoch, cordoned=set(s.cordoned), table=list(s.table), moving=set(s.moving),
                    members={n: dict(m, vnodes=set(m['vnodes'])) for n, m in s.members.items()},
                    claims={p: dict(c) for p, c in s.claims.items()},
                    timelines=dict(s.timelines))

    def restore(s, snap):
        s.epoch = snap['epoch']
        s.cordoned = set(snap['cordoned'])
        s.members = {n: dict(m, vnodes=set(m['vnodes'])) for n, m in snap['members'].items()}
        s.claims = {p: dict(c) for p, c in snap['claims'].items()}
        s.timelines = dict(snap['timelines'])
        s.table = list(snap['table'])
        s.moving = set(snap['moving'])

    def ring(s):
        """Vnode -> member, of the eligible members (ready, not cordoned) only; with a move budget,
        the balanced table instead (what members adopt: `owners` reads either)."""
        if s.budget is not None:
            return ('table', tuple(s.table))
        return {p: n for n, m in s.members.items() if m['ready'] and n not in s.cordoned
                for p in m['vnodes']}

    def incs(s):
        return {n: m['inc'] for n, m in s.members.items()}

    def free(s, p):
        c = s.claims.get(p)
        return c is None or c['owner'] is None or not s.holder_present(c['owner'])

    def holder_present(s, owner):
        if owner is None:
            return False
        name, inc = owner
        m = s.members.get(name)
        if MUT == 'no_incarnation':
            return m is not None
        return m is not None and m['inc'] == inc

    def remove_expired(s, t):
        dead = [n for n, m in s.members.items() if m['expires'] <= t]
        for n in dead:
            del s.members[n]
        if dead:
            s.epoch += 1
            s.place()
        return dead

    def holder_name(s, p):
        c = s.claims.get(p)
        if c is None or not s.holder_present(c['owner']):
            return None
        return c['owner'][0]

    def in_motion(s):
        """Partitions the table gives to a member that does not hold their claim (yet)."""
        return sum(1 for p, o in enumerate(s.table) if o is not None and s.holder_name(p) != o)

    def pending(s):
        """Partitions still to move before the table is balanced (targets as in place())."""
        elig = s.eligible()
        if not elig:
            return 0
        cnt = {n: 0 for n in elig}
        for o in s.table:
            if o in cnt:
                cnt[o] += 1
        tgt = s.targets(cnt)
        return sum(max(0, tgt[n] - cnt[n]) for n in elig)

    def eligible(s):
        return sorted(n for n, m in s.members.items() if m['ready'] and n not in s.cordoned)

    @staticmethod
    def targets(cnt):
        """Equal shares, the extra units to those holding most now (then by name): sticky."""
        names = sorted(cnt, key=lambda n: (-cnt[n], n))
        base, extra = divmod(R, len(names))
        return {n: base + (1 if i < extra else 0) for i, n in enumerate(names)}

    def place(s):
        """Balanced placement with a move budget (issue 19), at every membership change and step,
        under the ring's lock. Partitions of members that left or became ineligible (orphans) are
        placed at once: nobody serves them. Moves between two live members are limited to
        budget - in_motion (under per_change_budget: to budget, whatever is still in motion)."""
        if s.budget is None:
            return
        elig = s.eligible()
        s.moving = {p for p in s.moving if s.table[p] in elig and s.holder_name(p) != s.table[p]}
        if not elig:
            s.table = [None] * R
            return
        cnt = {n: 0 for n in elig}
        for p, o in enumerate(s.table):
            if o in cnt:
                cnt[o] += 1
            else:
                s.table[p] = None
        tgt = s.targets(cnt)
        k = s.budget if MUT == 'per_change_budget' else max(0, s.budget - s.in_motion())
        if MUT == 'no_budget':
            k = R
        free = [p for p in range(R) if s.table[p] is None]
        given = []
        while k > 0:
            d = min(elig, key=lambda n: (-(cnt[n] - tgt[n]), n))
            if cnt[d] <= tgt[d]:
                break
            p = max(q for q in range(R) if s.table[q] == d and q not in given)
            given.append(p)
            cnt[d] -= 1
            k -= 1
        for p in given:
            s.table[p] = None
        for p in sorted(free + given):
            r = min(elig, key=lambda n: (-(tgt[n] - cnt[n]), n))
            if cnt[r] >= tgt[r]:
                break
            s.table[p] = r
            cnt[r] += 1
            if p in given and s.holder_name(p) != r:
                s.moving.add(p)
            else:
                s.moving.discard(p)

    def taken(s, p, name):
        """A claim taken: a budgeted move to this member has arrived."""
        if s.table[p] == name:
            s.moving.discard(p)


def owners(ring):
    if isinstance(ring, tuple):
        return {p: n for p, n in enumerate(ring[1]) if n is not None}
    if not ring:
        return {}
    ps = sorted(ring)
    return {q: ring[next((p for p in ps if p >= q), ps[0])] for q in range(R)}


class Member:
    def __init__(s, name, rate):
        s.name = name
        s.rate = rate
        s.inc = None
        s.view_epoch = -1
        s.own = set()
        s.active = {}       # p -> token
        s.draining = {}     # p -> local time the drain ends (release written then)
        s.drain_tok = {}    # p -> token of a draining partition
        s.unreleased = {}   # (p, token) -> True: claims to free (sent, not yet confirmed)
        s.dropped = set()   # (p, token) given up: a late answer with it is never used
        s.valid_until = -1.0
        s.alive = True
        s.paused_until = 0.0
        s.member = False
        s.leaving = False
        s.early = None      # the newest ring notification heard while joining: (epoch, ring, incs)
        s.start_unready = False  # joins (and rejoins) not ready: set_ready(True) makes it eligible
        s.timeline = None   # the first timeline this process saw in a reply; changed only after a check
        s.incs = {}         # the members of its view: name -> incarnation
        s.waiting = {}      # p -> (name, inc) holding its claim (None: unknown), as the last take saw it
        s.recheck = set()   # waiting partitions a notification concerned: taken again at once
        s.taking = {}       # (sent at, partitions) -> True: takes in flight (see in_flight)
        s.polls = 0         # safety-net retakes in a row without getting everything
        s.timer = 0         # generation of the scheduled safety-net retake (older ones are void)
        s.timer_at = None   # when it is due

    def local(s, t):
        return t * s.rate

    def lease_ok(s, t):
        return s.alive and s.local(t) < s.valid_until

    def reported(s, t):
        return set(s.active) if s.lease_ok(t) else set()

    def busy(s, t):
        return (set(s.active) | set(s.draining)) if s.lease_ok(t) else set()


class Sim:
    def __init__(s, seed):
        s.rng = random.Random(seed)
        s.db = DB()
        s.t = 0.0
        s.q = []
        s.seq = 0
        s.members = {}
        s.violations = []
        s.n = 0
        s.last_token = {}
        s.activations = 0
        s.snaps = [(0.0, s.db.snapshot())]   # (time, state) the standby could be promoted with
        s.promoting = None                    # the state a pending promotion comes up with
        s.lossy = 0
        s.lossless = 0
        s.fences = 0
        s.graced = 0
        s.first_take = float('inf')
        # odd seeds place with the balanced table and a move budget (issue 19), even ones hash
        if seed % 2 == 1 or MUT in ('per_change_budget', 'no_budget', 'no_step'):
            s.db.budget = BUDGET
        s.max_moving = 0
        s.slow = set()

    def at(s, t, fn, *a):
        s.seq += 1
        heapq.heappush(s.q, (t, s.seq, fn, a))

    def delay(s):
        if s.t >= getattr(s, 'quiet_from', float('inf')):
            return s.rng.uniform(0.001, 0.02)
        return s.rng.uniform(0.001, 0.02) if s.rng.random() < 0.9 else s.rng.uniform(0.02, TTL * 1.5)

    def request(s, m, op, payload=None):
        if not m.alive:
            return
        s.at(s.t + s.delay(), s.db_exec, m, op, payload, s.t, m.inc)

    # ---------------------------------------------------------------- database
    def db_exec(s, m, op, payload, t_send, inc):
        db, t = s.db, s.t
        if not db.up:
            return  # no reply: the client times out
        me = db.members.get(m.name)
        live_me = me is not None and me['inc'] == inc and me['expires'] > t
        res = None
        if op == 'join':
            dead = db.remove_expired(t)
            if m.name in db.members:
                res = ('err',)
                if dead:
                    s.note_ring()
            else:
                taken = {p for mm in db.members.values() for p in mm['vnodes']}
                free = [p for p in range(R) if p not in taken]
                s.rng.shuffle(free)
                db.inc += 1
                db.epoch += 1
                db.members[m.name] = dict(inc=db.inc, expires=t + TTL, vnodes=set(free[:2]),
                                          ready=not payload)
                db.place()
                res = ('ok', db.inc, db.epoch, db.ring(), db.incs())
                s.note_ring()
        elif op == 'hb':
            ok = live_me or (MUT == 'resurrect' and me is not None and me['inc'] == inc)
            if ok:
                me['expires'] = t + TTL
                held = [(p, c['token']) for p, c in db.claims.items() if c['owner'] == (m.name, inc)]
                res = ('ok', db.epoch, db.ring(), held, db.timeline, db.incs())
            else:
                res = ('evicted',)
        elif op == 'claim':
            got = []
            if db.timeline not in db.timelines:
                # the first take this timeline serves starts its grace (the schema's creation
                # recorded its own timeline as -infinity: no grace at a cold start)
                if MUT == 'unseeded':
                    db.timelines[db.timeline] = t if db.timelines else float('-inf')
                else:
                    db.timelines[db.timeline] = t
                s.first_take = min(s.first_take, t)
            left = db.timelines[db.timeline] + GRACE - t
            if left > 0:
                res = ('wait', left, db.timeline)    # nothing taken nor returned in the grace
            else:
                held_by = {}
                if live_me:
                    floor = 0 if MUT == 'no_timeline_token' else (db.timeline - 1) * TL_STRIDE
                    for p in payload:
                        c = db.claims.setdefault(p, dict(owner=None, token=0, waiter=None))
                        mine = c['owner'] == (m.name, inc)
                        free = c['owner'] is None or not db.holder_present(c['owner'])
                        if mine:
                            got.append((p, c['token']))  # a repeated take: same claim, same token
                        elif free or MUT == 'no_exclusive':
                            # a new holder: a new token, higher than every earlier one, also than
                            # every token of an earlier timeline (some may be lost with it)
                            c['token'] = max(c['token'] + 1, floor)
                            c['owner'] = (m.name, inc)
                            c['waiter'] = None
                            got.append((p, c['token']))
                            db.taken(p, m.name)
                        else:
                            # held by a live member: mark this member as waiting, so that the
                            # release tells it. One waiter is named; a second one makes it ALL
                            # (under single_waiter the latest mark replaces the earlier one)
                            w = c.get('waiter')
                            if MUT == 'single_waiter' or w is None or w == m.name:
                                c['waiter'] = m.name
                            else:
                                c['waiter'] = 'ALL'
                            held_by[p] = c['owner']
                res = ('ok', got, db.timeline, held_by, live_me)
        elif op == 'release':
            told, freed = set(), []
            for p, tok in payload:
                c = db.claims.get(p)
                if c and c['owner'] == (m.name, inc) and (c['token'] == tok or MUT == 'untokened_release'):
                    c['owner'] = None
                    if c.get('waiter') is not None:
                        told.add(c['waiter'])
                        freed.append(p)
                    c['waiter'] = None
            if told:
                # one notification per transaction: the one waiter's, or every member's when the
                # freed claims had two or more waiters between them
                s.note_release(told.pop() if len(told) == 1 and MUT != 'ring_release' else 'ALL', freed)
            res = ('ok',)
        elif op == 'ready':
            # the member's own readiness: a membership change like any other
            if live_me and me['ready'] != payload:
                me['ready'] = payload
                db.epoch += 1
                db.place()
                s.note_eligibility()
            res = ('ok',)
        elif op == 'step':
            # the move budget's next step (a member took claims, or its periodic safety net):
            # under the ring's lock, the moves the budget allows now, as a change
            # (once a quarter of the budget is free, or what is pending fits: fewer, larger steps)
            free = db.budget - db.in_motion() if db.budget is not None else 0
            if live_me and db.budget is not None and (free >= -(-db.budget // 4) or 0 < db.pending() <= free):
                before = list(db.table)
                db.place()
                if db.table != before:
                    db.epoch += 1
                    s.note_ring()
            res = ('ok',)
        elif op == 'cleanup':
            if db.remove_expired(t):
                s.note_ring()
            res = ('ok',)
        elif op == 'leave':
            for c in db.claims.values():
                if c['owner'] == (m.name, inc):
                    c['owner'] = None
            if me is not None and me['inc'] == inc:
                del db.members[m.name]
                db.epoch += 1
                db.place()
                s.note_ring()
            res = ('ok',)
        s.at(t + s.delay(), s.deliver, m, op, res, t_send, inc, payload)

    def deliver(s, *a):
        s.reply(*a)   # a reply on the wire; a failover loses it (the event is dropped)

    # ---------------------------------------------------------------- notifications
    def quiet_now(s):
        return s.t >= getattr(s, 'quiet_from', float('inf'))

    def ndelay(s):
        return s.rng.uniform(*QUIET_DELAY) if s.quiet_now() or s.rng.random() < 0.9 else s.rng.uniform(0.02, 1.0)

    def note_ring(s):
        """A membership change committed: the ring's channel tells every member (the change rides
        in the payload; here, the ring at its epoch). Outside quiet periods one may be lost."""
        db = s.db
        epoch, ring, incs = db.epoch, db.ring(), db.incs()
        for m in s.members.values():
            if m.alive and (s.quiet_now() or s.rng.random() >= NOTE_LOSS):
                s.at(s.t + s.ndelay(), s.hear, m, 'ring', (epoch, ring, incs))

    def note_eligibility(s):
        """An eligibility change committed: like any membership change, the ring's channel tells
        every member (under silent_eligibility nobody: the members see it at their next heartbeat)."""
        if MUT != 'silent_eligibility':
            s.note_ring()

    def cordon(s, name, yes):
        """An operator (`ringnode cordon`) cordons or uncordons a node id, straight in the database
        under the ring's lock: stored whether or not the member is there."""
        db = s.db
        if not db.up or (name in db.cordoned) == yes:
            return
        if yes:
            db.cordoned.add(name)
        else:
            db.cordoned.discard(name)
        if name in db.members:
            db.epoch += 1
            db.place()
            s.note_eligibility()

    def set_ready(s, m, yes):
        """The member's set_ready: remembered (a rejoin joins as ready as this says) and, while it
        is a member, written."""
        if not m.alive or m.leaving:
            return
        m.start_unready = not yes
        if m.member:
            s.request(m, 'ready', yes)

    def note_release(s, who, ps):
        """A release freed claims somebody waited for: one notification, to the one waiter or to
        every member."""
        for m in s.members.values():
            if m.alive and (who == 'ALL' or m.name == who) and (s.quiet_now() or s.rng.random() >= NOTE_LOSS):
                s.at(s.t + s.ndelay(), s.hear, m, 'release', ps)

    def hear(s, m, kind, what):
        if not m.alive:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.hear, m, kind, what)
            return
        if kind == 'ring' and not m.member and not m.leaving:
            # heard while joining (the member listens before its join commits, as the library's
            # LISTEN is in the join's first transaction): kept, applied once the join answers
            if m.early is None or what[0] > m.early[0]:
                m.early = what
            return
        if not m.member or m.leaving:
            return
        if kind == 'ring':
            s.adopt(m, *what)
        else:
            # a release: the partitions this member waits for -- or asked for in a take whose
            # answer is still on its way (the notification may overtake it) -- are taken again
            for p in what:
                if p in m.waiting or s.in_flight(m, p):
                    m.recheck.add(p)
            s.claim_missing(m)

    # ---------------------------------------------------------------- member
    def reply(s, m, op, res, t_send, inc, payload=None):
        if not m.alive:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.reply, m, op, res, t_send, inc, payload)
            return
        if op == 'join' and res[0] == 'ok' and not m.member and not m.leaving:
            m.member = True
            m.inc = res[1]
            s.forget_takes(m)
            m.valid_until = m.local(t_send) + TTL - MARGIN
            s.adopt(m, res[2], res[3], res[4])
            if m.early is not None and m.early[0] > res[2]:
                s.adopt(m, *m.early)   # changes committed after its join, heard before the answer
            m.early = None
        elif inc != m.inc or not m.member:
            return  # a reply meant for an earlier membership
        elif op == 'hb':
            if res[0] == 'evicted':
                s.drop_all(m)
                s.forget_takes(m)
                m.unreleased = {}
                m.member = False
                m.early = None
                m.inc = None
                m.view_epoch = -1
                m.own = set()
            else:
                tl = res[4]
                if m.timeline is None:
                    m.timeline = tl
                elif tl != m.timeline and MUT != 'no_timeline_check':
                    # the database moved to a new timeline: did it keep what this member relies on?
                    # (one snapshot: this reply's epoch and claims)
                    held = set(res[3])
                    used = set(m.active.items()) | {(p, m.drain_tok[p]) for p in m.draining}
                    if res[1] < m.view_epoch or not used <= held:
                        s.fence(m, tl)
                        return
                    m.timeline = tl
                    # the new primary may have lost marks of this member's takes (and their
                    # releases' notifications went to the old one): take everything waiting again
                    m.recheck |= set(m.waiting)
                m.valid_until = max(m.valid_until, m.local(t_send) + TTL - MARGIN)
                # reconcile: claims the database says we hold but we do not use (lost answers)
                used = {(p, t) for p, t in m.active.items()} | {(p, m.drain_tok[p]) for p in m.draining}
                # (not those a take on its way asked for: its answer says whether they are used)
                extra = [pt for pt in res[3] if pt not in used and pt not in m.unreleased
                         and not s.in_flight(m, pt[0])]
                if extra:
                    s.send_release(m, extra)
                s.adopt(m, res[1], res[2], res[5])
        elif op == 'claim':
            m.taking.pop((t_send, tuple(payload)), None)
            if m.timeline is None:
                m.timeline = res[2]
            if m.leaving:
                return
            if res[0] == 'wait':
                s.graced += 1
                s.at(s.t + res[1] / m.rate + 1e-6, s.retake, m, m.inc)  # retry when the grace ends
                return
            stray = []
            for p, tok in res[1]:
                if (p, tok) in m.dropped:
                    continue
                if m.active.get(p) == tok or m.drain_tok.get(p) == tok:
                    continue  # a repeated answer for a claim in use or draining
                if p in m.own and (m.lease_ok(s.t) or MUT == 'no_deadline_check'):
                    lt, lo = s.last_token.get(p, (0, None))
                    if tok < lt or (tok == lt and lo != (m.name, m.inc)):
                        s.violations.append(('token', round(s.t, 3), p, tok, lt, lo, m.name))
                    s.last_token[p] = (tok, (m.name, m.inc))
                    m.active[p] = tok
                    s.activations += 1
                else:
                    stray.append((p, tok))  # taken for a view it has left, or too late to use
            if stray:
                s.send_release(m, stray)
            if s.db.budget is not None and res[1] and MUT != 'no_step':
                # a move arrived: the budget may allow the next ones (the library's member writes
                # the step on the connection of its take)
                s.request(m, 'step')
            # what was asked and not got waits: for its holder's release (it was marked as
            # waiting) or removal, or -- lost notifications -- for the safety net
            got = {p for p, _ in res[1]}
            for p in payload:
                if p in m.active:
                    m.waiting.pop(p, None)
                elif p in m.own and p not in got and p not in m.draining:
                    m.waiting[p] = res[3].get(p)
            if MUT != 'no_removal_recheck':
                # a holder the take found may have been removed since, and the notification of its
                # removal come before this answer (it found nothing waiting then)
                m.recheck |= {p for p, h in res[3].items() if p in m.waiting and m.incs.get(h[0]) != h[1]}
            if res[4] and not m.waiting:
                m.polls = 0
                m.timer += 1
                m.timer_at = None
            else:
                m.polls += 1
                due = s.t + min(FIRST_TAKE_RETRY * 2 ** min(m.polls - 1, 16), MAX_TAKE_BACKOFF) / m.rate
                if m.timer_at is None or due < m.timer_at:
                    m.timer += 1
                    m.timer_at = due
                    s.at(due, s.safety_net, m, m.inc, m.timer)
            if m.recheck & set(m.waiting):
                s.claim_missing(m)   # a release was heard while this take was on its way
        elif op == 'release':
            for pt in payload:
                m.unreleased.pop(pt, None)
                m.waiting.pop(pt[0], None)   # its own claim was what it waited for
            s.claim_missing(m)

    def fence(s, m, tl):
        """Timeline fence: stop using everything at once, delete the (stale) own row, rejoin."""
        s.fences += 1
        s.drop_all(m)
        s.request(m, 'leave')   # deletes this incarnation's row (its claims go with it)
        m.unreleased = {}
        m.member = False
        m.early = None
        m.inc = None
        m.view_epoch = -1
        m.own = set()
        m.timeline = tl

    def retake(s, m, inc):
        if not m.alive or inc != m.inc:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.retake, m, inc)
            return
        s.claim_missing(m, True)

    def safety_net(s, m, inc, timer):
        """The backoff's deadline: take everything still waiting again (a notification may have
        been lost)."""
        if not m.alive or inc != m.inc or timer != m.timer:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.safety_net, m, inc, timer)
            return
        m.timer_at = None
        s.claim_missing(m, True)

    def in_flight(s, m, p):
        """Whether a take that asked for p may still answer. A take unanswered for a statement
        timeout (TTL / 3) has failed: the library's watcher then drops it (and its connection)."""
        for (sent, ps) in list(m.taking):
            if s.t - sent > TTL / 3:
                del m.taking[(sent, ps)]
            elif p in ps:
                return True
        return False

    def forget_takes(s, m):
        m.waiting = {}
        m.recheck = set()
        m.taking = {}
        m.polls = 0
        m.timer += 1
        m.timer_at = None

    def drop_all(s, m):
        m.active = {}
        m.draining = {}
        m.drain_tok = {}

    def adopt(s, m, epoch, ring, incs):
        if epoch < m.view_epoch:
            return
        m.view_epoch = epoch
        m.incs = incs
        m.own = {p for p, n in owners(ring).items() if n == m.name}
        m.waiting = {p: h for p, h in m.waiting.items() if p in m.own}
        m.recheck &= m.own
        for p, h in m.waiting.items():
            if h is None or incs.get(h[0]) != h[1]:
                m.recheck.add(p)   # its holder was removed (its claims with it), or unknown
        gone = [p for p in m.active if p not in m.own]
        if gone:
            if MUT == 'release_before_stop':
                s.send_release(m, [(p, m.active[p]) for p in gone])
                s.at(s.t + 0.05, s.stop_using, m, gone, m.inc)
            else:
                for p in gone:
                    m.drain_tok[p] = m.active.pop(p)
                    drain = 0.0 if MUT == 'no_drain' else s.rng.choice([0.0, 0.0, s.rng.uniform(0.0, TTL / 4)])
                    m.draining[p] = m.local(s.t) + drain
                s.at(s.t, s.drain_step, m, m.inc)
        s.claim_missing(m)

    def claim_missing(s, m, everything=False):
        """Takes the pending partitions that may have become free: new ones, and the waiting ones a
        notification concerned (with `everything`, the safety net's, all that wait)."""
        if m.leaving or not m.member:
            return
        releasing = {p for p, _ in m.unreleased}
        want = [p for p in sorted(m.own) if p not in m.active and p not in m.draining
                and (p not in releasing or MUT == 'claim_while_releasing')
                and (everything or p not in m.waiting or p in m.recheck)]
        if want and m.lease_ok(s.t):
            m.recheck -= set(want)
            m.taking[(s.t, tuple(want))] = True
            s.request(m, 'claim', want)

    def send_release(s, m, pts):
        for pt in pts:
            m.unreleased[pt] = True
            m.dropped.add(pt)
        s.request(m, 'release', list(pts))

    def stop_using(s, m, ps, inc):
        if inc == m.inc:
            for p in ps:
                m.active.pop(p, None)

    def drain_step(s, m, inc):
        """User work on draining partitions ends; then the release is written."""
        if not m.alive or inc != m.inc:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.drain_step, m, inc)
            return
        done = [p for p, until in m.draining.items() if m.local(s.t) >= until]
        for p in done:
            del m.draining[p]
        if done:
            s.send_release(m, [(p, m.drain_tok.pop(p)) for p in done])
        if m.draining:
            nxt = min(m.draining.values())
            s.at(max(s.t + 1e-4, nxt / m.rate + 1e-6), s.drain_step, m, inc)

    def tick(s, m):
        if not m.alive:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.tick, m)
            return
        if m.local(s.t) >= m.valid_until and (m.active or m.draining):
            # self-fencing: stop at once (the library cannot wait for a drain past the lease);
            # the claims are given back if the lease is renewed after all, or freed at its end
            gone = list(m.active.items()) + [(p, m.drain_tok[p]) for p in m.draining]
            s.drop_all(m)
            s.send_release(m, gone)
        if not m.member:
            if not m.leaving:
                # a rejoin after an eviction is as ready as the member was
                s.request(m, 'join', m.start_unready)
        else:
            s.request(m, 'hb')
            if m.unreleased:
                s.request(m, 'release', list(m.unreleased))
            if s.rng.random() < 0.3:
                s.request(m, 'cleanup')
            if s.db.budget is not None and MUT != 'no_step' and s.rng.random() < 0.3:
                s.request(m, 'step')   # the step's safety net: a trigger lost with its take
        s.at(s.t + s.rng.uniform(0.05, TTL / 3) / m.rate, s.tick, m)

    # ---------------------------------------------------------------- chaos
    def spawn(s, name=None, rate=None, unready=False):
        if name is None:
            s.n += 1
            name = 'n%d' % s.n
        m = Member(name, rate or s.rng.uniform(1 - RHO, 1 + RHO))
        m.start_unready = unready
        s.members[name] = m
        s.at(s.t, s.tick, m)
        return m

    def chaos(s):
        live = [m for m in s.members.values() if m.alive]
        r = s.rng.random()
        if r < 0.22 or len(live) < 2:
            s.spawn()
        elif r < 0.35:
            s.rng.choice(live).alive = False
        elif r < 0.42:
            # crash, then a restart under the same name (rejoin while the old lease may live)
            m = s.rng.choice(live)
            m.alive = False
            s.at(s.t + s.rng.uniform(0.0, TTL), s.spawn, m.name, m.rate)
        elif r < 0.6:
            m = s.rng.choice(live)
            m.paused_until = s.t + s.rng.uniform(0.1, 3 * TTL)
        elif r < 0.75:
            m = s.rng.choice(live)
            if m.member:
                m.active = {}
                m.draining = {}
                m.leaving = True
                s.request(m, 'leave')
                s.at(s.t + 1.0, s.kill, m)
        elif r < 0.85:
            s.db.up = False
            s.at(s.t + s.rng.uniform(0.1, 2 * TTL), s.dbup)
        elif r < 0.93:
            s.failover(lossy=MUT != 'lossless_no_grace')
        elif r < 0.96:
            s.failover(lossy=False)
        elif r < 0.98:
            m = s.rng.choice(live)
            s.set_ready(m, m.start_unready)   # flips it
        else:
            # an operator cordons a member, or lifts a cordon (of a member that may be gone)
            names = sorted(s.db.cordoned)
            if names and s.rng.random() < 0.5:
                s.cordon(s.rng.choice(names), False)
            else:
                s.cordon(s.rng.choice(live).name, True)
        s.at(s.t + s.rng.uniform(0.01, TTL), s.chaos)

    def kill(s, m):
        m.alive = False

    def dbup(s):
        if s.promoting is None:
            s.db.up = True
            s.reconnected()

    def reconnected(s):
        """The database answers again: the members' listening connections were lost with it, and
        what was notified meanwhile with them; each takes everything waiting again once its new
        connection listens (the library's watcher_connected)."""
        for m in s.members.values():
            if m.alive:
                s.at(s.t + s.delay(), s.relisten, m, m.inc)

    def relisten(s, m, inc):
        if not m.alive or inc != m.inc or not m.member:
            return
        if s.t < m.paused_until:
            s.at(m.paused_until, s.relisten, m, inc)
            return
        m.recheck |= set(m.waiting)
        s.claim_missing(m)

    def snap_tick(s):
        if s.promoting is None:
            s.snaps.append((s.t, s.db.snapshot()))
            while s.snaps[0][0] < s.t - TTL:
                s.snaps.pop(0)
        s.at(s.t + s.rng.uniform(*SNAP_EVERY), s.snap_tick)

    def failover(s, lossy, cold=False):
        """The primary dies; a standby is promoted after a short outage. A lossy one had replayed
        only up to now - lag: everything written after that is gone (the timelines table too)."""
        if s.promoting is not None:
            return
        s.db.up = False
        s.q = [e for e in s.q if e[2] not in (s.db_exec, s.deliver, s.hear)]   # in flight: lost
        heapq.heapify(s.q)
        if lossy:
            s.lossy += 1
            t_s = s.t - s.rng.uniform(0.0, 0.5 * TTL)
            if cold:   # the standby lags behind the very first take of a fresh database
                t_s = s.rng.uniform(0.0, min(s.t, s.first_take))
            i = max([0] + [k for k, (ts, _) in enumerate(s.snaps) if ts <= t_s])
            s.snaps = s.snaps[:i + 1]        # later states belong to the lost timeline only
            s.promoting = s.snaps[i][1]
        else:
            s.lossless += 1
            s.promoting = s.db.snapshot()
        s.at(s.t + s.rng.uniform(0.1, 2.0), s.promote)

    def promote(s):
        if s.promoting is None:
            return
        s.db.restore(s.promoting)
        s.db.timeline += 1
        s.db.up = True
        s.promoting = None
        s.reconnected()

    def check(s):
        seen, busy = {}, {}
        for m in s.members.values():
            for p in m.reported(s.t):
                if p in seen:
                    s.violations.append(('overlap', round(s.t, 3), p, seen[p], m.name))
                seen[p] = m.name
            for p in m.busy(s.t):
                if p in busy:
                    s.violations.append(('busy_overlap', round(s.t, 3), p, busy[p], m.name))
                busy[p] = m.name
        if s.db.budget is not None:
            # at most `budget` live-to-live moves in motion (taken by their new owner = arrived)
            moving = sum(1 for p in s.db.moving if s.db.holder_name(p) != s.db.table[p])
            s.max_moving = max(s.max_moving, moving)
            if moving > s.db.budget and 'budget' not in s.slow:
                s.slow.add('budget')
                s.violations.append(('over_budget', round(s.t, 3), moving, s.db.budget))
        if s.t >= s.measure_from:
            s.check_takes()
        s.at(s.t + CHECK_EVERY, s.check)

    def check_takes(s):
        """Liveness in a quiet period (bursts of graceful joins and leaves, no faults): a claim
        that is free while the member the database's ring gives it to has it pending is taken
        within TAKE_BOUND -- a notification and a take, no timer."""
        db = s.db
        own = owners(db.ring())
        first = db.timelines.get(db.timeline)
        if first is None or s.t < first + GRACE:
            # a new timeline's grace (or its first take still to come, which starts it): a
            # timer the protocol states -- nothing is taken, by design
            s.takeable_since.clear()
            s.due_since.clear()
            return
        for p in range(R):
            name = own.get(p)
            m = s.members.get(name)
            row = db.members.get(name)
            due = (m is not None and row is not None and m.alive and m.member and not m.leaving
                   and m.inc == row['inc'] and p not in m.active
                   and p not in m.draining and m.lease_ok(s.t) and db.free(p))
            if not due:
                s.due_since.pop(p, None)
            else:
                since = s.due_since.setdefault(p, s.t)
                if s.t - since > VIEW_BOUND and ('view', p) not in s.slow:
                    s.slow.add(('view', p))
                    s.violations.append(('stale_view', round(s.t, 3), p, round((s.t - since) * 1000), name,
                                         'in its view' if p in m.own else 'not in its view'))
            takeable = due and p in m.own
            if not takeable:
                s.takeable_since.pop(p, None)
                continue
            since = s.takeable_since.setdefault(p, s.t)
            if s.t - since > TAKE_BOUND and p not in s.slow:
                s.slow.add(p)
                s.violations.append(('slow_take', round(s.t, 3), p, round((s.t - since) * 1000), name,
                                     'waited %s' % (m.waiting.get(p),)))
        s.slow &= set(s.takeable_since) | {('view', p) for p in s.due_since} | {'budget'}
        s.max_takeable = max([s.max_takeable] + [s.t - t for t in s.takeable_since.values()])

    def burst(s):
        """k graceful leaves and k joins at one instant (a rolling deploy's step): views disagree
        for a moment, and two members may wait for one claim."""
        k = s.rng.choice([2, 4])
        s.bursts += 1
        # the leavers are members an earlier burst started: the members left over from the
        # chaos stay, so that a rule whose mutation blocks them for good (no_incarnation) still
        # shows at the end instead of being carried away by the bursts
        live = [m for m in s.members.values() if m.alive and m.member and not m.leaving
                and m.name in s.deployed]
        for m in s.rng.sample(live, min(k, len(live))):
            m.active = {}
            m.draining = {}
            m.leaving = True
            s.request(m, 'leave')
            s.at(s.t + 1.0, s.kill, m)
        for _ in range(k):
            # a rolling deploy's new members warm up before they are ready, now and then
            unready = s.rng.random() < 0.5
            m = s.spawn(unready=unready)
            s.deployed.add(m.name)
            if unready:
                s.at(s.t + s.rng.uniform(0.05, 0.3), s.set_ready, m, True)
        if s.rng.random() < 0.3:
            # an operator cordons a member for a moment
            live = sorted(m.name for m in s.members.values() if m.alive and m.member and not m.leaving)
            if live:
                name = s.rng.choice(live)
                s.cordon(name, True)
                s.at(s.t + s.rng.uniform(0.2, 1.0), s.cordon, name, False)
        if s.t + 3.0 < s.until - 2 * TTL:
            s.at(s.t + s.rng.uniform(0.3, 1.5), s.burst)

    def run(s, until):
        # from quiet_from on, chaos stops and the database is up: after every fault's effects
        # have passed (leases, the grace), bursts of graceful changes, checked by check_takes
        s.until = until
        s.quiet_from = until - 12 * TTL
        s.measure_from = s.quiet_from + 2.5 * TTL
        s.takeable_since, s.max_takeable, s.bursts, s.deployed = {}, 0.0, 0, set()
        s.due_since = {}
        s.spawn()
        s.spawn()
        s.at(0.5, s.chaos)
        s.at(0.0, s.check)
        s.at(0.05, s.snap_tick)
        if MUT in ('cold_failover', 'unseeded'):
            s.at(s.rng.uniform(0.2, 4.0), s.failover, True, True)
        s.at(s.quiet_from, s.quiet)
        s.at(s.measure_from, s.burst)
        while s.q and s.t < until and len(s.violations) < 5:
            t, _, fn, a = heapq.heappop(s.q)
            s.t = t
            fn(*a)
        if len(s.violations) == 0:
            # liveness: after a quiet period every partition is in use by exactly one member
            used = [p for m in s.members.values() for p in m.reported(s.t)]
            if sorted(used) != list(range(R)) and any(m.alive for m in s.members.values()):
                s.violations.append(('not_settled', round(s.t, 3), R - len(set(used))))
            elif s.db.budget is not None and s.db.pending():
                # liveness of the steps: the table reaches balance once the changes stop
                s.violations.append(('unbalanced', round(s.t, 3), s.db.pending()))
        return s.violations

    def quiet(s):
        s.promote()
        if not s.db.up:
            s.db.up = True
            s.reconnected()
        s.q = [e for e in s.q if e[2] not in (s.chaos, s.dbup, s.spawn, s.promote)]
        heapq.heapify(s.q)
        for m in s.members.values():
            m.paused_until = min(m.paused_until, s.t)
        # the quiet stretch starts with every member eligible (bursts then change that briefly)
        for name in sorted(s.db.cordoned):
            s.cordon(name, False)
        for m in s.members.values():
            if m.start_unready:
                s.set_ready(m, True)


if __name__ == '__main__':
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    MUT = sys.argv[2] if len(sys.argv) > 2 else None
    if MUT in ('no_timeline_grace', 'lossless_no_grace'):
        GRACE = 0.0
    bad, acts, lossy, lossless, fences, graced = 0, 0, 0, 0, 0, 0
    bursts, worst, most_moving = 0, 0.0, 0
    for seed in range(seeds):
        sim = Sim(seed)
        v = sim.run(400.0)
        acts += sim.activations
        lossy += sim.lossy
        lossless += sim.lossless
        fences += sim.fences
        graced += sim.graced
        bursts += sim.bursts
        worst = max(worst, sim.max_takeable)
        most_moving = max(most_moving, sim.max_moving)
        if v:
            bad += 1
            if bad <= 3:
                print('seed', seed, v[:3])
    print('mutation', MUT, 'seeds', seeds, 'with violations', bad, 'activations', acts)
    print('failovers lossy', lossy, 'lossless', lossless, 'timeline fences', fences,
          'takes refused in grace', graced)
    print('quiet bursts', bursts, 'longest a free claim waited for its owner %.1f ms (bound %.1f ms)'
          % (worst * 1000, TAKE_BOUND * 1000))
    print('move budget %d: most partitions in motion at once %d' % (BUDGET, most_moving))
