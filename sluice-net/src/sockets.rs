//! Destroying UDP sockets connected to given backends, through the
//! kernel's `sock_diag` netlink interface (what `ss -K` does).
//!
//! Why: a client that `connect()`s a UDP socket to a service address is
//! translated once, at connect time, to one backend; when that backend goes
//! away the client keeps sending into the void. Destroying the socket makes
//! the owner's next receive fail with `ECONNABORTED` and unconnects it (so
//! its next `send` fails with `EDESTADDRREQ`): it reconnects and is balanced
//! afresh.
//!
//! Protocol: a `SOCK_DIAG_BY_FAMILY` dump lists the namespace's connected UDP
//! sockets; each one whose peer is a target is destroyed with a
//! `SOCK_DESTROY` request that replays the id the dump returned (ports,
//! addresses, interface and cookie, so a socket reusing the same ports
//! meanwhile is not hit). The kernel needs `CONFIG_INET_DIAG_DESTROY` and
//! the caller `CAP_NET_ADMIN` over the namespace.
//!
//! Hand-rolled on `libc`: the requests are two fixed-size structs, smaller
//! than a dependency. The pure halves (encoding a request, parsing a reply
//! buffer) are separate functions so they are tested without a kernel.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`: dump (or get) sockets.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY` from `linux/sock_diag.h`: abort one socket.
const SOCK_DESTROY: u16 = 21;
/// `TCP_ESTABLISHED`: the state a `connect()`ed UDP socket reports.
const TCP_ESTABLISHED: u8 = 1;
/// Every state bit: the destroy lookup is by id, states must not filter it.
const ALL_STATES: u32 = u32::MAX;
/// `IPPROTO_UDP` as the one-byte field of the request.
const PROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

// The netlink header constants are `c_int` in libc but `u16` on the wire.
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const DUMP_FLAGS: u16 = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
const ACK_FLAGS: u16 = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;

/// Netlink messages start on 4-byte boundaries (`NLMSG_ALIGNTO`).
const NLMSG_ALIGNTO: usize = 4;
const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();

/// A reply that takes longer than this means something is wrong; failing
/// beats hanging a caller that is reacting to a backend going away.
const RECV_TIMEOUT_SECS: libc::time_t = 2;
/// The kernel caps one dump datagram at 32 KiB (`netlink_recvmsg`); twice
/// that leaves room, and `MSG_TRUNC` still catches a bigger one.
const RECV_BUF_LEN: usize = 64 * 1024;

const _: () = assert!(NLMSG_HDRLEN == 16);
const _: () = assert!(size_of::<libc::nlmsgerr>() == 20);

/// Errors of sock_diag.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// A syscall failed (socket, send, recv, setns, thread spawn); `what`
    /// says which step, since a bare errno does not.
    #[error("sock_diag: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request (e.g. `EPERM` without `CAP_NET_ADMIN`,
    /// `EOPNOTSUPP` without `CONFIG_INET_DIAG_DESTROY`).
    #[error("sock_diag: {what}: the kernel answered {}", io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32, what: &'static str },
    /// A reply shorter than its headers say: a kernel/ABI mismatch, never
    /// something to guess around.
    #[error("sock_diag: truncated reply: {0}")]
    Truncated(&'static str),
    /// The worker thread of [`destroy_udp_connected_to_in`] panicked.
    #[error("sock_diag: the network namespace worker thread panicked")]
    ThreadPanicked,
}

impl SocketsError {
    /// The last OS error, tagged with the step that failed.
    fn last_os(what: &'static str) -> Self {
        Self::Io {
            what,
            source: io::Error::last_os_error(),
        }
    }
}

/// `struct inet_diag_sockid`. Ports and addresses are kept as the bytes the
/// kernel sends (network order), so nothing is swapped by accident; the
/// interface and cookie are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InetDiagSockId {
    /// `__be16 idiag_sport`.
    sport: [u8; 2],
    /// `__be16 idiag_dport`.
    dport: [u8; 2],
    /// `__be32 idiag_src[4]`: IPv4 in the first 4 bytes, IPv6 in all 16.
    src: [u8; 16],
    /// `__be32 idiag_dst[4]`.
    dst: [u8; 16],
    /// `__u32 idiag_if`: the bound device, part of the destroy lookup.
    interface: u32,
    /// `__u32 idiag_cookie[2]`: the socket's cookie, low word first.
    cookie: [u32; 2],
}

const _: () = assert!(size_of::<InetDiagSockId>() == InetDiagSockId::LEN);

impl InetDiagSockId {
    const LEN: usize = 48;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sport);
        out.extend_from_slice(&self.dport);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.interface.to_ne_bytes());
        out.extend_from_slice(&self.cookie[0].to_ne_bytes());
        out.extend_from_slice(&self.cookie[1].to_ne_bytes());
    }

    /// `b` must hold at least [`Self::LEN`] bytes.
    fn decode(b: &[u8]) -> Self {
        Self {
            sport: array(b, 0),
            dport: array(b, 2),
            src: array(b, 4),
            dst: array(b, 20),
            interface: u32_at(b, 36),
            cookie: [u32_at(b, 40), u32_at(b, 44)],
        }
    }

    /// The socket cookie as one number (what `bpf_get_socket_cookie` gives).
    fn cookie(&self) -> u64 {
        u64::from(self.cookie[0]) | (u64::from(self.cookie[1]) << 32)
    }
}

/// `struct inet_diag_req_v2`: the payload of both the dump and the destroy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    /// `idiag_ext`: no extra attributes wanted.
    ext: u8,
    pad: u8,
    /// Bit `1 << state` selects sockets in that state.
    states: u32,
    id: InetDiagSockId,
}

const _: () = assert!(size_of::<InetDiagReqV2>() == InetDiagReqV2::LEN);

impl InetDiagReqV2 {
    const LEN: usize = 8 + InetDiagSockId::LEN;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.protocol, self.ext, self.pad]);
        out.extend_from_slice(&self.states.to_ne_bytes());
        self.id.encode(out);
    }
}

/// `struct inet_diag_msg`: one socket of a dump (attributes may follow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const _: () = assert!(size_of::<InetDiagMsg>() == InetDiagMsg::LEN);

impl InetDiagMsg {
    const LEN: usize = 4 + InetDiagSockId::LEN + 5 * 4;

    fn decode(b: &[u8]) -> Result<Self, SocketsError> {
        if b.len() < Self::LEN {
            return Err(SocketsError::Truncated("inet_diag_msg"));
        }
        let tail = 4 + InetDiagSockId::LEN;
        Ok(Self {
            family: b[0],
            state: b[1],
            timer: b[2],
            retrans: b[3],
            id: InetDiagSockId::decode(&b[4..]),
            expires: u32_at(b, tail),
            rqueue: u32_at(b, tail + 4),
            wqueue: u32_at(b, tail + 8),
            uid: u32_at(b, tail + 12),
            inode: u32_at(b, tail + 16),
        })
    }
}

/// `N` bytes of `b` from `at`; callers check the length first.
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(array(b, at))
}

fn nlmsg_align(len: usize) -> usize {
    len.next_multiple_of(NLMSG_ALIGNTO)
}

/// One netlink message holding an `inet_diag_req_v2`. The header fields are
/// host order; `pid` 0 addresses the kernel.
fn encode_request(ty: u16, flags: u16, seq: u32, req: &InetDiagReqV2) -> Vec<u8> {
    let len = NLMSG_HDRLEN + InetDiagReqV2::LEN;
    let mut out = Vec::with_capacity(len);
    // Both parts are multiples of 4, so no padding is needed.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    req.encode(&mut out);
    out
}

/// What one message of a reply says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// One socket of a dump.
    Socket(InetDiagMsg),
    /// `NLMSG_DONE` without an error: the dump is complete.
    Done,
    /// `NLMSG_ERROR` with error 0: the request succeeded.
    Ack,
    /// `NLMSG_ERROR` (or `NLMSG_DONE`) carrying this positive errno.
    Failed(i32),
    /// Anything else (`NLMSG_NOOP`, ...): skipped.
    Other,
}

/// Splits one received datagram into `(seq, reply)` pairs.
fn parse_reply(buf: &[u8]) -> Result<Vec<(u32, Reply)>, SocketsError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(SocketsError::Truncated("netlink header"));
        }
        let len = usize::try_from(u32_at(rest, 0)).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(SocketsError::Truncated(
                "netlink message shorter than its length",
            ));
        }
        let ty = u16::from_ne_bytes(array(rest, 4));
        let seq = u32_at(rest, 8);
        out.push((seq, reply_of(ty, &rest[NLMSG_HDRLEN..len])?));
        // The last message of a datagram may omit its padding.
        rest = &rest[nlmsg_align(len).min(rest.len())..];
    }
    Ok(out)
}

fn reply_of(ty: u16, payload: &[u8]) -> Result<Reply, SocketsError> {
    match ty {
        SOCK_DIAG_BY_FAMILY => InetDiagMsg::decode(payload).map(Reply::Socket),
        NLMSG_ERROR => match status(payload, "nlmsgerr")? {
            0 => Ok(Reply::Ack),
            errno => Ok(Reply::Failed(errno)),
        },
        // A dump that failed half-way says so in DONE's payload; an empty
        // payload is a plain end.
        NLMSG_DONE if payload.is_empty() => Ok(Reply::Done),
        NLMSG_DONE => match status(payload, "NLMSG_DONE")? {
            0 => Ok(Reply::Done),
            errno => Ok(Reply::Failed(errno)),
        },
        _ => Ok(Reply::Other),
    }
}

/// The leading `int` of an error or done payload (`-errno` or 0), as a
/// positive errno.
fn status(payload: &[u8], what: &'static str) -> Result<i32, SocketsError> {
    if payload.len() < 4 {
        return Err(SocketsError::Truncated(what));
    }
    let code = i32::from_ne_bytes(array(payload, 0));
    Ok(i32::try_from(code.unsigned_abs()).unwrap_or(i32::MAX))
}

/// A UDP socket found by [`connected_udp_sockets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocketId {
    /// Its local address (0.0.0.0 for a dual-stack socket bound to `::`).
    pub local: SocketAddrV4,
    /// The address it is `connect()`ed to.
    pub peer: SocketAddrV4,
    /// The socket cookie, as `bpf_get_socket_cookie` reports it.
    pub cookie: u64,
    /// The socket's inode, to find its owner in `/proc/<pid>/fd`.
    pub inode: u32,
    /// What the dump returned, replayed verbatim to destroy it.
    family: u8,
    raw: InetDiagSockId,
}

/// The IPv4 view of one dumped socket: IPv4 sockets as they are, IPv6
/// sockets when they are connected to an IPv4-mapped address (dual-stack
/// sockets, e.g. Java's, talking to an IPv4 service). `None` otherwise.
fn udp_socket_id(msg: &InetDiagMsg) -> Option<UdpSocketId> {
    let (local, peer) = match i32::from(msg.family) {
        libc::AF_INET => (
            Ipv4Addr::from(array::<4>(&msg.id.src, 0)),
            Ipv4Addr::from(array::<4>(&msg.id.dst, 0)),
        ),
        libc::AF_INET6 => (
            Ipv6Addr::from(msg.id.src)
                .to_ipv4_mapped()
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ipv6Addr::from(msg.id.dst).to_ipv4_mapped()?,
        ),
        _ => return None,
    };
    Some(UdpSocketId {
        local: SocketAddrV4::new(local, u16::from_be_bytes(msg.id.sport)),
        peer: SocketAddrV4::new(peer, u16::from_be_bytes(msg.id.dport)),
        cookie: msg.id.cookie(),
        inode: msg.inode,
        family: msg.family,
        raw: msg.id,
    })
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    fn open() -> Result<Self, SocketsError> {
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(SocketsError::last_os("opening a NETLINK_SOCK_DIAG socket"));
        }
        // SAFETY: `raw` is a descriptor we just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_recv_timeout(fd.as_raw_fd())?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// Sends one request and returns its sequence number, to tell its
    /// replies from any stray ones.
    fn send(&mut self, ty: u16, flags: u16, req: &InetDiagReqV2) -> Result<u32, SocketsError> {
        self.seq = self.seq.wrapping_add(1);
        let msg = encode_request(ty, flags, self.seq, req);
        // SAFETY: `msg` is a live buffer of `msg.len()` bytes for the call;
        // an unconnected netlink socket sends to the kernel (port 0).
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(SocketsError::last_os("sending the request"));
        }
        if usize::try_from(sent).ok() != Some(msg.len()) {
            return Err(SocketsError::Io {
                what: "sending the request",
                source: io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            });
        }
        Ok(self.seq)
    }

    /// Receives one datagram and parses it.
    fn recv(&mut self) -> Result<Vec<(u32, Reply)>, SocketsError> {
        loop {
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
            // MSG_TRUNC makes the kernel report the full datagram length, so
            // a datagram too big for the buffer is detected, not cut silently.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // EAGAIN here is the receive timeout.
                return Err(SocketsError::Io {
                    what: "receiving the reply",
                    source: err,
                });
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > self.buf.len() {
                return Err(SocketsError::Truncated(
                    "datagram larger than the receive buffer",
                ));
            }
            return parse_reply(&self.buf[..n]);
        }
    }

    /// The connected UDP sockets of one address family.
    fn dump(&mut self, family: u8) -> Result<Vec<InetDiagMsg>, SocketsError> {
        let req = InetDiagReqV2 {
            family,
            protocol: PROTO_UDP,
            ext: 0,
            pad: 0,
            // Only connected sockets have a peer; the kernel skips the rest
            // (every unconnected listener) for us.
            states: 1 << TCP_ESTABLISHED,
            id: InetDiagSockId::default(),
        };
        let seq = self.send(SOCK_DIAG_BY_FAMILY, DUMP_FLAGS, &req)?;
        let mut out = Vec::new();
        // A dump spans datagrams; it ends with NLMSG_DONE (or an error).
        loop {
            for (s, reply) in self.recv()? {
                if s != seq {
                    continue;
                }
                match reply {
                    Reply::Socket(msg) => out.push(msg),
                    Reply::Done | Reply::Ack => return Ok(out),
                    Reply::Failed(errno) => {
                        return Err(SocketsError::Kernel {
                            errno,
                            what: "dumping UDP sockets",
                        });
                    }
                    Reply::Other => {}
                }
            }
        }
    }

    /// Destroys one socket; `false` when it is already gone (`ENOENT`: it
    /// was closed, or its cookie no longer matches, since the dump).
    fn destroy(&mut self, socket: &UdpSocketId) -> Result<bool, SocketsError> {
        let req = InetDiagReqV2 {
            family: socket.family,
            protocol: PROTO_UDP,
            ext: 0,
            pad: 0,
            states: ALL_STATES,
            id: socket.raw,
        };
        let seq = self.send(SOCK_DESTROY, ACK_FLAGS, &req)?;
        loop {
            for (s, reply) in self.recv()? {
                if s != seq {
                    continue;
                }
                match reply {
                    Reply::Ack => return Ok(true),
                    Reply::Failed(libc::ENOENT) => return Ok(false),
                    Reply::Failed(errno) => {
                        return Err(SocketsError::Kernel {
                            errno,
                            what: "destroying a UDP socket",
                        });
                    }
                    Reply::Socket(_) | Reply::Done | Reply::Other => {}
                }
            }
        }
    }

    /// Every connected UDP socket (IPv4, and IPv6 with a mapped peer)
    /// whose peer is one of `targets`.
    fn find(&mut self, targets: &[SocketAddrV4]) -> Result<Vec<UdpSocketId>, SocketsError> {
        let mut out = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            let family = u8::try_from(family).unwrap_or(u8::MAX);
            out.extend(
                self.dump(family)?
                    .iter()
                    .filter_map(udp_socket_id)
                    .filter(|s| targets.contains(&s.peer)),
            );
        }
        Ok(out)
    }
}

/// A receive timeout, so a reply that never comes fails instead of hanging.
fn set_recv_timeout(fd: RawFd) -> Result<(), SocketsError> {
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a live timeval and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            socklen_of::<libc::timeval>(),
        )
    };
    if rc != 0 {
        return Err(SocketsError::last_os("setting SO_RCVTIMEO"));
    }
    Ok(())
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// UDP sockets of the calling thread's network namespace whose peer
/// (connect()ed destination) is one of `targets`.
///
/// Includes IPv6 (dual-stack) sockets connected to the IPv4-mapped form of
/// a target: they reach the same backend and are stuck the same way.
pub fn connected_udp_sockets(targets: &[SocketAddrV4]) -> Result<Vec<UdpSocketId>, SocketsError> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    DiagSocket::open()?.find(targets)
}

/// Destroys (as `ss -K` does) every UDP socket of the calling thread's
/// network namespace connected to one of `targets`: the owner's next
/// send/recv fails (recv with ECONNABORTED; send with EDESTADDRREQ, since
/// the kernel also unconnects the socket), so it reconnects and is
/// balanced afresh. Returns how many were destroyed.
///
/// A socket closed between the dump and its destroy is not counted and is
/// not an error. Needs `CAP_NET_ADMIN` over the namespace.
pub fn destroy_udp_connected_to(targets: &[SocketAddrV4]) -> Result<usize, SocketsError> {
    destroy_udp_matching(targets, None)
}

/// [`destroy_udp_connected_to`], limited to the sockets whose cookie is in
/// `cookies` when given: the ones socket load balancing connected there,
/// not a process that dialled the address itself.
pub fn destroy_udp_matching(
    targets: &[SocketAddrV4],
    cookies: Option<&std::collections::BTreeSet<u64>>,
) -> Result<usize, SocketsError> {
    if targets.is_empty() || cookies.is_some_and(|c| c.is_empty()) {
        return Ok(0);
    }
    let mut nl = DiagSocket::open()?;
    let mut destroyed = 0;
    for socket in nl.find(targets)? {
        if cookies.is_some_and(|c| !c.contains(&socket.cookie)) {
            continue;
        }
        if nl.destroy(&socket)? {
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// The same in another network namespace (`netns` an open
/// /proc/<pid>/ns/net or /run/netns/<name> file): runs on a fresh thread
/// that joins it (setns(CLONE_NEWNET)), so the caller's thread stays where
/// it is.
///
/// The thread ends when done, so the namespace it joined dies with it.
pub fn destroy_udp_connected_to_in(
    netns: &File,
    targets: &[SocketAddrV4],
) -> Result<usize, SocketsError> {
    destroy_udp_matching_in(netns, targets, None)
}

/// [`destroy_udp_matching`] in another network namespace, as
/// [`destroy_udp_connected_to_in`].
pub fn destroy_udp_matching_in(
    netns: &File,
    targets: &[SocketAddrV4],
    cookies: Option<&std::collections::BTreeSet<u64>>,
) -> Result<usize, SocketsError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sluice-sockdiag".into())
            .spawn_scoped(scope, || {
                join_netns(netns)?;
                destroy_udp_matching(targets, cookies)
            })
            .map_err(|source| SocketsError::Io {
                what: "spawning the network namespace thread",
                source,
            })?
            .join()
            .map_err(|_| SocketsError::ThreadPanicked)?
    })
}

/// Moves the calling thread (only) into the network namespace `netns`.
fn join_netns(netns: &File) -> Result<(), SocketsError> {
    // SAFETY: setns(2) takes no pointers; `netns` stays open for the call.
    // CLONE_NEWNET makes the kernel reject a file that is not a network
    // namespace instead of joining some other kind.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(SocketsError::last_os("joining the network namespace"));
    }
    Ok(())
}

/// The network namespace cookie of the calling thread's namespace
/// (getsockopt SO_NETNS_COOKIE, optname 71, on a throwaway UDP socket):
/// what bpf_get_netns_cookie returns for sockets of this namespace.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just created and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie = 0u64;
    let mut len = socklen_of::<u64>();
    // SAFETY: `cookie` and `len` are live for the call and `len` is the
    // size of `cookie`; the kernel writes at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dumped AF_INET socket `local` -> `peer`, as the kernel encodes it.
    fn diag_msg(local: SocketAddrV4, peer: SocketAddrV4, cookie: u64, inode: u32) -> InetDiagMsg {
        let mut src = [0; 16];
        src[..4].copy_from_slice(&local.ip().octets());
        let mut dst = [0; 16];
        dst[..4].copy_from_slice(&peer.ip().octets());
        InetDiagMsg {
            family: u8::try_from(libc::AF_INET).unwrap(),
            state: TCP_ESTABLISHED,
            timer: 0,
            retrans: 0,
            id: InetDiagSockId {
                sport: local.port().to_be_bytes(),
                dport: peer.port().to_be_bytes(),
                src,
                dst,
                interface: 3,
                cookie: [cookie as u32, (cookie >> 32) as u32],
            },
            expires: 0,
            rqueue: 0,
            wqueue: 0,
            uid: 1000,
            inode,
        }
    }

    /// A netlink message around `payload`, padded to 4 bytes.
    fn nl_msg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = u32::try_from(NLMSG_HDRLEN + payload.len()).unwrap();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(nlmsg_align(out.len()), 0);
        out
    }

    /// `inet_diag_msg` bytes in kernel layout, plus one attribute (an
    /// 8-byte `INET_DIAG_*` TLV) to show trailing attributes are skipped.
    fn diag_payload(m: &InetDiagMsg) -> Vec<u8> {
        let mut out = vec![m.family, m.state, m.timer, m.retrans];
        m.id.encode(&mut out);
        for v in [m.expires, m.rqueue, m.wqueue, m.uid, m.inode] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(out.len(), InetDiagMsg::LEN);
        out.extend_from_slice(&8u16.to_ne_bytes());
        out.extend_from_slice(&5u16.to_ne_bytes());
        out.extend_from_slice(&7u32.to_ne_bytes());
        out
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn request_layout() {
        let mut id = InetDiagSockId {
            sport: 5353u16.to_be_bytes(),
            dport: 53u16.to_be_bytes(),
            interface: 7,
            cookie: [0x1122_3344, 0x5566_7788],
            ..InetDiagSockId::default()
        };
        id.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        id.dst[..4].copy_from_slice(&[10, 96, 0, 10]);
        let req = InetDiagReqV2 {
            family: 2,
            protocol: PROTO_UDP,
            ext: 0,
            pad: 0,
            states: ALL_STATES,
            id,
        };
        let b = encode_request(SOCK_DESTROY, ACK_FLAGS, 9, &req);
        assert_eq!(b.len(), 72);
        // nlmsghdr, host order.
        assert_eq!(u32_at(&b, 0), 72);
        assert_eq!(u16::from_ne_bytes(array(&b, 4)), 21);
        assert_eq!(u16::from_ne_bytes(array(&b, 6)), 1 | 4);
        assert_eq!(u32_at(&b, 8), 9);
        assert_eq!(u32_at(&b, 12), 0);
        // inet_diag_req_v2.
        assert_eq!(&b[16..20], &[2, 17, 0, 0]);
        assert_eq!(u32_at(&b, 20), u32::MAX);
        // inet_diag_sockid: ports and addresses network order.
        assert_eq!(&b[24..26], &[0x14, 0xe9]);
        assert_eq!(&b[26..28], &[0, 53]);
        assert_eq!(&b[28..32], &[10, 0, 0, 1]);
        assert_eq!(&b[32..44], &[0; 12]);
        assert_eq!(&b[44..48], &[10, 96, 0, 10]);
        assert_eq!(u32_at(&b, 60), 7);
        assert_eq!(u32_at(&b, 64), 0x1122_3344);
        assert_eq!(u32_at(&b, 68), 0x5566_7788);
        assert_eq!(InetDiagSockId::decode(&b[24..]), id);
        assert_eq!(id.cookie(), 0x5566_7788_1122_3344);
    }

    #[test]
    fn parses_a_dump_of_two_sockets_and_done() {
        let a = diag_msg(addr("10.0.0.5:40000"), addr("10.96.0.10:53"), 1, 100);
        let b = diag_msg(addr("10.0.0.5:40001"), addr("10.96.0.11:53"), 1 << 40, 101);
        let mut buf = nl_msg(SOCK_DIAG_BY_FAMILY, 4, &diag_payload(&a));
        buf.extend(nl_msg(SOCK_DIAG_BY_FAMILY, 4, &diag_payload(&b)));
        buf.extend(nl_msg(NLMSG_DONE, 4, &0i32.to_ne_bytes()));
        assert_eq!(
            parse_reply(&buf).unwrap(),
            vec![
                (4, Reply::Socket(a)),
                (4, Reply::Socket(b)),
                (4, Reply::Done)
            ]
        );

        let found = udp_socket_id(&b).unwrap();
        assert_eq!(found.local, addr("10.0.0.5:40001"));
        assert_eq!(found.peer, addr("10.96.0.11:53"));
        assert_eq!(found.cookie, 1 << 40);
        assert_eq!(found.inode, 101);
        assert_eq!(found.raw, b.id, "the destroy must replay the dumped id");
    }

    #[test]
    fn parses_errors_acks_and_failed_dumps() {
        // nlmsgerr: -errno, then the offending request's header.
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let mut buf = nl_msg(NLMSG_ERROR, 1, &err);
        buf.extend(nl_msg(NLMSG_ERROR, 2, &ack));
        buf.extend(nl_msg(NLMSG_DONE, 3, &(-libc::EINTR).to_ne_bytes()));
        buf.extend(nl_msg(NLMSG_DONE, 4, &[]));
        buf.extend(nl_msg(1, 5, &[])); // NLMSG_NOOP
        assert_eq!(
            parse_reply(&buf).unwrap(),
            vec![
                (1, Reply::Failed(libc::EPERM)),
                (2, Reply::Ack),
                (3, Reply::Failed(libc::EINTR)),
                (4, Reply::Done),
                (5, Reply::Other),
            ]
        );
    }

    #[test]
    fn rejects_truncated_replies() {
        let m = diag_msg(addr("10.0.0.5:1"), addr("10.96.0.10:53"), 1, 1);
        let whole = nl_msg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&m));
        let truncated = |r: Result<_, SocketsError>| matches!(r, Err(SocketsError::Truncated(_)));
        // Cut inside the payload: the header claims more than is there.
        assert!(truncated(parse_reply(&whole[..40])));
        // Cut inside the header.
        assert!(truncated(parse_reply(&whole[..10])));
        // A header whose length is too small for an inet_diag_msg.
        let short = nl_msg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&m)[..20]);
        assert!(truncated(parse_reply(&short)));
        // A length smaller than the header itself.
        let mut bogus = whole.clone();
        bogus[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(truncated(parse_reply(&bogus)));
        // An error message without its errno.
        assert!(truncated(parse_reply(&nl_msg(NLMSG_ERROR, 1, &[0, 0]))));
        // The whole message parses; an empty datagram is no messages.
        assert_eq!(parse_reply(&whole).unwrap().len(), 1);
        assert!(parse_reply(&[]).unwrap().is_empty());
    }

    #[test]
    fn maps_dual_stack_sockets_and_ignores_native_ipv6() {
        let mut m = diag_msg(addr("0.0.0.0:1"), addr("0.0.0.0:53"), 1, 1);
        m.family = u8::try_from(libc::AF_INET6).unwrap();
        m.id.src = "::ffff:10.0.0.5".parse::<Ipv6Addr>().unwrap().octets();
        m.id.dst = "::ffff:10.96.0.10".parse::<Ipv6Addr>().unwrap().octets();
        let found = udp_socket_id(&m).unwrap();
        assert_eq!(found.local, addr("10.0.0.5:1"));
        assert_eq!(found.peer, addr("10.96.0.10:53"));

        m.id.dst = "fd00::10".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(udp_socket_id(&m), None);
        m.family = 1; // AF_UNIX: never ours.
        assert_eq!(udp_socket_id(&m), None);
    }

    /// Brings `lo` up in the calling thread's (fresh) namespace: without it
    /// 127.0.0.1 has no local route, so bind and connect to it fail.
    fn bring_lo_up() {
        // SAFETY: socket(2) takes no pointers; checked below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: a descriptor we just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data for which all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `ifr` is a live ifreq naming an interface, as SIOCGIFFLAGS
        // expects; the kernel fills its flags.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr) };
        assert_eq!(rc, 0, "SIOCGIFFLAGS lo: {}", io::Error::last_os_error());
        // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above, with the flags to set.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut ifr) };
        assert_eq!(rc, 0, "SIOCSIFFLAGS lo: {}", io::Error::last_os_error());
    }

    /// Moves the calling thread into a new, empty network namespace. Panics
    /// (so nothing after it runs in the root namespace) if that fails.
    fn enter_fresh_netns() {
        // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET affects only the
        // calling thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        bring_lo_up();
    }

    fn so_error(s: &std::net::UdpSocket) -> Option<i32> {
        s.take_error().unwrap().and_then(|e| e.raw_os_error())
    }

    /// Needs root and a kernel with CONFIG_INET_DIAG_DESTROY. Runs only in
    /// throwaway network namespaces (unshared on fresh threads); nothing
    /// touches the root namespace.
    #[test]
    fn destroys_only_sockets_connected_to_the_targets() {
        sluice_testkit::privileges::require_root();
        std::thread::spawn(|| {
            enter_fresh_netns();
            let target = addr("127.0.0.1:9");
            let hit = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            hit.connect(target).unwrap();
            let spared = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            spared.connect("127.0.0.1:10").unwrap();
            let unconnected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // A dual-stack socket reaching the target through its mapped form.
            let dual = std::net::UdpSocket::bind("[::]:0").ok();
            if let Some(dual) = &dual {
                dual.connect("[::ffff:127.0.0.1]:9").unwrap();
            } else {
                eprintln!("no IPv6 here: skipping the dual-stack part");
            }
            let want = 1 + usize::from(dual.is_some());

            let found = connected_udp_sockets(&[target]).unwrap();
            assert_eq!(found.len(), want, "{found:?}");
            let std::net::SocketAddr::V4(hit_local) = hit.local_addr().unwrap() else {
                panic!("bound to an IPv4 address");
            };
            assert!(found.iter().any(|s| s.local == hit_local), "{found:?}");
            assert!(
                found
                    .iter()
                    .all(|s| s.peer == target && s.cookie != 0 && s.inode != 0)
            );

            assert_eq!(destroy_udp_connected_to(&[target]).unwrap(), want);
            // The kernel unconnects the socket, so a send has no
            // destination (and leaves the pending error alone)...
            let err = hit.send(b"x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EDESTADDRREQ), "{err}");
            // ...and the next receive reports the abort.
            hit.set_nonblocking(true).unwrap();
            let err = hit.recv(&mut [0; 8]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
            assert!(
                hit.peer_addr().is_err(),
                "a destroyed socket is unconnected"
            );
            if let Some(dual) = &dual {
                assert_eq!(so_error(dual), Some(libc::ECONNABORTED));
            }

            // The others are untouched.
            assert_eq!(spared.peer_addr().unwrap().to_string(), "127.0.0.1:10");
            assert_eq!(so_error(&spared), None);
            spared.send(b"still connected").unwrap();
            assert_eq!(so_error(&unconnected), None);
            // Nothing left to destroy; no targets, nothing to do.
            assert_eq!(destroy_udp_connected_to(&[target]).unwrap(), 0);
            assert_eq!(destroy_udp_connected_to(&[]).unwrap(), 0);
        })
        .join()
        .unwrap();
    }

    /// As above, through another namespace's file, from a thread that must
    /// stay in its own (also throwaway) namespace.
    #[test]
    fn destroys_in_another_namespace() {
        sluice_testkit::privileges::require_root();
        std::thread::spawn(|| {
            enter_fresh_netns();
            let target = addr("127.0.0.1:9");
            let hit = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            hit.connect(target).unwrap();
            let ns = File::open("/proc/thread-self/ns/net").unwrap();
            let cookie = netns_cookie().unwrap();

            // A thread of this namespace moves to a second fresh one and
            // reaches back into the first through its file.
            std::thread::scope(|s| {
                s.spawn(|| {
                    enter_fresh_netns();
                    let own = netns_cookie().unwrap();
                    assert_ne!(own, cookie, "namespaces have distinct cookies");
                    assert_eq!(destroy_udp_connected_to_in(&ns, &[target]).unwrap(), 1);
                    assert_eq!(netns_cookie().unwrap(), own, "the caller did not move");
                });
            });
            assert_eq!(so_error(&hit), Some(libc::ECONNABORTED));
            assert_eq!(netns_cookie().unwrap(), cookie);

            // A file that is not a network namespace is refused.
            let not_ns = File::open("/proc/thread-self/ns/uts").unwrap();
            let err = destroy_udp_connected_to_in(&not_ns, &[target]).unwrap_err();
            assert!(matches!(err, SocketsError::Io { .. }), "{err}");
        })
        .join()
        .unwrap();
    }
}
