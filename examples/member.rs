//! A ring member as its own process, for fault tests (kill -9, SIGSTOP)
//! and the chaos harness: it joins a ring and appends every ownership event
//! to a file, one line each, flushed at once, stamped with CLOCK_MONOTONIC
//! nanoseconds (shared by all processes of a machine):
//!
//! ```text
//! <mono_ns> joined <epoch>
//! <mono_ns> acquired <token> <epoch> <p,p,...>
//! <mono_ns> released <reason> <epoch> <p,p,...>
//! <mono_ns> view <epoch> <members>
//! ```
//!
//! Usage:
//!
//! ```text
//! member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> [fenced-table]
//!        [--ring-size=N] [--vnodes=N] [--writes=FILE] [--write-every-ms=N] [--write-sample=N]
//! ```
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
//! answer. It prints `ready <node-id>` on standard output once joined, and
//! exits (after leaving) when its standard input closes or says `stop`.
//! Library logs go to standard error (`RUST_LOG`).

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasering::{monotonic_ns, Event, RingNode};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

const USAGE: &str = "usage: member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> \
     [fenced-table] [--ring-size=N] [--vnodes=N] [--writes=FILE] [--write-every-ms=N] [--write-sample=N]";

fn main() {
    let _ = env_logger::builder().try_init();
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
    };
    for a in std::env::args().skip(1) {
        let Some(flag) = a.strip_prefix("--") else {
            args.push(a);
            continue;
        };
        let (name, value) = flag
            .split_once('=')
            .ok_or_else(|| format!("{a}: {USAGE}"))?;
        match name {
            "ring-size" => opts.ring_size = Some(parse_flag(name, value)?),
            "vnodes" => opts.vnodes = Some(parse_flag(name, value)?),
            "writes" => opts.writes = Some(value.to_string()),
            "write-every-ms" => opts.write_every = Duration::from_millis(parse_flag(name, value)?),
            "write-sample" => opts.write_sample = parse_flag(name, value)?,
            _ => return Err(format!("unknown flag {a}: {USAGE}").into()),
        }
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
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[5])?;
    let mut builder = RingNode::builder(pool, args[1].clone())
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
    // Subscribed before start: the log misses nothing, the join and the
    // first activation included.
    let events = builder.subscribe();
    let logger = std::thread::spawn(move || -> std::io::Result<()> {
        for ev in events {
            let line = match ev {
                Event::Acquired {
                    partitions,
                    token,
                    epoch,
                    at,
                    ..
                } => format!(
                    "{} acquired {token} {epoch} {}",
                    monotonic_ns(at),
                    csv(&partitions)
                ),
                Event::Released {
                    partitions,
                    reason,
                    epoch,
                    at,
                    ..
                } => format!(
                    "{} released {reason:?} {epoch} {}",
                    monotonic_ns(at),
                    csv(&partitions)
                ),
                Event::Joined { epoch, at, .. } => format!("{} joined {epoch}", monotonic_ns(at)),
                Event::ViewChanged {
                    epoch, members, at, ..
                } => format!("{} view {epoch} {members}", monotonic_ns(at)),
                _ => continue,
            };
            writeln!(file, "{line}")?;
            file.flush()?;
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
    let result = node.stop();
    drop(node);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = logger.join();
    result?;
    Ok(())
}

fn csv(ps: &[u32]) -> String {
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn pairs(ps: &[(u32, u64)]) -> String {
    if ps.is_empty() {
        return "-".to_string();
    }
    ps.iter()
        .map(|(p, t)| format!("{p}:{t}"))
        .collect::<Vec<_>>()
        .join(",")
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
    rng: u64,
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
        let rng =
            (std::process::id() as u64) << 32 | (monotonic_ns(Instant::now()) & 0xffff_ffff) | 1;
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

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
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
                for i in 0..self.sample {
                    let j = i + (self.next_rand() % (held.len() - i) as u64) as usize;
                    held.swap(i, j);
                }
                held.truncate(self.sample);
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
                let _ = writeln!(log, "{t0} wrote {t1} {} {}", pairs(&acc), pairs(&rej));
                let _ = log.flush();
            }
        }
    }
}
