//! The cluster of a chaos run: a private PostgreSQL, member processes (the
//! testkit's `leasering-member` bin), each with its own TCP
//! proxy, their logs followed live (to know when the ring has settled) and
//! collected at the end for the checker. Some processes also serve members
//! of extra rings (`<RING>-x1`, …) on the same client: only [`RING`] is
//! judged, and those rings' rows are only counted at the end.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use leasering_testkit::member_log::{parse_event, parse_events, parse_writes};
use leasering_testkit::oracle::{self, End, History, RunId};
use leasering_testkit::rng::Rng;
use leasering_testkit::{TcpProxy, TestPostgres};

use super::checker::Run;

pub const RING: &str = "chaos";
pub const SCHEMA: &str = "leasering";
pub const SINK: &str = "public.chaos_sink";

/// Now on CLOCK_MONOTONIC, in nanoseconds (the members' clock).
pub fn mono_now() -> u64 {
    oracle::now()
}

/// The one run of a member's own [`History`].
const ME: RunId = RunId(0);

/// The member process, built by Cargo with the tests.

#[derive(Debug, Clone)]
pub struct Settings {
    pub ttl: Duration,
    pub ring_size: u32,
    /// Vnodes of each member process, drawn in this range (weights differ).
    pub vnodes: (u32, u32),
    /// Seeds the draws of the cluster (vnode counts).
    pub seed: u64,
    pub write_every_ms: u64,
    pub write_sample: usize,
    /// The drain workload of every member, if any.
    pub work: Option<WorkLoad>,
}

/// The drain workload of the member processes (`leasering_testkit::worker`).
#[derive(Debug, Clone)]
pub struct WorkLoad {
    /// `NodeBuilder::drain_timeout` of every member.
    pub drain: Duration,
    /// Units of work last this long (drawn per unit, in milliseconds).
    pub unit_ms: (u64, u64),
    pub lanes: u32,
    /// The mutation: every drain guard dropped at once while the work goes on.
    pub drop_guards: bool,
}

/// Follows a log file as it grows, handing out complete lines.
struct Tail {
    file: Option<File>,
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            file: None,
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// New complete lines since the last call.
    fn poll(&mut self) -> Vec<String> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut buf = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        done.lines().map(str::to_string).collect()
    }
}

/// One member process.
pub struct Member {
    /// Unique per process: `<node-id>#<n>`.
    pub name: String,
    pub node_id: String,
    /// Rings it is a member of besides [`RING`], on the same client.
    pub extra_rings: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    pub proxy: TcpProxy,
    events_path: PathBuf,
    writes_path: PathBuf,
    stderr_path: PathBuf,
    tail: Tail,
    /// Its log so far, replayed by the oracle (one run).
    log: History,
    /// Partitions active on it, as its log says so far.
    owned: Vec<u32>,
    last_growth: Instant,
    pub paused: bool,
    pub ready: bool,
    pub end: Option<End>,
    pub status: Option<ExitStatus>,
    /// A log line the harness could not parse.
    pub bad_lines: Vec<String>,
}

impl Member {
    pub fn is_live(&self) -> bool {
        self.end.is_none()
    }

    fn follow(&mut self) {
        let lines = self.tail.poll();
        if lines.is_empty() {
            return;
        }
        for l in lines {
            match parse_event(&l) {
                // The work goes on all the time: only ownership records
                // tell whether the ring is quiet (and only they matter
                // here; the checker judges the work at the end).
                Ok(ev) if ev.is_work() => {}
                Ok(ev) => {
                    self.last_growth = Instant::now();
                    self.log.logged(ME, &ev);
                }
                Err(e) => self.bad_lines.push(format!("{}: {e}: {l:?}", self.name)),
            }
        }
        // Only what it holds now matters here; the checker judges the
        // whole logs at the end.
        self.log.take_closed();
        self.owned = self.log.holding(ME);
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a plain kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// The last lines of its standard error, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub struct Cluster {
    pub db: TestPostgres,
    pub dir: PathBuf,
    pub settings: Settings,
    pub members: Vec<Member>,
    next_node: usize,
    processes_of: HashMap<String, usize>,
    rng: Rng,
}

impl Cluster {
    pub fn start(settings: Settings, dir: PathBuf) -> Cluster {
        std::fs::create_dir_all(&dir).expect("create the log directory");
        let db =
            TestPostgres::start().unwrap_or_else(|e| panic!("chaos needs its own PostgreSQL: {e}"));
        let mut c = db.client().expect("connect to the chaos database");
        leasering::migrate(&mut c, SCHEMA).expect("create the leasering schema");
        c.batch_execute(&format!(
            "CREATE TABLE {SINK} (partition int PRIMARY KEY, token bigint NOT NULL, node_id text NOT NULL, writes bigint NOT NULL);
             CREATE TABLE {SINK}_anomalies (partition int, old_token bigint, old_node text,
                                            new_token bigint, new_node text, at timestamptz DEFAULT clock_timestamp());
             CREATE FUNCTION {SINK}_check() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.token < OLD.token OR (NEW.token = OLD.token AND NEW.node_id <> OLD.node_id) THEN
                 INSERT INTO {SINK}_anomalies (partition, old_token, old_node, new_token, new_node)
                 VALUES (OLD.partition, OLD.token, OLD.node_id, NEW.token, NEW.node_id);
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER chaos_sink_check BEFORE UPDATE ON {SINK}
               FOR EACH ROW EXECUTE FUNCTION {SINK}_check();"
        ))
        .expect("create the fenced sink");
        Cluster {
            db,
            dir,
            rng: Rng::new(settings.seed ^ 0x5eed_c1a5),
            settings,
            members: Vec::new(),
            next_node: 0,
            processes_of: HashMap::new(),
        }
    }

    pub fn fresh_node_id(&mut self) -> String {
        let id = format!("m{}", self.next_node);
        self.next_node += 1;
        id
    }

    /// Starts a member process for `node_id` (not waiting for it to join).
    pub fn spawn(&mut self, node_id: &str) -> usize {
        self.spawn_with(node_id, 0)
    }

    /// Starts a member process for `node_id` that is also a member of
    /// `extra_rings` more rings (`<RING>-x1`, …), all on one client (not
    /// waiting for it to join: its `ready` says every ring's member did).
    pub fn spawn_with(&mut self, node_id: &str, extra_rings: u32) -> usize {
        let n = self.processes_of.entry(node_id.to_string()).or_insert(0);
        *n += 1;
        let name = format!("{node_id}#{n}");
        let target = format!("127.0.0.1:{}", self.db.port())
            .parse()
            .expect("address");
        let proxy = TcpProxy::start(target).unwrap_or_else(|e| panic!("proxy: {e}"));
        let file = |ext: &str| self.dir.join(format!("{}.{ext}", name.replace('#', "-")));
        let (events_path, writes_path, stderr_path) =
            (file("events"), file("writes"), file("stderr"));
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2 application_name={node_id}",
            proxy.port()
        );
        let vnodes = self
            .rng
            .range(self.settings.vnodes.0 as u64, self.settings.vnodes.1 as u64);
        let work_seed = self.rng.next_u64();
        let s = &self.settings;
        let mut cmd = Command::new(leasering_testkit::member_binary());
        cmd.args([
            url.as_str(),
            RING,
            node_id,
            &s.ttl.as_millis().to_string(),
            SCHEMA,
            events_path.to_str().expect("utf-8 path"),
            SINK,
        ])
        .arg(format!("--ring-size={}", s.ring_size))
        .arg(format!("--vnodes={vnodes}"))
        .arg(format!("--writes={}", writes_path.display()))
        .arg(format!("--write-every-ms={}", s.write_every_ms))
        .arg(format!("--write-sample={}", s.write_sample))
        .args((extra_rings > 0).then(|| format!("--extra-rings={extra_rings}")))
        .args(s.work.iter().flat_map(|w| {
            let mut a = vec![
                format!("--drain-ms={}", w.drain.as_millis()),
                format!("--work={}-{}", w.unit_ms.0, w.unit_ms.1),
                format!("--work-lanes={}", w.lanes),
                format!("--work-seed={work_seed}"),
            ];
            if w.drop_guards {
                a.push("--work-drop-guards".to_string());
            }
            a
        }))
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).expect("member stderr file"));
        // SAFETY: prctl in the forked child before exec, async-signal-safe.
        // The member dies with the thread that spawned it (the test's), even
        // if the test process is killed; all spawns happen on that thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn a member process");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("member stdout");
        let (tx, rx) = unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = History::with_ring_size(s.ring_size);
        log.add_run(&name);
        self.members.push(Member {
            name,
            node_id: node_id.to_string(),
            extra_rings,
            child,
            stdin,
            stdout: rx,
            proxy,
            tail: Tail::new(events_path.clone()),
            events_path,
            writes_path,
            stderr_path,
            log,
            owned: Vec::new(),
            last_growth: Instant::now(),
            paused: false,
            ready: false,
            end: None,
            status: None,
            bad_lines: Vec::new(),
        });
        self.members.len() - 1
    }

    /// Waits until each of `idx` said `ready` (it joined).
    pub fn wait_ready(&mut self, idx: &[usize], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for &i in idx {
            while !self.members[i].ready {
                let m = &mut self.members[i];
                match m.stdout.recv_deadline(deadline) {
                    Ok(line) if line.starts_with("ready") => m.ready = true,
                    Ok(_) => {}
                    Err(_) => {
                        let status = m.child.try_wait().ok().flatten();
                        return Err(format!(
                            "member {} not ready within {timeout:?} (exit status {status:?}); its stderr ends with:\n{}",
                            m.name,
                            m.stderr_tail(20)
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Spawns `k` members with fresh ids at once and waits until all joined.
    pub fn spawn_fresh(&mut self, k: usize, timeout: Duration) -> Result<Vec<usize>, String> {
        let idx: Vec<usize> = (0..k)
            .map(|_| {
                let id = self.fresh_node_id();
                self.spawn(&id)
            })
            .collect();
        self.wait_ready(&idx, timeout)?;
        Ok(idx)
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_live())
            .collect()
    }

    /// `kill -9`; returns the instant the signal was sent.
    pub fn kill(&mut self, i: usize) -> u64 {
        let m = &mut self.members[i];
        let t = mono_now();
        m.signal(libc::SIGKILL);
        m.status = m.child.wait().ok();
        m.end = Some(End::Killed(t));
        m.paused = false;
        t
    }

    pub fn pause(&mut self, i: usize) {
        self.members[i].signal(libc::SIGSTOP);
        self.members[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.members[i].signal(libc::SIGCONT);
        self.members[i].paused = false;
    }

    /// Graceful stop of several members at once: each is told to stop,
    /// then each is waited for (killed, and reported, if it hangs).
    pub fn stop_many(&mut self, idx: &[usize], timeout: Duration) -> Result<(), String> {
        for &i in idx {
            let m = &mut self.members[i];
            if m.paused {
                m.signal(libc::SIGCONT);
                m.paused = false;
            }
            if let Some(mut stdin) = m.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
                let _ = stdin.flush();
            }
        }
        let deadline = Instant::now() + timeout;
        let mut problems = Vec::new();
        for &i in idx {
            let m = &mut self.members[i];
            loop {
                match m.child.try_wait() {
                    Ok(Some(status)) => {
                        m.status = Some(status);
                        m.end = Some(End::Exited(mono_now()));
                        if !status.success() {
                            problems.push(format!(
                                "member {} exited with {status} on stop; its stderr ends with:\n{}",
                                m.name,
                                m.stderr_tail(20)
                            ));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let t = mono_now();
                        m.signal(libc::SIGKILL);
                        m.status = m.child.wait().ok();
                        m.end = Some(End::Killed(t));
                        problems.push(format!(
                            "member {} did not stop within {timeout:?}: killed",
                            m.name
                        ));
                        break;
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Members that died without being told to.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.members.iter_mut().filter(|m| m.end.is_none()) {
            if let Ok(Some(status)) = m.child.try_wait() {
                m.status = Some(status);
                m.end = Some(End::Exited(mono_now()));
                out.push(format!(
                    "member {} exited on its own with {status}; its stderr ends with:\n{}",
                    m.name,
                    m.stderr_tail(20)
                ));
            }
        }
        out
    }

    /// Partitions active on member `i`, as its log says now.
    pub fn owned_count(&mut self, i: usize) -> usize {
        self.members[i].follow();
        self.members[i].owned.len()
    }

    /// Partitions active on member `i`, as its log says now.
    pub fn owned_of(&mut self, i: usize) -> Vec<u32> {
        self.members[i].follow();
        self.members[i].owned.clone()
    }

    /// The partitions whose claims member `i` holds in the database now.
    /// A member's claims outlive its local lease (they are freed when its
    /// row is removed, after the lease ended in the database too): a member
    /// frozen just after it self-fenced owns nothing by its events, yet the
    /// partitions it held still wait for it.
    pub fn claims_of(&self, i: usize) -> Result<Vec<u32>, String> {
        let mut c = self.db.client().map_err(|e| e.to_string())?;
        let rows = c
            .query(
                &format!(
                    "SELECT c.partition FROM {SCHEMA}.claims c JOIN {SCHEMA}.members m
                       ON m.ring_id = c.ring_id AND m.incarnation = c.holder
                     WHERE c.ring_id = $1 AND m.node_id = $2"
                ),
                &[&RING, &self.members[i].node_id],
            )
            .map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }

    /// The ring's vnodes in the database now: `(position, node id)`.
    pub fn vnodes(&self) -> Result<Vec<(u32, String)>, String> {
        let mut c = self.db.client().map_err(|e| e.to_string())?;
        let rows = c
            .query(
                &format!("SELECT position, node_id FROM {SCHEMA}.vnodes WHERE ring_id = $1"),
                &[&RING],
            )
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
            .collect())
    }

    /// Reads what the live members logged since the last call.
    pub fn follow(&mut self) {
        for m in self.members.iter_mut().filter(|m| m.is_live()) {
            m.follow();
        }
    }

    /// Whether the ring is settled, as the logs tell: every partition
    /// active on exactly one live member, every live member active on some
    /// partition and running, and no log grew for `quiet`.
    pub fn settled(&mut self, quiet: Duration) -> bool {
        self.follow();
        let live: Vec<&Member> = self.members.iter().filter(|m| m.is_live()).collect();
        if live.is_empty()
            || live
                .iter()
                .any(|m| m.paused || !m.ready || m.owned.is_empty())
        {
            return false;
        }
        if live.iter().any(|m| m.last_growth.elapsed() < quiet) {
            return false;
        }
        let mut holders = vec![0u32; self.settings.ring_size as usize];
        for p in live.iter().flat_map(|m| &m.owned) {
            holders[*p as usize] += 1;
        }
        holders.iter().all(|n| *n == 1)
    }

    /// Polls [`settled`](Self::settled) until it holds, or fails after `timeout`.
    pub fn wait_settled(&mut self, quiet: Duration, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if self.settled(quiet) {
                return Ok(started.elapsed());
            }
            let gone = self.unexpected_exits();
            if !gone.is_empty() {
                return Err(gone.join("\n"));
            }
            if started.elapsed() > timeout {
                let live = self.live();
                let owned: Vec<String> = live
                    .iter()
                    .map(|&i| {
                        let m = &self.members[i];
                        format!(
                            "{}: {} partitions{}",
                            m.name,
                            m.owned.len(),
                            if m.paused { " (paused)" } else { "" }
                        )
                    })
                    .collect();
                return Err(format!(
                    "the ring did not settle within {timeout:?}: {}",
                    owned.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Membership rows of the ring (members and vnodes).
    pub fn membership_rows(&self) -> Result<u64, String> {
        let mut c = self.db.client().map_err(|e| e.to_string())?;
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {SCHEMA}.members WHERE ring_id = $1)
                          + (SELECT count(*) FROM {SCHEMA}.vnodes WHERE ring_id = $1)"
                ),
                &[&RING],
            )
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Rows of the extra rings (members and vnodes), as `(ring, node id)`.
    pub fn extra_ring_rows(&self) -> Result<Vec<(String, String)>, String> {
        let mut c = self.db.client().map_err(|e| e.to_string())?;
        let rows = c
            .query(
                &format!(
                    "SELECT ring_id, node_id FROM {SCHEMA}.members WHERE ring_id LIKE $1
                     UNION ALL
                     SELECT ring_id, node_id FROM {SCHEMA}.vnodes WHERE ring_id LIKE $1"
                ),
                &[&format!("{RING}-x%")],
            )
            .map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Accepted writes the sink's trigger found against its token order.
    pub fn sink_anomalies(&self) -> Result<(u64, Vec<String>), String> {
        let mut c = self.db.client().map_err(|e| e.to_string())?;
        let rows = c
            .query(
                &format!(
                    "SELECT partition, old_token, old_node, new_token, new_node FROM {SINK}_anomalies ORDER BY at"
                ),
                &[],
            )
            .map_err(|e| e.to_string())?;
        let shown = rows
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "partition {}: token {} of {} overwritten by token {} of {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, String>(2),
                    r.get::<_, i64>(3),
                    r.get::<_, String>(4)
                )
            })
            .collect();
        Ok((rows.len() as u64, shown))
    }

    /// Every member process's logs, for the checker. All must have ended.
    pub fn runs(&self) -> (Vec<Run>, Vec<String>) {
        let mut runs = Vec::new();
        let mut notes = Vec::new();
        for m in &self.members {
            let end = m.end.expect("collect runs only after every member ended");
            let text = std::fs::read_to_string(&m.events_path).unwrap_or_default();
            let (events, errs) = parse_events(&text);
            notes.extend(errs.into_iter().map(|e| format!("{} events: {e}", m.name)));
            let text = std::fs::read_to_string(&m.writes_path).unwrap_or_default();
            let (writes, errs) = parse_writes(&text);
            notes.extend(errs.into_iter().map(|e| format!("{} writes: {e}", m.name)));
            runs.push(Run {
                name: m.name.clone(),
                events,
                writes,
                end,
            });
        }
        (runs, notes)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nothing outlives the run: kill whatever is still running (a
        // stopped process takes SIGKILL too). The proxies and the database
        // go with their own drops.
        for m in self.members.iter_mut() {
            if m.end.is_none() || matches!(m.child.try_wait(), Ok(None)) {
                m.signal(libc::SIGKILL);
                let _ = m.child.wait();
                if m.end.is_none() {
                    m.end = Some(End::Killed(mono_now()));
                }
            }
        }
    }
}
