//! A loopback TCP proxy for injecting network faults between a client and
//! PostgreSQL (see [`TcpProxy`]).
//!
//! Each accepted connection is forwarded to the target by two threads, one
//! per direction. All sockets use short timeouts, so mode changes, [`cut`]
//! and dropping the proxy take effect within about 10 ms.
//!
//! [`cut`]: TcpProxy::cut

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::TestkitError;

/// Socket read/write timeout: the longest a forwarding thread is blocked
/// before it looks at the mode and the shutdown flags again.
const IO_TIMEOUT: Duration = Duration::from_millis(10);
/// Sleep between checks while idle (stalled, waiting for a delay, or no
/// pending connection to accept).
const TICK: Duration = Duration::from_millis(5);
/// Timeout for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of one read.
const CHUNK: usize = 16 * 1024;
/// Bytes a forwarding thread holds (in `Delay` mode) before it stops reading.
const MAX_QUEUED: usize = 1024 * 1024;

/// What a [`TcpProxy`] does with traffic and new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything as it comes (the initial mode).
    Pass,
    /// Forward nothing, in either direction, but keep every socket open:
    /// bytes wait in the socket buffers (a network partition that TCP does
    /// not notice). When the mode changes, what was held is delivered in
    /// order. New connections are accepted, and stalled too.
    Stall,
    /// Forward each chunk of bytes only once it has waited this long in the
    /// proxy (a slow network).
    Delay(Duration),
    /// Accept new connections and close them at once (a server that is down
    /// or out of connection slots); existing connections keep working.
    Refuse,
}

/// A TCP proxy on `127.0.0.1` that forwards connections to a target
/// (typically PostgreSQL) and can stall, delay, refuse or cut them on demand.
///
/// Dropping the proxy closes every connection and stops all its threads.
/// Socket errors only ever close the connection concerned; nothing panics.
pub struct TcpProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Where new connections go (see [`TcpProxy::set_target`]).
    target: Mutex<SocketAddr>,
    /// The mode and a generation number bumped on every change.
    mode: Mutex<(ProxyMode, u64)>,
    stopping: AtomicBool,
    /// Bumped by `cut`, so that connections being set up meanwhile are cut
    /// too.
    cut_epoch: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Handles of connection and timer threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One proxied connection.
struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    /// Forwarding threads still running (2, then 1, then 0).
    pumps_left: AtomicUsize,
}

impl Conn {
    /// Closes both sockets in both directions; the forwarding threads notice
    /// and end.
    fn shutdown(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.server.shutdown(Shutdown::Both);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        self.mode.lock().0
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn close(&self, conn: &Conn) {
        conn.shutdown();
        self.conns.lock().remove(&conn.id);
    }

    fn close_all(&self) {
        let conns: Vec<Arc<Conn>> = self.conns.lock().drain().map(|(_, c)| c).collect();
        for conn in conns {
            conn.shutdown();
        }
    }

    fn keep_thread(&self, handle: JoinHandle<()>) {
        let mut threads = self.threads.lock();
        threads.retain(|h| !h.is_finished());
        threads.push(handle);
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &*self.shared.target.lock())
            .field("mode", &self.mode())
            .field("connections", &self.connections())
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy listening on a free port of `127.0.0.1` and forwarding
    /// to `target`, in [`ProxyMode::Pass`].
    pub fn start(target: SocketAddr) -> Result<TcpProxy, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestkitError::new(format!("proxy: could not listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::new(format!("proxy: no local address: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TestkitError::new(format!("proxy: could not configure listener: {e}")))?;
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            mode: Mutex::new((ProxyMode::Pass, 0)),
            stopping: AtomicBool::new(false),
            cut_epoch: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("leasering-proxy-accept".to_string())
            .spawn(move || accept_loop(accept_shared, listener))
            .map_err(|e| TestkitError::new(format!("proxy: could not start a thread: {e}")))?;
        log::debug!("testkit: proxy {addr} -> {target} started");
        Ok(TcpProxy {
            shared,
            addr,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients should connect to (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        *self.shared.target.lock()
    }

    /// Sends the connections accepted from now on to `target` (a failover:
    /// the proxy stands for a virtual IP or a DNS name moved to the new
    /// primary). Connections already open stay with the old target; cut
    /// them with [`cut`](Self::cut).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock() = target;
        log::debug!("testkit: proxy {} now -> {target}", self.addr);
    }

    /// Switches to `mode`; takes effect on all connections within ~10 ms.
    /// Cancels a pending return to `Pass` scheduled by
    /// [`stall_for`](Self::stall_for).
    pub fn set_mode(&self, mode: ProxyMode) {
        let mut current = self.shared.mode.lock();
        current.0 = mode;
        current.1 = current.1.wrapping_add(1);
        log::debug!("testkit: proxy {} mode {mode:?}", self.addr);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Stalls now and switches back to [`ProxyMode::Pass`] after `duration`,
    /// unless the mode is changed meanwhile. Fails (leaving the mode
    /// unchanged) only if the timer thread cannot be started.
    pub fn stall_for(&self, duration: Duration) -> Result<(), TestkitError> {
        let (previous, generation) = {
            let mut current = self.shared.mode.lock();
            let previous = current.0;
            current.0 = ProxyMode::Stall;
            current.1 = current.1.wrapping_add(1);
            (previous, current.1)
        };
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name("leasering-proxy-timer".to_string())
            .spawn(move || {
                let until = Instant::now() + duration;
                while Instant::now() < until {
                    if shared.stopping() {
                        return;
                    }
                    thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
                }
                let mut current = shared.mode.lock();
                if current.1 == generation {
                    current.0 = ProxyMode::Pass;
                    current.1 = current.1.wrapping_add(1);
                }
            });
        match spawned {
            Ok(handle) => {
                self.shared.keep_thread(handle);
                Ok(())
            }
            Err(e) => {
                let mut current = self.shared.mode.lock();
                if current.1 == generation {
                    current.0 = previous;
                    current.1 = current.1.wrapping_add(1);
                }
                Err(TestkitError::new(format!(
                    "proxy: could not start a timer thread: {e}"
                )))
            }
        }
    }

    /// Closes every current connection at once, on both sides (the client
    /// and the target see the connection end). New connections are still
    /// accepted according to the mode.
    pub fn cut(&self) {
        self.shared.cut_epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.close_all();
        log::debug!("testkit: proxy {} cut all connections", self.addr);
    }

    /// The number of connections currently open through the proxy.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.cut_epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        self.shared.close_all();
        // Threads may register further threads while we join: loop until
        // none is left.
        loop {
            let handles: Vec<JoinHandle<()>> = self.shared.threads.lock().drain(..).collect();
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                let _ = handle.join();
            }
            self.shared.close_all();
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.mode() == ProxyMode::Refuse {
                    log::debug!("testkit: proxy refused a connection from {peer}");
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                let epoch = shared.cut_epoch.load(Ordering::SeqCst);
                let conn_shared = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name("leasering-proxy-conn".to_string())
                    .spawn(move || connection(conn_shared, stream, epoch));
                match spawned {
                    Ok(handle) => shared.keep_thread(handle),
                    Err(e) => log::warn!("testkit: proxy could not start a thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. out of file descriptors: keep going.
                log::warn!("testkit: proxy accept failed: {e}");
                thread::sleep(TICK);
            }
        }
    }
}

/// Sets up one connection, then forwards client → server on this thread and
/// server → client on a second one.
fn connection(shared: Arc<Shared>, client: TcpStream, epoch: u64) {
    let target = *shared.target.lock();
    let server = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(server) => server,
        Err(e) => {
            log::debug!("testkit: proxy could not reach {target}: {e}");
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let setup = || -> io::Result<(Arc<Conn>, [TcpStream; 4])> {
        for stream in [&client, &server] {
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
        }
        let streams = [
            client.try_clone()?,
            server.try_clone()?,
            server.try_clone()?,
            client.try_clone()?,
        ];
        let conn = Arc::new(Conn {
            id: shared.next_id.fetch_add(1, Ordering::SeqCst),
            client: client.try_clone()?,
            server: server.try_clone()?,
            closed: AtomicBool::new(false),
            pumps_left: AtomicUsize::new(2),
        });
        Ok((conn, streams))
    };
    let (conn, [c_read, s_write, s_read, c_write]) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            log::debug!("testkit: proxy could not set up a connection: {e}");
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
    };
    shared.conns.lock().insert(conn.id, Arc::clone(&conn));
    // A cut (or drop) that happened before the registration must apply too.
    if shared.stopping() || shared.cut_epoch.load(Ordering::SeqCst) != epoch {
        shared.close(&conn);
    }

    let back_shared = Arc::clone(&shared);
    let back_conn = Arc::clone(&conn);
    let spawned = thread::Builder::new()
        .name("leasering-proxy-s2c".to_string())
        .spawn(move || pump(&back_shared, &back_conn, s_read, c_write));
    match spawned {
        Ok(handle) => shared.keep_thread(handle),
        Err(e) => {
            log::warn!("testkit: proxy could not start a thread: {e}");
            shared.close(&conn);
            pump_done(&shared, &conn);
        }
    }
    pump(&shared, &conn, c_read, s_write);
}

/// Forwards bytes from `from` to `to` according to the mode, until EOF, an
/// error, a cut or the proxy's drop.
fn pump(shared: &Shared, conn: &Conn, mut from: TcpStream, mut to: TcpStream) {
    let mut queue: VecDeque<(Vec<u8>, Instant)> = VecDeque::new();
    let mut queued = 0usize;
    let mut eof = false;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if conn.is_closed() || shared.stopping() {
            break;
        }
        let mode = shared.mode();

        // Deliver what is due.
        let mut wait_for: Option<Duration> = None;
        if mode != ProxyMode::Stall {
            while let Some((data, read_at)) = queue.front() {
                if let ProxyMode::Delay(delay) = mode {
                    let age = read_at.elapsed();
                    if age < delay {
                        wait_for = Some(delay - age);
                        break;
                    }
                }
                if !write_all(shared, conn, &mut to, data) {
                    shared.close(conn);
                    break;
                }
                queued -= data.len();
                queue.pop_front();
            }
            if conn.is_closed() {
                break;
            }
        }
        if eof && queue.is_empty() {
            // Pass the half-close on; the other direction may go on.
            let _ = to.shutdown(Shutdown::Write);
            break;
        }

        // Read more, unless stalled (bytes then wait in the socket buffers).
        if mode == ProxyMode::Stall || eof || queued >= MAX_QUEUED {
            thread::sleep(wait_for.map_or(TICK, |w| w.min(TICK)));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => {
                queue.push_back((buf[..n].to_vec(), Instant::now()));
                queued += n;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                log::debug!("testkit: proxy connection closed: {e}");
                shared.close(conn);
                break;
            }
        }
    }
    pump_done(shared, conn);
}

fn pump_done(shared: &Shared, conn: &Conn) {
    if conn.pumps_left.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.close(conn);
    }
}

/// Writes all of `data`, retrying on timeouts; false if the connection is
/// closed or fails meanwhile.
fn write_all(shared: &Shared, conn: &Conn, to: &mut TcpStream, data: &[u8]) -> bool {
    let mut written = 0;
    while written < data.len() {
        if conn.is_closed() || shared.stopping() {
            return false;
        }
        match to.write(&data[written..]) {
            Ok(0) => return false,
            Ok(n) => written += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                log::debug!("testkit: proxy write failed: {e}");
                return false;
            }
        }
    }
    true
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
