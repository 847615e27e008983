//! The load generator: a TCP server in one pod, a client in another, each
//! one thread pinned to the same CPU, so every mode pays for its path on
//! the one CPU that also runs the endpoints (the daemon, if any, gets the
//! other).
//!
//! - Connection rate: connect, send one byte, read the answer, close;
//!   again, for the cell's duration. Latency per connection.
//! - Request rate: one connection, 64-byte request, 64-byte answer, again.
//!   Latency per request.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
use sluice_testkit::netns::NetNs;

use crate::bench::{percentile, pin_thread_to_cpu};

pub const PORT: u16 = 8080;
const REQUEST: usize = 64;

/// What one cell measured.
#[derive(Clone, Debug)]
pub struct Cell {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub count: u64,
}

/// An echo server on `PORT` in a pod: answers whatever arrives until the
/// peer closes. One connection at a time (the client makes one at a time).
pub struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    /// Peers seen (the last one): proves what address the client arrived
    /// from, after any translation.
    last_peer: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// The listening socket, shut down to wake the blocked accept.
    listener_fd: i32,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &NetNs, cpu: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let last_peer = Arc::new(std::sync::Mutex::new(None));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = {
            let (stop, accepted, last_peer) = (stop.clone(), accepted.clone(), last_peer.clone());
            ns.spawn(move || {
                pin_thread_to_cpu(cpu);
                let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(listener.as_raw_fd()));
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(peer) = conn.peer_addr() {
                        *last_peer.lock().unwrap() = Some(peer);
                    }
                    let _ = conn.set_nodelay(true);
                    let mut buf = [0u8; REQUEST];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            })?
        };
        let listener_fd = match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => bail!("server on port {PORT}: {e}"),
            Err(_) => bail!("server on port {PORT} did not start"),
        };
        Ok(Self {
            stop,
            accepted,
            last_peer,
            listener_fd,
            handle: Some(handle),
        })
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn last_peer(&self) -> Option<SocketAddr> {
        *self.last_peer.lock().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening socket down fails the accept blocked on it.
        // SAFETY: the fd is the listener's, open until the thread returns.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Makes the client pod fit for tens of thousands of short connections:
/// ports in TIME_WAIT are reused after a second, from a wide range.
pub fn tune_client(ns: &NetNs) -> Result<()> {
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration) -> Result<Cell> {
    if lat.is_empty() {
        bail!("nothing completed");
    }
    let count = lat.len() as u64;
    lat.sort_unstable();
    Ok(Cell {
        per_sec: count as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        count,
    })
}

/// Connections per second to `target` from the client pod for `dur`.
pub fn connection_rate(ns: &NetNs, target: SocketAddr, dur: Duration, cpu: usize) -> Result<Cell> {
    ns.run(move || -> Result<Cell> {
        pin_thread_to_cpu(cpu);
        let mut lat = Vec::with_capacity(64 * 1024);
        let start = Instant::now();
        let mut buf = [0u8; 1];
        while start.elapsed() < dur {
            let t0 = Instant::now();
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .with_context(|| format!("connection {} to {target}", lat.len()))?;
            c.set_nodelay(true)?;
            c.write_all(b"x")?;
            c.read_exact(&mut buf)
                .with_context(|| format!("answer on connection {}", lat.len()))?;
            drop(c);
            lat.push(t0.elapsed());
        }
        stats(lat, start.elapsed())
    })?
}

/// Requests per second over one connection to `target` for `dur`.
pub fn request_rate(ns: &NetNs, target: SocketAddr, dur: Duration, cpu: usize) -> Result<Cell> {
    ns.run(move || -> Result<Cell> {
        pin_thread_to_cpu(cpu);
        let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connecting to {target}"))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let req = [7u8; REQUEST];
        let mut buf = [0u8; REQUEST];
        let mut lat = Vec::with_capacity(256 * 1024);
        let start = Instant::now();
        while start.elapsed() < dur {
            let t0 = Instant::now();
            c.write_all(&req)?;
            c.read_exact(&mut buf)
                .with_context(|| format!("answer to request {}", lat.len()))?;
            lat.push(t0.elapsed());
        }
        stats(lat, start.elapsed())
    })?
}
