//! The workloads of simulated pods: identity servers that answer with their
//! pod's name, and clients that report which pod answered and from where.
//!
//! Both run on threads that entered the pod's network namespace, so their
//! sockets are the pod's sockets.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use sluice_testkit::netns::NetNs;

pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A server running in a pod; stopped (and its socket closed) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes a thread blocked in accept()/recvfrom().
        // SAFETY: shutting down a socket the server thread still owns.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers each line `L` on a TCP connection with `<name> L`; answers an
/// HTTP GET with the name as body (for curl and the demo).
pub fn serve_tcp(ns: &NetNs, name: &str, port: u16) -> Result<Server> {
    let name = name.to_string();
    let listener = ns
        .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .with_context(|| format!("binding TCP port {port}"))?;
    let fd = listener.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let name = name.clone();
            std::thread::spawn(move || answer_tcp(conn, &name));
        }
    });
    Ok(Server {
        stop,
        fd,
        thread: Some(thread),
    })
}

fn answer_tcp(conn: TcpStream, name: &str) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
        if line.starts_with("GET ") {
            // Drain the request headers, answer, close.
            let mut h = String::new();
            while matches!(lines.read_line(&mut h), Ok(n) if n > 2) {
                h.clear();
            }
            let body = format!("{name}\n");
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        if out
            .write_all(format!("{name} {}\n", line.trim_end()).as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
    }
}

/// Speaks first: writes `<name> push N` to each connection every
/// `interval`, unasked. Its segments reach a client that sends nothing only
/// while the flow's reply state lives (no client packet would recreate it).
pub fn serve_push(ns: &NetNs, name: &str, port: u16, interval: Duration) -> Result<Server> {
    let name = name.to_string();
    let listener = ns
        .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .with_context(|| format!("binding TCP port {port}"))?;
    let fd = listener.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            let (name, stopped) = (name.clone(), stopped.clone());
            std::thread::spawn(move || {
                for n in 0u64.. {
                    if stopped.load(Ordering::SeqCst)
                        || conn
                            .write_all(format!("{name} push {n}\n").as_bytes())
                            .is_err()
                    {
                        return;
                    }
                    std::thread::sleep(interval);
                }
            });
        }
    });
    Ok(Server {
        stop,
        fd,
        thread: Some(thread),
    })
}

/// A client that only listens to a [`serve_push`] server, checking that
/// the pushes keep coming, in order.
pub struct PushListener {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicU64>,
    thread: Option<JoinHandle<StreamReport>>,
}

impl PushListener {
    pub fn start(ns: &NetNs, target: SocketAddr, patience: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = ns.spawn(move || {
            let mut report = StreamReport {
                server: String::new(),
                exchanged: 0,
                error: None,
            };
            let conn = match TcpStream::connect_timeout(&target, IO_TIMEOUT) {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some(format!("connect: {e}"));
                    return report;
                }
            };
            let _ = conn.set_read_timeout(Some(patience));
            let mut lines = BufReader::new(conn);
            let mut expected = None;
            while !s.load(Ordering::SeqCst) {
                let mut line = String::new();
                match lines.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        let mut words = line.split_whitespace();
                        report.server = words.next().unwrap_or("").to_string();
                        let seq: Option<u64> = words.nth(1).and_then(|w| w.parse().ok());
                        if expected.is_some_and(|e| seq != Some(e)) {
                            report.error =
                                Some(format!("expected push {expected:?}, got {line:?}"));
                            break;
                        }
                        expected = seq.map(|n| n + 1);
                        report.exchanged += 1;
                        r.store(report.exchanged, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        report.error = Some("the server closed the connection".into());
                        break;
                    }
                    Err(e) => {
                        report.error = Some(format!("after {} pushes: {e}", report.exchanged));
                        break;
                    }
                }
            }
            report
        })?;
        Ok(Self {
            stop,
            received,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) -> StreamReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .unwrap_or(StreamReport {
                server: String::new(),
                exchanged: 0,
                error: Some("listener thread panicked".into()),
            })
    }
}

impl Drop for PushListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answers each TCP connection with the address it came from, then closes:
/// shows what source address arrived (masquerade checks).
pub fn serve_peer_address(ns: &NetNs, port: u16) -> Result<Server> {
    let listener = ns
        .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .with_context(|| format!("binding TCP port {port}"))?;
    let fd = listener.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                let _ = writeln!(conn, "{}", peer.ip());
            }
        }
    });
    Ok(Server {
        stop,
        fd,
        thread: Some(thread),
    })
}

/// The source address a `serve_peer_address` server saw for our connection.
pub fn ask_peer_address(target: SocketAddr) -> Result<String> {
    let conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Answers each datagram `D` with `<name> D`.
pub fn serve_udp(ns: &NetNs, name: &str, port: u16) -> Result<Server> {
    let name = name.to_string();
    let sock = ns
        .run(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .with_context(|| format!("binding UDP port {port}"))?;
    let fd = sock.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stopped.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n == 0 && stopped.load(Ordering::SeqCst) {
                break;
            }
            let mut reply = format!("{name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from);
        }
    });
    Ok(Server {
        stop,
        fd,
        thread: Some(thread),
    })
}

/// The answering pod's name, from a reply line `<name> ...`.
fn server_name(reply: &str) -> String {
    reply.split_whitespace().next().unwrap_or("").to_string()
}

/// One TCP exchange: connect, send a line, return the answering pod's name.
pub fn tcp_ask(target: SocketAddr) -> Result<String> {
    let conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    // The connected socket only accepts segments from `target`: an answer
    // means the reply came back from the address we dialled.
    let mut out = conn.try_clone()?;
    out.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    if line.is_empty() {
        bail!("connection to {target} closed without an answer");
    }
    Ok(server_name(&line))
}

/// Which servers answer `n` new connections to `target` from inside `ns`,
/// and how many times each; panics naming the connection that failed.
pub fn tcp_spread(ns: &NetNs, target: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    ns.run(move || {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let who = tcp_ask(target)
                .unwrap_or_else(|e| panic!("connection {i} to {target} failed: {e}"));
            *seen.entry(who).or_insert(0) += 1;
        }
        seen
    })
    .expect("client thread")
}

/// Like [`tcp_ask`], from a chosen local port (SO_REUSEADDR, so a port in
/// TIME_WAIT towards another destination can be used again): the same
/// client flow, as far as a load balancer's hash is concerned.
///
/// Returns once the server has closed its end too (our FIN sent, its FIN
/// read), so a caller reusing the port starts after the previous
/// connection is over on both hosts. Otherwise a busy server still holding
/// the old socket (CLOSE_WAIT) answers the next SYN on the same wire tuple
/// with a challenge ACK, and TCP itself retries a second later: a delay of
/// the hosts' making that a test would blame on the load balancer.
pub fn tcp_ask_from(local_port: u16, target: SocketAddr) -> Result<String> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh fd that we own until it is
    // handed to TcpStream.
    let conn = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        );
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            size_of::<libc::timeval>() as u32,
        );
        let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sin(Ipv4Addr::UNSPECIFIED, local_port);
        if libc::bind(
            fd,
            &local as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            bail!("bind :{local_port}: {}", std::io::Error::last_os_error());
        }
        let SocketAddr::V4(t) = target else {
            bail!("IPv4 only");
        };
        let remote = sin(*t.ip(), t.port());
        if libc::connect(
            fd,
            &remote as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            bail!("connect {target}: {}", std::io::Error::last_os_error());
        }
        stream
    };
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = conn.try_clone()?;
    out.write_all(b"hello\n")?;
    let mut answer = BufReader::new(conn);
    let mut line = String::new();
    answer.read_line(&mut line)?;
    if line.is_empty() {
        bail!("connection to {target} closed without an answer");
    }
    out.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut answer, &mut rest)
        .with_context(|| format!("waiting for {target} to close"))?;
    Ok(server_name(&line))
}

/// A plain HTTP GET: the status code and the body.
pub fn http_get(target: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {reply:?}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// One UDP exchange from an unconnected socket: returns the answering pod's
/// name and the address the reply came from.
pub fn udp_ask(
    sock: &UdpSocket,
    target: SocketAddr,
    payload: &str,
) -> Result<(String, SocketAddr)> {
    sock.send_to(payload.as_bytes(), target)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok((server_name(&reply), from))
}

pub fn udp_socket() -> Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A long-lived TCP conversation: a line every `interval`, each answer
/// checked. Used to prove a flow survives changes around it.
pub struct Stream {
    stop: Arc<AtomicBool>,
    pub exchanged: Arc<AtomicU64>,
    server: Arc<std::sync::Mutex<String>>,
    local: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    thread: Option<JoinHandle<StreamReport>>,
}

#[derive(Debug)]
pub struct StreamReport {
    pub server: String,
    pub exchanged: u64,
    /// The first failure, if the conversation broke.
    pub error: Option<String>,
}

impl Stream {
    pub fn start(ns: &NetNs, target: SocketAddr, interval: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanged = Arc::new(AtomicU64::new(0));
        let server = Arc::new(std::sync::Mutex::new(String::new()));
        let local = Arc::new(std::sync::Mutex::new(None));
        let (s, e, who, me) = (
            stop.clone(),
            exchanged.clone(),
            server.clone(),
            local.clone(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let mut report = StreamReport {
                server: String::new(),
                exchanged: 0,
                error: None,
            };
            let conn = match TcpStream::connect_timeout(&target, IO_TIMEOUT) {
                Ok(c) => c,
                Err(err) => {
                    report.error = Some(format!("connect: {err}"));
                    let _ = ready_tx.send(());
                    return report;
                }
            };
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            *me.lock().unwrap() = conn.local_addr().ok();
            let mut out = conn.try_clone().expect("clone socket");
            let mut lines = BufReader::new(conn);
            let mut seq = 0u64;
            while !s.load(Ordering::SeqCst) {
                let mut line = String::new();
                let r = out
                    .write_all(format!("seq {seq}\n").as_bytes())
                    .and_then(|_| lines.read_line(&mut line));
                match r {
                    Ok(n) if n > 0 && line.trim_end().ends_with(&format!("seq {seq}")) => {
                        report.server = server_name(&line);
                        if seq == 0 {
                            *who.lock().unwrap() = report.server.clone();
                        }
                        seq += 1;
                        report.exchanged = seq;
                        e.store(seq, Ordering::SeqCst);
                        if seq == 1 {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(_) => {
                        report.error = Some(format!("bad or no answer to seq {seq}: {line:?}"));
                        break;
                    }
                    Err(err) => {
                        report.error = Some(format!("seq {seq}: {err}"));
                        break;
                    }
                }
                std::thread::sleep(interval);
            }
            let _ = ready_tx.send(());
            report
        })?;
        // Return once the first exchange happened (or failed).
        let _ = ready_rx.recv_timeout(IO_TIMEOUT * 2);
        Ok(Self {
            stop,
            exchanged,
            server,
            local,
            thread: Some(thread),
        })
    }

    /// The client's own address and port (once connected).
    pub fn local(&self) -> Option<SocketAddr> {
        *self.local.lock().unwrap()
    }

    /// Exchanges so far.
    pub fn exchanged(&self) -> u64 {
        self.exchanged.load(Ordering::SeqCst)
    }

    /// The pod answering this stream (empty until the first answer).
    pub fn server(&self) -> String {
        self.server.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> StreamReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .unwrap_or(StreamReport {
                server: String::new(),
                exchanged: 0,
                error: Some("stream thread panicked".into()),
            })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
