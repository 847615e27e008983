//! `sluicectl trace --via host`: a socket of this node connecting to the
//! destination. No TC hook sees such a packet leave, so only socket load
//! balancing (cgroup/connect4) can translate it, and the trace never says
//! it is translated unless that program is attached and would do it.

use std::path::Path;

use proxy_common::{
    ServiceKey, ServiceValue, SockAffinityKey,
    codec::{endpoint, nbo},
    names, reason,
    service::{KIND_NODE_PORT, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_ADDR_ONLY, SVC_F_DROP_EMPTY},
    socket::SOCK_CONFIG_VERSION,
};

use super::trace::{Entry, Outcome, Request, Selection, describe, packet, private_datapath};
use crate::{
    conntrack::monotonic_secs,
    datapath::{DatapathError, PinnedMaps, pin_dir, raw},
    socket_lb::Scope,
};

pub fn trace(bpffs: &Path, live: &PinnedMaps, req: &Request) -> Result<Outcome, DatapathError> {
    let input = packet(req, true);
    let mut out = Outcome {
        entry: Entry::Host,
        packet: describe(&input),
        established: false,
        selection: Selection::None,
        verdict: "pass",
        reason: "not-translated".into(),
        backend: None,
        backend_id: None,
        rewritten: describe(&input),
        loaded_tag: None,
        traced_tag: None,
        note: None,
    };
    let cfg = live
        .sock_config
        .get(&0, 0)
        .ok()
        .filter(|c| c.version == SOCK_CONFIG_VERSION);
    let scope = cfg
        .and_then(|c| Scope::from_mode(c.mode))
        .unwrap_or(Scope::Off);
    let (connect4, link, _) = names::SOCK_PROGRAMS[0];
    let attached = pin_dir(bpffs).join(link).exists();
    if scope == Scope::Off || !attached {
        out.note = Some(
            "no TC hook sees a packet of this node's own sockets leave, and socket load \
             balancing is off on this node: the connection goes to the destination as addressed"
                .into(),
        );
        return Ok(out);
    }
    let ran = run_connect4(bpffs, req, connect4);
    let Some((fe_key, fe)) = frontend(live, req) else {
        out.reason = "not-a-service".into();
        out.note = Some(format!("{ran}; no frontend at this address and port"));
        return Ok(out);
    };
    if fe.count == 0 {
        let drop = fe.flags & SVC_F_DROP_EMPTY != 0;
        out.verdict = "refuse";
        out.reason = reason::name(if drop {
            reason::SOCK_NO_LOCAL_BACKEND
        } else {
            reason::SOCK_REFUSED
        })
        .unwrap_or_default()
        .into();
        out.note = Some(format!(
            "{ran}; connect() and sendmsg() fail at once with {}",
            if drop { "EHOSTUNREACH" } else { "ECONNREFUSED" }
        ));
        return Ok(out);
    }
    out.verdict = "translate";
    out.reason = reason::name(reason::SOCK_TRANSLATED)
        .unwrap_or_default()
        .into();
    let affine = cfg.and_then(|c| {
        let key = SockAffinityKey {
            netns_cookie: c.netns_cookie,
            svc_id: fe.svc_id,
            _pad: 0,
        };
        live.sock_affinity
            .get(&key, 0)
            .ok()
            .filter(|a| monotonic_secs().saturating_sub(a.last_used) <= fe.affinity_timeout)
    });
    out.selection = super::trace::selection(Some((fe, affine.is_some())), false);
    let known = match (affine, fe.count) {
        (Some(a), _) => Some(a.backend_id),
        (None, 1) => live
            .services
            .get(&fe_key.with_slot(1), 0)
            .ok()
            .map(|s| s.backend_id),
        _ => None,
    };
    if let Some(id) = known
        && let Ok(b) = live.backends.get(&id, 0)
    {
        out.backend = Some(endpoint(b.addr, b.port));
        out.backend_id = Some(id);
        out.rewritten = format!(
            "connect() goes to {} (getpeername() shows {})",
            endpoint(b.addr, b.port),
            endpoint(nbo(req.to), req.dport.to_be())
        );
    } else {
        out.rewritten = format!("connect() goes to one of {} backends", fe.count);
    }
    out.note = Some(ran);
    Ok(out)
}

/// The frontend connect4 finds for the destination, read the way it reads
/// the maps (in-cluster scope first; a NodePort on another node's address
/// is this node's NodePort).
fn frontend(live: &PinnedMaps, req: &Request) -> Option<(ServiceKey, ServiceValue)> {
    let at = |addr: u32| {
        [SCOPE_INTERNAL, SCOPE_EXTERNAL]
            .into_iter()
            .find_map(|scope| {
                let key = ServiceKey::frontend(addr, req.dport.to_be(), req.proto, scope);
                let v = live.services.get(&key, 0).ok()?;
                (v.flags & SVC_F_ADDR_ONLY == 0).then_some((key, v))
            })
    };
    let to = nbo(req.to);
    if let Some(found) = at(to) {
        return Some(found);
    }
    live.node_addrs.get(&to, 0).ok()?;
    let own = live.config.get(&0, 0).ok()?.node_addr;
    (own != to)
        .then(|| at(own))
        .flatten()
        .filter(|(_, v)| v.kind == KIND_NODE_PORT)
}

/// Tries to run a private copy of connect4 with BPF_PROG_TEST_RUN, and
/// says what came of it: kernels up to at least 6.18 cannot run cgroup
/// sock_addr programs that way, and then the outcome is read from the maps.
fn run_connect4(bpffs: &Path, req: &Request, name: &'static str) -> String {
    let attempt = || -> Result<std::io::Result<(u32, u32)>, DatapathError> {
        let (_dir, mut progs) = private_datapath(bpffs)?;
        let prog = progs.socket_program(name)?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        let ctx = sock_addr_ctx(req);
        let mut ctx_out = ctx;
        use std::os::fd::AsFd;
        Ok(raw::test_run_ctx(fd.as_fd(), &ctx, &mut ctx_out, 1))
    };
    match attempt() {
        Ok(Ok((retval, _))) => format!(
            "cgroup/connect4 ran under BPF_PROG_TEST_RUN with private maps (returned {retval}); \
             the decision below is read from the live maps"
        ),
        Ok(Err(e)) => format!(
            "this kernel cannot run cgroup/connect4 under BPF_PROG_TEST_RUN ({e}): the program \
             did not run; what it would do is read from the maps it reads"
        ),
        Err(e) => format!(
            "cgroup/connect4 could not be loaded for a test run ({e}): the program did not run; \
             what it would do is read from the maps it reads"
        ),
    }
}

/// A `struct bpf_sock_addr` for a connect() of `req` (72 bytes).
fn sock_addr_ctx(req: &Request) -> [u8; 72] {
    let mut ctx = [0u8; 72];
    let put = |ctx: &mut [u8; 72], off: usize, v: u32| {
        ctx[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    };
    let (sock_type, af_inet) = if req.proto == proxy_common::proto::TCP {
        (1, 2)
    } else {
        (2, 2)
    };
    put(&mut ctx, 0, af_inet);
    put(&mut ctx, 4, nbo(req.to));
    put(&mut ctx, 24, u32::from(req.dport.to_be()));
    put(&mut ctx, 28, af_inet);
    put(&mut ctx, 32, sock_type);
    put(&mut ctx, 36, u32::from(req.proto));
    ctx
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_context_is_a_bpf_sock_addr_for_the_request() {
        let req = Request {
            from: Ipv4Addr::new(10, 77, 0, 10),
            sport: 40000,
            to: Ipv4Addr::new(10, 96, 0, 10),
            dport: 80,
            proto: proxy_common::proto::UDP,
            entry: Some(Entry::Host),
        };
        let ctx = sock_addr_ctx(&req);
        let word = |off: usize| u32::from_ne_bytes(ctx[off..off + 4].try_into().unwrap());
        assert_eq!(word(0), 2, "user_family AF_INET");
        assert_eq!(ctx[4..8], [10, 96, 0, 10], "user_ip4 in network order");
        assert_eq!(ctx[24..26], [0, 80], "user_port in network order");
        assert_eq!(word(32), 2, "SOCK_DGRAM");
        assert_eq!(word(36), 17, "IPPROTO_UDP");
    }
}
