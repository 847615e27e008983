//! BPF_PROG_TEST_RUN fixtures for connection tracking's edges: entries
//! stamped after the reader's clock, dead state meeting new connections
//! (port reuse), partners that vanished, the handshake, and full maps.
//! Each case seeds the CT maps as the situation would leave them, sends
//! frames through the programs, and checks verdicts, bytes and map state.

use std::net::Ipv4Addr;

use proxy_common::{
    CtEntry, CtKey,
    ct::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_ASSURED, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT,
        CT_F_REPLY_SEEN, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CT_STATS_ANY, CT_STATS_TCP,
    },
    names::{PROG_FROM_POD, PROG_TO_POD},
    proto, reason,
};
use sluice::{
    conntrack::monotonic_secs,
    datapath::Capacities,
    frame::{TCP_ACK, TCP_SYN, tcp, udp, verify_checksums},
};
use sluice_tests::fixture::{Datapath, TC_ACT_OK, TC_ACT_SHOT, nbo};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const BE1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const BE2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 21);
const BE3: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 22);

fn load(caps: Capacities) -> Datapath {
    let mut dp = Datapath::load("ct-fixtures", caps).unwrap();
    dp.seed_service(
        (VIP, 80),
        proto::TCP,
        1,
        &[(1, BE1, 8080), (2, BE2, 8080), (3, BE3, 8080)],
    )
    .unwrap();
    dp.seed_service((VIP_UDP, 53), proto::UDP, 2, &[(4, BE1, 5353)])
        .unwrap();
    dp
}

fn key(proto: u8, s: (Ipv4Addr, u16), d: (Ipv4Addr, u16), dir: u8) -> CtKey {
    CtKey {
        saddr: nbo(s.0),
        daddr: nbo(d.0),
        sport: s.1.to_be(),
        dport: d.1.to_be(),
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// Both entries of a flow `client -> VIP:vport` translated to `be`, as the
/// datapath creates them, with `flags` as state and `last_seen` as stamp.
fn seed_flow(
    dp: &mut Datapath,
    proto: u8,
    client: (Ipv4Addr, u16),
    frontend: (Ipv4Addr, u16),
    be: (Ipv4Addr, u16),
    flags: u16,
    last_seen: u32,
) -> (CtKey, CtKey) {
    let fwd_key = key(proto, client, frontend, CT_DIR_SERVICE);
    let rev_key = key(proto, be, client, CT_DIR_REPLY);
    let fwd = CtEntry {
        new_saddr: nbo(client.0),
        new_sport: client.1.to_be(),
        new_daddr: nbo(be.0),
        new_dport: be.1.to_be(),
        flags: CT_F_REWRITE_DST | flags,
        svc_id: 1,
        backend_id: 3,
        created: last_seen.wrapping_sub(5),
        last_seen,
        synced: last_seen,
        ..Default::default()
    };
    let rev = CtEntry {
        new_saddr: nbo(frontend.0),
        new_sport: frontend.1.to_be(),
        new_daddr: nbo(client.0),
        new_dport: client.1.to_be(),
        flags: CT_F_REWRITE_SRC | flags,
        ..fwd
    };
    dp.ct_insert(fwd_key, fwd).unwrap();
    dp.ct_insert(rev_key, rev).unwrap();
    (fwd_key, rev_key)
}

/// Runs a frame and checks the verdict and the reason it was counted under.
fn step(dp: &mut Datapath, prog: &'static str, input: &[u8], action: u32, why: u32) -> Vec<u8> {
    let before = dp.reason_count(why);
    let r = dp.run(prog, input).unwrap();
    assert_eq!(
        (r.action, dp.reason_count(why)),
        (action, before + 1),
        "{prog}: expected action {action} counted as {}",
        reason::name(why).unwrap_or("?")
    );
    r.output
}

fn dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

fn src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

fn ct_stats(dp: &Datapath, row: u32) -> proxy_common::CtStats {
    dp.maps.ct_stats_total(row).unwrap()
}

#[test]
fn an_entry_stamped_after_the_readers_second_still_carries_its_flow() {
    let mut dp = load(Capacities::default());
    // Another CPU already stamped the flow with the next second: this
    // program's clock has not ticked yet. Unsigned age arithmetic called
    // that entry 136 years old and re-balanced an established connection.
    let now = monotonic_secs();
    let c = (CLIENT, 41000);
    seed_flow(
        &mut dp,
        proto::TCP,
        c,
        (VIP, 80),
        (BE3, 8080),
        CT_F_REPLY_SEEN | CT_F_ASSURED,
        now + 1,
    );
    for _ in 0..20 {
        let out = step(
            &mut dp,
            PROG_FROM_POD,
            &tcp(c, (VIP, 80), TCP_ACK).bytes(),
            TC_ACT_OK,
            reason::FWD_ESTABLISHED,
        );
        assert_eq!(dst(&out), BE3);
    }
    // And the reply direction translates.
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &tcp((BE3, 8080), c, TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::REV_NAT,
    );
    assert_eq!(src(&out), VIP);
    verify_checksums(&out).unwrap();
}

#[test]
fn an_expired_reply_entry_translates_nothing_and_is_removed() {
    let mut dp = load(Capacities::default());
    let now = monotonic_secs();
    let c = (CLIENT, 42000);
    let (fwd, rev) = seed_flow(
        &mut dp,
        proto::UDP,
        c,
        (VIP_UDP, 53),
        (BE1, 5353),
        CT_F_REPLY_SEEN,
        now - 120,
    );
    // A datagram from the backend's port to the client's, long after the
    // flow died: it is not a reply of that flow, and refreshing the dead
    // entry by translating it would keep the entry alive forever.
    let input = udp((BE1, 5353), c, b"late").bytes();
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &input,
        TC_ACT_OK,
        reason::PASS_CT_STALE,
    );
    assert_eq!(out, input, "a stale entry rewrote the packet");
    assert!(dp.ct_get(&rev).is_none() && dp.ct_get(&fwd).is_none());
    assert_eq!(ct_stats(&dp, CT_STATS_ANY).removed, 2);
}

#[test]
fn a_syn_ack_of_a_new_connection_is_not_captured_by_an_answered_flow() {
    let now = monotonic_secs();
    for (what, state) in [
        (
            "closed",
            CT_F_REPLY_SEEN | CT_F_ASSURED | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND,
        ),
        ("established", CT_F_REPLY_SEEN | CT_F_ASSURED),
    ] {
        let mut dp = load(Capacities::default());
        let c = (CLIENT, 43000);
        let (fwd, rev) = seed_flow(&mut dp, proto::TCP, c, (VIP, 80), (BE2, 8080), state, now);
        // The pod reused its port for a connection to the backend itself;
        // the backend's SYN-ACK must reach it from the backend's address.
        let syn_ack = tcp((BE2, 8080), c, TCP_SYN | TCP_ACK).bytes();
        let out = step(
            &mut dp,
            PROG_TO_POD,
            &syn_ack,
            TC_ACT_OK,
            reason::PASS_CT_STALE,
        );
        assert_eq!(out, syn_ack, "{what}: the SYN-ACK was rewritten");
        assert!(
            dp.ct_get(&rev).is_none() && dp.ct_get(&fwd).is_none(),
            "{what}: dead state left"
        );
    }
}

#[test]
fn a_retransmitted_syn_ack_of_the_handshake_is_still_translated() {
    let mut dp = load(Capacities::default());
    let now = monotonic_secs();
    let c = (CLIENT, 43500);
    // Answered, not yet acknowledged by the client: the handshake's own
    // SYN-ACK may come again.
    seed_flow(
        &mut dp,
        proto::TCP,
        c,
        (VIP, 80),
        (BE2, 8080),
        CT_F_REPLY_SEEN,
        now,
    );
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &tcp((BE2, 8080), c, TCP_SYN | TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::REV_NAT,
    );
    assert_eq!(src(&out), VIP);
}

#[test]
fn a_direct_syn_clears_the_dead_state_its_replies_would_meet() {
    let mut dp = load(Capacities::default());
    let now = monotonic_secs();
    let c = (CLIENT, 44000);
    let closed = CT_F_REPLY_SEEN | CT_F_ASSURED | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND;
    let (fwd, rev) = seed_flow(&mut dp, proto::TCP, c, (VIP, 80), (BE1, 8080), closed, now);
    let syn = tcp(c, (BE1, 8080), TCP_SYN).bytes();
    let out = step(
        &mut dp,
        PROG_FROM_POD,
        &syn,
        TC_ACT_OK,
        reason::PASS_NOT_SERVICE,
    );
    assert_eq!(out, syn);
    assert!(dp.ct_get(&rev).is_none() && dp.ct_get(&fwd).is_none());
    // The SYN-ACK then meets no state at all.
    let syn_ack = tcp((BE1, 8080), c, TCP_SYN | TCP_ACK).bytes();
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &syn_ack,
        TC_ACT_OK,
        reason::PASS_NOT_SERVICE,
    );
    assert_eq!(out, syn_ack);
    // A live flow's state is left alone by a SYN elsewhere.
    let c2 = (CLIENT, 44001);
    let (_, live_rev) = seed_flow(
        &mut dp,
        proto::TCP,
        c2,
        (VIP, 80),
        (BE1, 8080),
        CT_F_REPLY_SEEN,
        now,
    );
    step(
        &mut dp,
        PROG_FROM_POD,
        &tcp(c2, (BE2, 8080), TCP_SYN).bytes(),
        TC_ACT_OK,
        reason::PASS_NOT_SERVICE,
    );
    assert!(dp.ct_get(&live_rev).is_some());
}

#[test]
fn a_vanished_reply_entry_is_recreated_by_the_flows_next_packet() {
    let mut dp = load(Capacities::default());
    let now = monotonic_secs();
    let c = (CLIENT, 45000);
    let (fwd, rev) = seed_flow(
        &mut dp,
        proto::TCP,
        c,
        (VIP, 80),
        (BE3, 8080),
        CT_F_REPLY_SEEN | CT_F_ASSURED,
        now - 2,
    );
    dp.ct_remove(&rev).unwrap();
    let out = step(
        &mut dp,
        PROG_FROM_POD,
        &tcp(c, (VIP, 80), TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::FWD_ESTABLISHED,
    );
    assert_eq!(dst(&out), BE3);
    let back = dp.ct_get(&rev).expect("reply entry recreated");
    assert_eq!(
        back.flags & (CT_F_REWRITE_SRC | CT_F_ASSURED),
        CT_F_REWRITE_SRC | CT_F_ASSURED
    );
    assert_eq!((back.new_saddr, back.new_sport), (nbo(VIP), 80u16.to_be()));
    assert_eq!(ct_stats(&dp, CT_STATS_TCP).recreated, 1);
    // Server-first traffic now finds it.
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &tcp((BE3, 8080), c, TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::REV_NAT,
    );
    assert_eq!(src(&out), VIP);
    verify_checksums(&out).unwrap();
    assert!(dp.ct_get(&fwd).is_some());
}

#[test]
fn the_handshake_is_assured_only_after_the_clients_ack() {
    let mut dp = load(Capacities::default());
    let c = (CLIENT, 46000);
    let out = step(
        &mut dp,
        PROG_FROM_POD,
        &tcp(c, (VIP, 80), TCP_SYN).bytes(),
        TC_ACT_OK,
        reason::FWD_NEW,
    );
    let be = dst(&out);
    let fwd = key(proto::TCP, c, (VIP, 80), CT_DIR_SERVICE);
    let rev = key(proto::TCP, (be, 8080), c, CT_DIR_REPLY);
    let flags = |dp: &Datapath| {
        (
            dp.ct_get(&fwd).unwrap().flags & (CT_F_REPLY_SEEN | CT_F_ASSURED),
            dp.ct_get(&rev).unwrap().flags & (CT_F_REPLY_SEEN | CT_F_ASSURED),
        )
    };
    assert_eq!(flags(&dp), (0, 0));
    step(
        &mut dp,
        PROG_TO_POD,
        &tcp((be, 8080), c, TCP_SYN | TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::REV_NAT,
    );
    // Half-open: a flood of these must not get the established lifetime.
    assert_eq!(flags(&dp), (CT_F_REPLY_SEEN, CT_F_REPLY_SEEN));
    step(
        &mut dp,
        PROG_FROM_POD,
        &tcp(c, (VIP, 80), TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::FWD_ESTABLISHED,
    );
    let both = CT_F_REPLY_SEEN | CT_F_ASSURED;
    assert_eq!(flags(&dp), (both, both));
}

#[test]
fn a_full_tcp_table_refuses_new_connections_and_keeps_established_ones() {
    let mut dp = load(Capacities {
        ct_tcp_entries: 8,
        ..Capacities::default()
    });
    // Four connections: eight entries, the table is full.
    let mut backends = Vec::new();
    for port in 47000..47004 {
        let out = step(
            &mut dp,
            PROG_FROM_POD,
            &tcp((CLIENT, port), (VIP, 80), TCP_SYN).bytes(),
            TC_ACT_OK,
            reason::FWD_NEW,
        );
        backends.push(dst(&out));
    }
    step(
        &mut dp,
        PROG_FROM_POD,
        &tcp((CLIENT, 47100), (VIP, 80), TCP_SYN).bytes(),
        TC_ACT_SHOT,
        reason::DROP_CT_FULL,
    );
    assert!(ct_stats(&dp, CT_STATS_TCP).full >= 1);
    assert_eq!(ct_stats(&dp, CT_STATS_TCP).created, 8);
    // Every tracked connection still works, both ways.
    for (i, port) in (47000..47004).enumerate() {
        let out = step(
            &mut dp,
            PROG_FROM_POD,
            &tcp((CLIENT, port), (VIP, 80), TCP_ACK).bytes(),
            TC_ACT_OK,
            reason::FWD_ESTABLISHED,
        );
        assert_eq!(dst(&out), backends[i]);
        let out = step(
            &mut dp,
            PROG_TO_POD,
            &tcp((backends[i], 8080), (CLIENT, port), TCP_ACK).bytes(),
            TC_ACT_OK,
            reason::REV_NAT,
        );
        assert_eq!(src(&out), VIP);
    }
    // UDP has a table of its own: unaffected.
    step(
        &mut dp,
        PROG_FROM_POD,
        &udp((CLIENT, 47200), (VIP_UDP, 53), b"q").bytes(),
        TC_ACT_OK,
        reason::FWD_NEW,
    );
}

#[test]
fn a_udp_flood_evicts_only_udp_flows() {
    let mut dp = load(Capacities {
        ct_any_entries: 64,
        ..Capacities::default()
    });
    let now = monotonic_secs();
    // A quiet established TCP connection; its server will speak first.
    let c = (CLIENT, 48000);
    let (fwd, rev) = seed_flow(
        &mut dp,
        proto::TCP,
        c,
        (VIP, 80),
        (BE2, 8080),
        CT_F_REPLY_SEEN | CT_F_ASSURED,
        now,
    );
    for port in 0..2000u16 {
        step(
            &mut dp,
            PROG_FROM_POD,
            &udp((CLIENT, 10_000 + port), (VIP_UDP, 53), b"q").bytes(),
            TC_ACT_OK,
            reason::FWD_NEW,
        );
    }
    assert!(dp.ct_get(&fwd).is_some() && dp.ct_get(&rev).is_some());
    let out = step(
        &mut dp,
        PROG_TO_POD,
        &tcp((BE2, 8080), c, TCP_ACK).bytes(),
        TC_ACT_OK,
        reason::REV_NAT,
    );
    assert_eq!(src(&out), VIP);
    // The flood did evict: its own kind.
    let created = ct_stats(&dp, CT_STATS_ANY).created;
    let live = dp.maps.ct_any.keys().filter(Result::is_ok).count() as u64;
    assert_eq!(created, 4000);
    assert!(live <= 64, "{live} entries in a 64-entry LRU");
}
