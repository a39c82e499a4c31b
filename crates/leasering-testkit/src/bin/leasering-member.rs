//! A ring member as its own process (the testkit's `leasering-member` bin;
//! tests and benches find it with `leasering_testkit::member_binary()`): for fault
//! tests (kill -9, SIGSTOP), the chaos harness and the crash bench. It joins
//! a ring and appends every ownership event to a file, one line each,
//! flushed at once, stamped with CLOCK_MONOTONIC nanoseconds (shared by all
//! processes of a machine), in the format of
//! `leasering_testkit::member_log`:
//!
//! ```text
//! <mono_ns> joined <epoch>
//! <mono_ns> acquired <token> <epoch> <p,p,...>
//! <mono_ns> released <reason> <epoch> <p,p,...>[ drain]
//! <mono_ns> view <epoch> <members>
//! <mono_ns> work-start <p,p,...>
//! <mono_ns> work-end <p,p,...>[ cut]
//! ```
//!
//! Usage:
//!
//! ```text
//! leasering-member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> [fenced-table]
//!        [--ring-size=N] [--vnodes=N] [--writes=FILE] [--write-every-ms=N] [--write-sample=N]
//!        [--drain-ms=N] [--work=MIN-MAX] [--work-lanes=N] [--work-seed=N] [--work-drop-guards]
//!        [--transaction-pooling] [--extra-rings=N]
//! ```
//!
//! `--transaction-pooling` is for a database reached through a pooler in
//! transaction mode (`Pooling::Transaction`).
//!
//! `--extra-rings=N` makes the process one that serves several rings, the
//! way a service with one member per tenant does: it builds one
//! `leasering::Client` from its pool and starts, from that client, its
//! member of `<ring-id>` and members of N more rings, `<ring-id>-x1` to
//! `<ring-id>-xN` (the same node id, TTL, schema and other settings), all
//! sharing the client's one held connection and four threads — so that a
//! `kill -9` or a `SIGSTOP` of the process hits every ring at once. Only
//! the member of `<ring-id>` logs events, works and writes (the extra
//! rings' members have no subscriber: their drains end at once). Without
//! the flag the member makes a client of its own (`RingNode::builder`).
//!
//! `--drain-ms` turns drained handoffs on (`NodeBuilder::drain_timeout`).
//! `--work=MIN-MAX` runs the drain workload (`leasering_testkit::worker`):
//! units of user work of MIN..=MAX ms on the partitions it owns, in
//! `--work-lanes` threads (default 4), their lengths drawn from
//! `--work-seed`, each handoff held back with the drain guard until the unit
//! in progress has ended, logged as the `work-start` / `work-end` lines
//! above. `--work-drop-guards` is the mutation that drops every guard at
//! once while the work goes on.
//!
//! With a fenced table (`partition int PRIMARY KEY, token bigint, node_id
//! text, writes bigint`), it also writes, every `--write-every-ms` (default
//! 20), one row per held partition (or per a random sample of
//! `--write-sample` of them) in one statement, the way a user's service
//! guards its writes with the token:
//! `INSERT … ON CONFLICT … DO UPDATE … WHERE stored.token <= excluded.token`.
//! With `--writes=FILE` it logs each such write, once the database answered:
//!
//! ```text
//! <t0_ns> wrote <t1_ns> <accepted p:token,...|-> <rejected p:token,...|->
//! ```
//!
//! `t0` is read *before* `owned_partitions()` was taken, `t1` after the
//! answer. It prints `ready <node-id>` on standard output once joined (every
//! ring's member, with `--extra-rings`), and exits (after leaving, every
//! ring) when its standard input closes or says `stop`.
//! Library logs go to standard error (`RUST_LOG`).
//!
//! It lives in the testkit and uses it like any other consumer: the event
//! log's format ([`member_log`](leasering_testkit::member_log)), the seeded generator ([`rng`]) and the
//! user-work simulation ([`worker`]) are the ones the tests read and run.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasering::{monotonic_ns, RingNode};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

use leasering_testkit::member_log::WriteRec;
use leasering_testkit::{rng, worker};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

const USAGE: &str = "usage: leasering-member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> \
     [fenced-table] [--ring-size=N] [--vnodes=N] [--writes=FILE] [--write-every-ms=N] [--write-sample=N] \
     [--drain-ms=N] [--work=MIN-MAX] [--work-lanes=N] [--work-seed=N] [--work-drop-guards] [--transaction-pooling] \
     [--extra-rings=N]";

fn main() {
    // Library logs to standard error as `RUST_LOG` says, each stamped with
    // CLOCK_MONOTONIC milliseconds, the clock of the event log, so that the
    // two can be read side by side.
    env_logger::Builder::from_default_env()
        .format(|buf, r| {
            let ms = monotonic_ns(Instant::now()) as f64 / 1e6;
            writeln!(
                buf,
                "[{ms:.3} {:<5} {}] {}",
                r.level(),
                r.target(),
                r.args()
            )
        })
        .init();
    if let Err(e) = run() {
        eprintln!("member: {e}");
        std::process::exit(2);
    }
}

struct Options {
    ring_size: Option<u32>,
    vnodes: Option<u32>,
    writes: Option<String>,
    write_every: Duration,
    write_sample: usize,
    drain: Option<Duration>,
    /// The drain workload, if asked for.
    work: Option<worker::WorkConfig>,
    /// Behind a pooler in transaction mode (notifications off).
    transaction_pooling: bool,
    /// Members of this many more rings, on one client with the main one.
    extra_rings: u32,
}

/// `MIN-MAX` in milliseconds.
fn parse_range(name: &str, value: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = value
        .split_once('-')
        .ok_or_else(|| format!("bad value {value:?} for --{name}: MIN-MAX"))?;
    let (lo, hi): (u64, u64) = (parse_flag(name, lo)?, parse_flag(name, hi)?);
    if lo > hi {
        return Err(format!("bad value {value:?} for --{name}: MIN above MAX"));
    }
    Ok((Duration::from_millis(lo), Duration::from_millis(hi)))
}

/// An event log written by two threads (the events and the work): one
/// `write` per line under a lock, so lines never interleave.
#[derive(Clone)]
struct LogFile(Arc<Mutex<std::fs::File>>);

impl LogFile {
    fn line(&self, rec: &impl std::fmt::Display) -> std::io::Result<()> {
        let text = format!("{rec}\n");
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(text.as_bytes())?;
        f.flush()
    }
}

fn parse_flag<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("bad value {value:?} for --{name}"))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = Vec::new();
    let mut opts = Options {
        ring_size: None,
        vnodes: None,
        writes: None,
        write_every: Duration::from_millis(20),
        write_sample: 0,
        drain: None,
        work: None,
        transaction_pooling: false,
        extra_rings: 0,
    };
    let mut work = worker::WorkConfig::default();
    let mut work_on = false;
    for a in std::env::args().skip(1) {
        let Some(flag) = a.strip_prefix("--") else {
            args.push(a);
            continue;
        };
        if flag == "work-drop-guards" {
            work.drop_guards_at_once = true;
            continue;
        }
        if flag == "transaction-pooling" {
            opts.transaction_pooling = true;
            continue;
        }
        let (name, value) = flag
            .split_once('=')
            .ok_or_else(|| format!("{a}: {USAGE}"))?;
        match name {
            "drain-ms" => opts.drain = Some(Duration::from_millis(parse_flag(name, value)?)),
            "work" => {
                (work.unit_min, work.unit_max) = parse_range(name, value)?;
                work_on = true;
            }
            "work-lanes" => work.lanes = parse_flag(name, value)?,
            "work-seed" => work.seed = parse_flag(name, value)?,
            "ring-size" => opts.ring_size = Some(parse_flag(name, value)?),
            "vnodes" => opts.vnodes = Some(parse_flag(name, value)?),
            "writes" => opts.writes = Some(value.to_string()),
            "write-every-ms" => opts.write_every = Duration::from_millis(parse_flag(name, value)?),
            "write-sample" => opts.write_sample = parse_flag(name, value)?,
            "extra-rings" => opts.extra_rings = parse_flag(name, value)?,
            _ => return Err(format!("unknown flag {a}: {USAGE}").into()),
        }
    }
    if work_on {
        opts.work = Some(work);
    }
    if args.len() < 6 {
        return Err(USAGE.into());
    }
    let url = &args[0];
    let ttl_ms: u64 = args[3]
        .parse()
        .map_err(|_| format!("bad ttl-ms {:?}", args[3]))?;
    let manager = PostgresConnectionManager::new(url.parse()?, NoTls);
    let pool = r2d2::Pool::builder()
        .max_size(5)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager);
    let file = LogFile(Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args[5])?,
    )));
    // One client for every ring with `--extra-rings` (the members share its
    // held connection and threads); without, the builder's own client, as
    // a one-member process makes it.
    let client = (opts.extra_rings > 0).then(|| leasering::Client::new(pool.clone()));
    let member_of = |ring: String| -> leasering::NodeBuilder {
        let builder = match &client {
            Some(c) => c.member(ring),
            None => RingNode::builder(pool.clone(), ring),
        };
        configure(builder, &args, ttl_ms, &opts)
    };
    let mut builder = member_of(args[1].clone());
    // Subscribed before start: the log misses nothing, the join and the
    // first activation included. The logger drops each event (and its copy
    // of a drain guard) as soon as it is written; the worker has its own
    // subscription, and holds its copies while its units run.
    let events = builder.subscribe();
    let work_events = opts.work.as_ref().map(|_| builder.subscribe());
    let log = file.clone();
    let logger = std::thread::spawn(move || -> std::io::Result<()> {
        for ev in events {
            if let Some(rec) = worker::record_of(&ev) {
                log.line(&rec)?;
            }
        }
        Ok(())
    });
    let node = match builder.start() {
        Ok(node) => node,
        Err(e) => {
            let _ = logger.join();
            return Err(e.into());
        }
    };
    // The extra rings join after the main one: `ready` says all did.
    let mut extras: Vec<RingNode> = Vec::new();
    for k in 1..=opts.extra_rings {
        match member_of(format!("{}-x{k}", args[1])).start() {
            Ok(x) => extras.push(x),
            Err(e) => {
                for m in extras.iter().chain([&node]) {
                    let _ = m.stop();
                }
                drop(node);
                let _ = logger.join();
                return Err(format!("joining ring {}-x{k}: {e}", args[1]).into());
            }
        }
    }
    let work = match (opts.work.clone(), work_events) {
        (Some(cfg), Some(rx)) => {
            let log = file.clone();
            let sink: worker::Sink = Arc::new(move |rec| {
                if let Err(e) = log.line(&rec) {
                    log::error!("member: cannot log work: {e}");
                }
            });
            Some(worker::Worker::start(node.clone(), rx, cfg, sink))
        }
        _ => None,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let writer = match args.get(6).cloned() {
        Some(table) => {
            let w = FencedWriter::new(url, table, &opts, node.clone(), stopping.clone())?;
            Some(std::thread::spawn(move || w.run()))
        }
        None => None,
    };
    println!("ready {}", node.node_id());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "stop" => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    stopping.store(true, Ordering::SeqCst);
    // The worker runs on while the node stops: the stop waits for the
    // drains, which end as the units in progress do.
    let result = node.stop();
    if let Some(w) = work {
        w.stop();
    }
    drop(node);
    // Then the extra rings, each leaving (the last one's stop ends the
    // client's threads); the first failure is the exit's.
    let result = extras.iter().map(RingNode::stop).fold(result, Result::and);
    drop(extras);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = logger.join();
    result?;
    Ok(())
}

/// The settings of every member of the process, whatever its ring.
fn configure(
    mut builder: leasering::NodeBuilder,
    args: &[String],
    ttl_ms: u64,
    opts: &Options,
) -> leasering::NodeBuilder {
    builder = builder
        .node_id(args[2].clone())
        .lease_ttl(Duration::from_millis(ttl_ms))
        .schema(args[4].clone())
        .start_timeout(Duration::from_secs(20));
    if let Some(n) = opts.ring_size {
        builder = builder.ring_size(n);
    }
    if let Some(n) = opts.vnodes {
        builder = builder.vnode_count(n);
    }
    if let Some(d) = opts.drain {
        builder = builder.drain_timeout(d);
    }
    if opts.transaction_pooling {
        builder = builder.pooling(leasering::Pooling::Transaction);
    }
    builder
}

/// Writes rows for owned partitions into a fenced table, the way a user's
/// service would guard its writes with the token.
struct FencedWriter {
    node: RingNode,
    pool: Pool,
    sql: String,
    log: Option<std::fs::File>,
    every: Duration,
    sample: usize,
    stopping: Arc<AtomicBool>,
    rng: rng::Rng,
}

impl FencedWriter {
    fn new(
        url: &str,
        table: String,
        opts: &Options,
        node: RingNode,
        stopping: Arc<AtomicBool>,
    ) -> Result<FencedWriter, Box<dyn std::error::Error>> {
        // Its own connection (through the same link as the member's), with
        // a statement timeout, so that it can never starve the node's pool.
        let mut cfg: postgres::Config = url.parse()?;
        cfg.options("-c statement_timeout=5000 -c lock_timeout=5000");
        let pool = r2d2::Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(1))
            .build_unchecked(PostgresConnectionManager::new(cfg, NoTls));
        let sql = format!(
            "INSERT INTO {table} AS t (partition, token, node_id, writes)
             SELECT w.p, w.t, $3, 1 FROM unnest($1::int[], $2::bigint[]) AS w(p, t) ORDER BY w.p
             ON CONFLICT (partition) DO UPDATE
               SET token = excluded.token, node_id = excluded.node_id, writes = t.writes + 1
               WHERE t.token <= excluded.token
             RETURNING t.partition"
        );
        let log = match &opts.writes {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        let rng = rng::Rng::new((std::process::id() as u64) << 32 ^ monotonic_ns(Instant::now()));
        Ok(FencedWriter {
            node,
            pool,
            sql,
            log,
            every: opts.write_every,
            sample: opts.write_sample,
            stopping,
            rng,
        })
    }

    fn run(mut self) {
        while !self.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(self.every);
            let t0 = monotonic_ns(Instant::now());
            let owned = self.node.owned_partitions();
            let mut held: Vec<(u32, u64)> = owned
                .iter()
                .filter_map(|p| owned.token(p).map(|t| (p, t)))
                .collect();
            if self.sample > 0 && held.len() > self.sample {
                self.rng.sample(&mut held, self.sample);
                held.sort_unstable();
            }
            if held.is_empty() {
                continue;
            }
            let Ok(mut c) = self.pool.get() else { continue };
            let ps: Vec<i32> = held.iter().map(|(p, _)| *p as i32).collect();
            let ts: Vec<i64> = held.iter().map(|(_, t)| *t as i64).collect();
            let rows = match c.query(&self.sql, &[&ps, &ts, &self.node.node_id()]) {
                Ok(rows) => rows,
                Err(e) => {
                    log::warn!("member {}: fenced write failed: {e}", self.node.node_id());
                    continue;
                }
            };
            let t1 = monotonic_ns(Instant::now());
            let mut accepted: Vec<u32> = rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
            accepted.sort_unstable();
            type Writes = Vec<(u32, u64)>;
            let (acc, rej): (Writes, Writes) = held
                .iter()
                .partition(|(p, _)| accepted.binary_search(p).is_ok());
            if let Some(log) = self.log.as_mut() {
                let rec = WriteRec {
                    t0,
                    t1,
                    accepted: acc,
                    rejected: rej,
                };
                let _ = writeln!(log, "{rec}");
                let _ = log.flush();
            }
        }
    }
}
