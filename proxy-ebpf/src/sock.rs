//! Socket-level load balancing (cgroup socket programs).
//!
//! A socket that connects or sends to a Service address is given a backend
//! there and then: the kernel routes its packets to the backend from the
//! first one, and no packet of it needs translating (the TC programs see
//! a pod address and leave it alone, so nothing is translated twice). The
//! frontend it asked for is remembered per socket, so getpeername() and
//! recvmsg() give the Service address back.
//!
//! Which sockets: those of the daemon's network namespace (`host`), or
//! every socket of the attached cgroup (`all`); see `SockConfig`.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    ServiceKey, ServiceValue, SockRevKey, SockRevValue, reason,
    service::{KIND_NODE_PORT, SVC_F_DROP_EMPTY},
    socket::{SOCK_CONFIG_VERSION, SOCK_LB_ALL, SOCK_LB_HOST},
    stats::write_error,
};

use crate::{
    conntrack, lb,
    maps::{
        CONFIG, NODE_ADDRS, SOCK_CONFIG, SOCK_REV, SvcDelta, count_reason, count_service,
        count_write_error,
    },
};

/// What a cgroup socket program returns to let the call go on.
pub const ALLOW: i32 = 1;
/// ... and to fail it (with the errno set by `bpf_set_retval`).
const DENY: i32 = 0;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// Whether the socket is one socket load balancing serves.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = SOCK_CONFIG.get(0) else {
        return false;
    };
    if cfg.version != SOCK_CONFIG_VERSION {
        return false;
    }
    match cfg.mode {
        SOCK_LB_ALL => true,
        SOCK_LB_HOST => {
            // SAFETY: helper on the program's own context.
            let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
            netns == cfg.netns_cookie
        }
        _ => false,
    }
}

/// The frontend a socket's destination is, as a pod's packet to it would
/// find it; a NodePort on another node's address is this node's NodePort
/// (the same Service, the same endpoints).
#[inline(always)]
fn frontend(addr: u32, port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    if let Some(fe) = lb::frontend_internal_at(addr, port, proto) {
        return Some(fe);
    }
    NODE_ADDRS.get_ptr(addr)?;
    let own = CONFIG.get(0)?.node_addr;
    if own == addr {
        return None;
    }
    lb::frontend_internal_at(own, port, proto).filter(|(_, v)| v.kind == KIND_NODE_PORT)
}

/// connect() and sendmsg(): the destination, if it is a frontend, becomes
/// one of its backends.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel's context, valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (addr, port, proto) = (sa.user_ip4, sa.user_port as u16, sa.protocol as u8);
    let Some((fe_key, fe)) = frontend(addr, port, proto) else {
        return ALLOW;
    };
    if fe.count == 0 {
        count_service(
            fe.svc_id,
            SvcDelta {
                len: 0,
                new_conn: false,
                refused: true,
            },
        );
        // What the TC path does is a reject (ICMP port unreachable, which
        // a connecting socket reports as ECONNREFUSED) or, under a Local
        // policy without a local endpoint, a drop: a socket is told at once
        // that no route leads there instead of waiting for a timeout.
        let (errno, why) = if fe.flags & SVC_F_DROP_EMPTY != 0 {
            (EHOSTUNREACH, reason::SOCK_NO_LOCAL_BACKEND)
        } else {
            (ECONNREFUSED, reason::SOCK_REFUSED)
        };
        count_reason(why, 0);
        // SAFETY: plain helper call; connect4/sendmsg4 may set it.
        unsafe { bpf_set_retval(-errno) };
        return DENY;
    }
    // SAFETY: helpers on the program's own context.
    let (cookie, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    };
    let hash = lb::mix((cookie as u32) ^ ((cookie >> 32) as u32));
    let Some((_, be)) = lb::pick_backend_for_socket(netns, hash, &fe_key, &fe, conntrack::now())
    else {
        count_reason(reason::DROP_MAP_INCONSISTENT, 0);
        // SAFETY: as above.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    let rev_key = SockRevKey {
        cookie,
        addr: be.addr,
        port: be.port,
        _pad: 0,
    };
    let rev = SockRevValue {
        addr,
        port,
        _pad: 0,
        svc_id: fe.svc_id,
    };
    if SOCK_REV.insert(rev_key, rev, 0).is_err() {
        count_write_error(write_error::SOCK_REV);
    }
    sa.user_ip4 = be.addr;
    sa.user_port = u32::from(be.port);
    count_service(
        fe.svc_id,
        SvcDelta {
            len: 0,
            new_conn: true,
            refused: false,
        },
    );
    count_reason(reason::SOCK_TRANSLATED, 0);
    ALLOW
}

/// getpeername() and recvmsg(): a backend's address this socket was given
/// for a frontend becomes the frontend's again.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel's context, valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevKey {
        // SAFETY: helper on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out of the map at once.
    if let Some(v) = unsafe { SOCK_REV.get(key) }.copied() {
        sa.user_ip4 = v.addr;
        sa.user_port = u32::from(v.port);
        count_reason(reason::SOCK_REV_NAT, 0);
    }
    ALLOW
}
