//! A ring member as its own process, for fault tests (kill -9, SIGSTOP)
//! and the chaos harness: it joins a ring and appends every ownership event
//! to a file, one line each, flushed at once, stamped with CLOCK_MONOTONIC
//! nanoseconds (shared by all processes of a machine):
//!
//! ```text
//! <mono_ns> acquired <token> <epoch> <p,p,...>
//! <mono_ns> released <reason> <epoch> <p,p,...>
//! <mono_ns> joined <epoch>
//! ```
//!
//! Usage: `member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> [fenced-table]`
//!
//! With a fenced table, it also writes one row per held partition every
//! 20 ms (`INSERT … ON CONFLICT … WHERE stored token <= new token`), and
//! counts writes the table refused. It exits (after leaving) when its
//! standard input closes or says `stop`.

use std::io::{BufRead, Write};
use std::time::Duration;

use leasering::{monotonic_ns, Event, RingNode};
use r2d2_postgres::{postgres::NoTls, PostgresConnectionManager};

fn main() {
    if let Err(e) = run() {
        eprintln!("member: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        return Err("usage: member <database-url> <ring-id> <node-id> <ttl-ms> <schema> <events-file> [fenced-table]".into());
    }
    let url = &args[1];
    let ttl_ms: u64 = args[4]
        .parse()
        .map_err(|_| format!("bad ttl-ms {:?}", args[4]))?;
    let manager = PostgresConnectionManager::new(url.parse()?, NoTls);
    let pool = r2d2::Pool::builder()
        .max_size(5)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[6])?;
    let node = RingNode::builder(pool.clone(), args[2].clone())
        .node_id(args[3].clone())
        .lease_ttl(Duration::from_millis(ttl_ms))
        .schema(args[5].clone())
        .start_timeout(Duration::from_secs(20))
        .start()?;
    let events = node.subscribe();
    // Events that happened before subscribe() (the join) are replayed from status.
    writeln!(
        file,
        "{} joined {}",
        monotonic_ns(std::time::Instant::now()),
        node.status().epoch
    )?;
    file.flush()?;
    let fenced = args.get(7).cloned();
    let writer_node = node.clone();
    let writer_pool = pool.clone();
    if let Some(table) = fenced.clone() {
        std::thread::spawn(move || fenced_writer(writer_node, writer_pool, table));
    }
    let logger = std::thread::spawn(move || -> std::io::Result<()> {
        for ev in events {
            let line = match ev {
                Event::Acquired {
                    partitions,
                    token,
                    epoch,
                    at,
                    ..
                } => {
                    format!(
                        "{} acquired {token} {epoch} {}",
                        monotonic_ns(at),
                        csv(&partitions)
                    )
                }
                Event::Released {
                    partitions,
                    reason,
                    epoch,
                    at,
                    ..
                } => {
                    format!(
                        "{} released {reason:?} {epoch} {}",
                        monotonic_ns(at),
                        csv(&partitions)
                    )
                }
                Event::Joined { epoch, at, .. } => format!("{} joined {epoch}", monotonic_ns(at)),
                _ => continue,
            };
            writeln!(file, "{line}")?;
            file.flush()?;
        }
        Ok(())
    });
    println!("ready {}", node.node_id());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "stop" => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let result = node.stop();
    drop(node);
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

/// Writes a row per owned partition into a fenced table, the way a user's
/// service would guard its writes with the token.
fn fenced_writer(
    node: RingNode,
    pool: r2d2::Pool<PostgresConnectionManager<NoTls>>,
    table: String,
) {
    let sql = format!(
        "INSERT INTO {table} AS t (partition, token, node_id, writes) VALUES ($1, $2, $3, 1)
         ON CONFLICT (partition) DO UPDATE SET token = excluded.token, node_id = excluded.node_id, writes = t.writes + 1
         WHERE t.token <= excluded.token"
    );
    let rejected_sql =
        format!("INSERT INTO {table}_rejected (partition, token, node_id) VALUES ($1, $2, $3)");
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let Ok(mut c) = pool.get() else { continue };
        let owned = node.owned_partitions();
        if !owned.is_valid() && node.status().stopped {
            return;
        }
        for p in owned.iter() {
            let Some(token) = owned.token(p) else {
                continue;
            };
            match c.execute(&sql, &[&(p as i32), &(token as i64), &node.node_id()]) {
                Ok(0) => {
                    let _ = c.execute(
                        &rejected_sql,
                        &[&(p as i32), &(token as i64), &node.node_id()],
                    );
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
