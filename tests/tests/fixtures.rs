//! BPF_PROG_TEST_RUN packet fixtures, table-driven in the manner of Katran:
//! each case is an input frame, the program it enters, the expected verdict,
//! the reason it must be counted under, and the exact expected output bytes
//! (checksums recomputed independently). Cases run in order against maps
//! seeded once, so later cases see the state earlier ones created.

use std::net::Ipv4Addr;

use proxy_common::{
    CtEntry, CtKey,
    ct::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_REPLY_SEEN, CT_F_REWRITE_DST, CT_F_REWRITE_SRC},
    names::{PROG_FROM_POD, PROG_TO_POD},
    proto, reason,
    service::HAIRPIN_SNAT_ADDR,
};
use sluice::{
    conntrack::monotonic_secs,
    datapath::Capacities,
    frame::{
        self as packet, CLIENT_MAC, Frame, GATEWAY_MAC, L4, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST,
        TCP_SYN, icmp_echo, tcp, udp, verify_checksums,
    },
};
use sluice_tests::fixture::{Datapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, nbo};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_MULTI: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const VIP_SELF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const VIP_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const BE1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const BE2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 21);
const BE3: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 22);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(
    HAIRPIN_SNAT_ADDR[0],
    HAIRPIN_SNAT_ADDR[1],
    HAIRPIN_SNAT_ADDR[2],
    HAIRPIN_SNAT_ADDR[3],
);

struct Case {
    name: &'static str,
    prog: &'static str,
    input: Vec<u8>,
    action: u32,
    reason: u32,
    /// Expected output; `None` means the frame must leave unchanged.
    output: Option<Vec<u8>>,
}

fn case(name: &'static str, prog: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        prog,
        input,
        action: TC_ACT_OK,
        reason: reason::PASS_NOT_SERVICE,
        output: None,
    }
}

impl Case {
    fn verdict(mut self, action: u32, reason: u32) -> Self {
        self.action = action;
        self.reason = reason;
        self
    }
    fn out(mut self, frame: Vec<u8>) -> Self {
        self.output = Some(frame);
        self
    }
}

/// The ICMP port-unreachable the datapath must answer `offending` with.
fn port_unreachable(offending: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let mut f = Frame::new(
        from,
        to,
        L4::Icmp {
            kind: 3,
            code: 3,
            rest: [0; 4],
            payload: offending[14..14 + 28].to_vec(),
        },
    )
    .with_macs(GATEWAY_MAC, CLIENT_MAC)
    .with_id(0);
    f.tos = 0xc0;
    f.bytes()
}

/// An ICMP error (`kind`, `code`) from `from` to `to` quoting the IPv4
/// header and first 8 L4 bytes of `quoted`, as a kernel sends it.
fn icmp_error(kind: u8, code: u8, from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    Frame::new(
        from,
        to,
        L4::Icmp {
            kind,
            code,
            rest: [0, 0, 0x05, 0x78],
            payload: quoted[14..14 + 28].to_vec(),
        },
    )
    .bytes()
}

/// A frame whose IPv4 datagram claims only `l4_len` bytes of L4 header,
/// with a correct IP checksum: truncated, but not malformed.
fn truncate_l4(frame: &[u8], l4_len: usize) -> Vec<u8> {
    let mut f = frame[..14 + 20 + l4_len].to_vec();
    f[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn seeded() -> Datapath {
    let mut dp = Datapath::load("fixtures", Capacities::default()).unwrap();
    dp.seed_service((VIP, 80), proto::TCP, 1, &[(1, BE1, 8080)])
        .unwrap();
    dp.seed_service(
        (VIP_MULTI, 80),
        proto::TCP,
        2,
        &[(21, BE1, 8080), (22, BE2, 8080), (23, BE3, 8080)],
    )
    .unwrap();
    dp.seed_service((VIP_EMPTY, 80), proto::TCP, 3, &[])
        .unwrap();
    dp.seed_service((VIP_EMPTY, 53), proto::UDP, 4, &[])
        .unwrap();
    dp.seed_service((VIP_SELF, 80), proto::TCP, 5, &[(5, CLIENT, 8080)])
        .unwrap();
    dp.seed_service((VIP_UDP, 53), proto::UDP, 6, &[(6, BE2, 5353)])
        .unwrap();
    dp
}

/// An established flow CLIENT:41000 -> VIP_MULTI:80 pinned to BE3, as a
/// previous packet would have left it: CT, not the random choice, decides.
fn seed_established_flow(dp: &mut Datapath) {
    let now = monotonic_secs();
    let fwd = CtEntry {
        new_saddr: nbo(CLIENT),
        new_daddr: nbo(BE3),
        new_sport: 41000u16.to_be(),
        new_dport: 8080u16.to_be(),
        flags: CT_F_REWRITE_DST | CT_F_REPLY_SEEN,
        svc_id: 2,
        backend_id: 23,
        created: now,
        last_seen: now,
        synced: now,
        ..Default::default()
    };
    dp.ct_insert(
        CtKey {
            saddr: nbo(CLIENT),
            daddr: nbo(VIP_MULTI),
            sport: 41000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            dir: CT_DIR_SERVICE,
            _pad: [0; 2],
        },
        fwd,
    )
    .unwrap();
    dp.ct_insert(
        CtKey {
            saddr: nbo(BE3),
            daddr: nbo(CLIENT),
            sport: 8080u16.to_be(),
            dport: 41000u16.to_be(),
            proto: proto::TCP,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        },
        CtEntry {
            new_saddr: nbo(VIP_MULTI),
            new_sport: 80u16.to_be(),
            flags: CT_F_REWRITE_SRC | CT_F_REPLY_SEEN,
            ..fwd
        },
    )
    .unwrap();
}

fn cases() -> Vec<Case> {
    let syn = tcp((CLIENT, 40000), (VIP, 80), TCP_SYN);
    let syn_to_empty = tcp((CLIENT, 40001), (VIP_EMPTY, 80), TCP_SYN).bytes();
    let udp_to_empty = udp((CLIENT, 40002), (VIP_EMPTY, 53), b"q").bytes();
    let unknown_port = tcp((CLIENT, 40003), (VIP, 443), TCP_SYN).bytes();
    let to_self = tcp((CLIENT, 40004), (VIP_SELF, 80), TCP_SYN);
    let dns = udp((CLIENT, 40005), (VIP_UDP, 53), &[7u8; 64]);
    let dns_big = udp((CLIENT, 40006), (VIP_UDP, 53), &[9u8; 200]).with_id(0x4242);
    let (frag1, frag2) = dns_big.fragments(96);
    let mut dns_big_out = dns_big.clone();
    dns_big_out.dst = BE2;
    if let L4::Udp { dport, .. } = &mut dns_big_out.l4 {
        *dport = 5353;
    }
    let (frag1_out, frag2_out) = dns_big_out.fragments(96);
    let orphan = udp((CLIENT, 40007), (VIP_UDP, 53), &[1u8; 200]).with_id(0x5151);
    let (_, orphan_frag) = orphan.fragments(96);
    let plain = udp((CLIENT, 40008), (OTHER_POD, 53), &[1u8; 200]).with_id(0x6161);
    let (_, plain_frag) = plain.fragments(96);
    let mut bad_version = syn.bytes();
    bad_version[14] = 0x65;
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut ihl_overrun = syn.bytes();
    ihl_overrun[14] = 0x4f;
    let mut long_claim = syn.bytes();
    long_claim[16..18].copy_from_slice(&1400u16.to_be_bytes());

    vec![
        case(
            "SYN to a ClusterIP is DNATed to its backend",
            PROG_FROM_POD,
            syn.bytes(),
        )
        .verdict(TC_ACT_OK, reason::FWD_NEW)
        .out(tcp((CLIENT, 40000), (BE1, 8080), TCP_SYN).bytes()),
        case(
            "the backend's SYN-ACK is reverse-NATed to the VIP",
            PROG_TO_POD,
            tcp((BE1, 8080), (CLIENT, 40000), TCP_SYN | TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_OK, reason::REV_NAT)
        .out(tcp((VIP, 80), (CLIENT, 40000), TCP_SYN | TCP_ACK).bytes()),
        case(
            "data on the flow hits CT and keeps the backend",
            PROG_FROM_POD,
            tcp((CLIENT, 40000), (VIP, 80), TCP_ACK | TCP_PSH)
                .with_payload(b"GET / HTTP/1.1\r\n\r\n")
                .bytes(),
        )
        .verdict(TC_ACT_OK, reason::FWD_ESTABLISHED)
        .out(
            tcp((CLIENT, 40000), (BE1, 8080), TCP_ACK | TCP_PSH)
                .with_payload(b"GET / HTTP/1.1\r\n\r\n")
                .bytes(),
        ),
        case(
            "an established flow goes to its CT backend, not a new choice",
            PROG_FROM_POD,
            tcp((CLIENT, 41000), (VIP_MULTI, 80), TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_OK, reason::FWD_ESTABLISHED)
        .out(tcp((CLIENT, 41000), (BE3, 8080), TCP_ACK).bytes()),
        case(
            "a reply of that flow comes back from the VIP",
            PROG_TO_POD,
            tcp((BE3, 8080), (CLIENT, 41000), TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_OK, reason::REV_NAT)
        .out(tcp((VIP_MULTI, 80), (CLIENT, 41000), TCP_ACK).bytes()),
        case(
            "the backend's ICMP error about that flow is about the VIP, from the VIP",
            PROG_TO_POD,
            icmp_error(
                3,
                4,
                BE3,
                CLIENT,
                &tcp((CLIENT, 41000), (BE3, 8080), TCP_ACK).bytes(),
            ),
        )
        .verdict(TC_ACT_OK, reason::ICMP_ERROR_REV_NAT)
        .out(icmp_error(
            3,
            4,
            VIP_MULTI,
            CLIENT,
            &tcp((CLIENT, 41000), (VIP_MULTI, 80), TCP_ACK).bytes(),
        )),
        case(
            "a router's ICMP error about that flow keeps its source, quotes the VIP",
            PROG_TO_POD,
            icmp_error(
                11,
                0,
                OTHER_POD,
                CLIENT,
                &tcp((CLIENT, 41000), (BE3, 8080), TCP_ACK).bytes(),
            ),
        )
        .verdict(TC_ACT_OK, reason::ICMP_ERROR_REV_NAT)
        .out(icmp_error(
            11,
            0,
            OTHER_POD,
            CLIENT,
            &tcp((CLIENT, 41000), (VIP_MULTI, 80), TCP_ACK).bytes(),
        )),
        case(
            "an ICMP error about an untracked flow passes unchanged",
            PROG_TO_POD,
            icmp_error(
                3,
                3,
                BE3,
                CLIENT,
                &tcp((CLIENT, 41999), (BE3, 8080), TCP_ACK).bytes(),
            ),
        ),
        case(
            "TCP to a service without endpoints gets ICMP port unreachable",
            PROG_FROM_POD,
            syn_to_empty.clone(),
        )
        .verdict(TC_ACT_REDIRECT, reason::REJECT_NO_BACKEND)
        .out(port_unreachable(&syn_to_empty, VIP_EMPTY, CLIENT)),
        case(
            "UDP to a service without endpoints gets ICMP port unreachable",
            PROG_FROM_POD,
            udp_to_empty.clone(),
        )
        .verdict(TC_ACT_REDIRECT, reason::REJECT_NO_BACKEND)
        .out(port_unreachable(&udp_to_empty, VIP_EMPTY, CLIENT)),
        case(
            "a port the service does not define is refused",
            PROG_FROM_POD,
            unknown_port.clone(),
        )
        .verdict(TC_ACT_REDIRECT, reason::REJECT_UNKNOWN_PORT)
        .out(port_unreachable(&unknown_port, VIP, CLIENT)),
        case(
            "pod-to-pod TCP passes untouched",
            PROG_FROM_POD,
            tcp((CLIENT, 40010), (OTHER_POD, 80), TCP_SYN).bytes(),
        ),
        case(
            "traffic into a pod that is not a reply passes untouched",
            PROG_TO_POD,
            tcp((OTHER_POD, 80), (CLIENT, 40010), TCP_SYN | TCP_ACK).bytes(),
        ),
        case(
            "ICMP between pods passes",
            PROG_FROM_POD,
            icmp_echo(CLIENT, OTHER_POD, 3).bytes(),
        ),
        case(
            "ICMP to a service address is dropped",
            PROG_FROM_POD,
            icmp_echo(CLIENT, VIP, 3).bytes(),
        )
        .verdict(TC_ACT_SHOT, reason::DROP_UNSUPPORTED_PROTO),
        case("ARP passes", PROG_FROM_POD, arp).verdict(TC_ACT_OK, reason::PASS_NON_IPV4),
        case("UDP to a ClusterIP is DNATed", PROG_FROM_POD, dns.bytes())
            .verdict(TC_ACT_OK, reason::FWD_NEW)
            .out(udp((CLIENT, 40005), (BE2, 5353), &[7u8; 64]).bytes()),
        case(
            "the UDP reply is reverse-NATed",
            PROG_TO_POD,
            udp((BE2, 5353), (CLIENT, 40005), b"answer").bytes(),
        )
        .verdict(TC_ACT_OK, reason::REV_NAT)
        .out(udp((VIP_UDP, 53), (CLIENT, 40005), b"answer").bytes()),
        case(
            "UDP without a checksum keeps checksum zero",
            PROG_FROM_POD,
            udp((CLIENT, 40005), (VIP_UDP, 53), b"zz")
                .without_udp_checksum()
                .bytes(),
        )
        .verdict(TC_ACT_OK, reason::FWD_ESTABLISHED)
        .out(
            udp((CLIENT, 40005), (BE2, 5353), b"zz")
                .without_udp_checksum()
                .bytes(),
        ),
        case(
            "a first fragment to a VIP is translated, ports and all",
            PROG_FROM_POD,
            frag1,
        )
        .verdict(TC_ACT_OK, reason::FWD_NEW)
        .out(frag1_out),
        case(
            "the next fragment follows the first one's flow",
            PROG_FROM_POD,
            frag2,
        )
        .verdict(TC_ACT_OK, reason::FWD_ESTABLISHED)
        .out(frag2_out),
        case(
            "a later fragment to a VIP without its first is dropped",
            PROG_FROM_POD,
            orphan_frag,
        )
        .verdict(TC_ACT_SHOT, reason::DROP_FRAG_NO_STATE),
        case(
            "a later fragment between pods passes",
            PROG_FROM_POD,
            plain_frag,
        )
        .verdict(TC_ACT_OK, reason::PASS_FRAGMENT),
        case(
            "a pod reaching itself through its service is turned around",
            PROG_FROM_POD,
            to_self.bytes(),
        )
        .verdict(TC_ACT_REDIRECT, reason::FWD_NEW)
        .out(
            tcp((HAIRPIN, 40004), (CLIENT, 8080), TCP_SYN)
                .with_macs(GATEWAY_MAC, CLIENT_MAC)
                .bytes(),
        ),
        case(
            "its reply to the hairpin address comes back from the VIP",
            PROG_FROM_POD,
            tcp((CLIENT, 8080), (HAIRPIN, 40004), TCP_SYN | TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_REDIRECT, reason::HAIRPIN_REPLY)
        .out(
            tcp((VIP_SELF, 80), (CLIENT, 40004), TCP_SYN | TCP_ACK)
                .with_macs(GATEWAY_MAC, CLIENT_MAC)
                .bytes(),
        ),
        case(
            "a packet to the hairpin address without a flow is dropped",
            PROG_FROM_POD,
            tcp((CLIENT, 8080), (HAIRPIN, 49999), TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_SHOT, reason::DROP_HAIRPIN_NO_STATE),
        case(
            "a TCP header cut short, to a VIP, is dropped",
            PROG_FROM_POD,
            truncate_l4(&tcp((CLIENT, 40011), (VIP, 80), TCP_SYN).bytes(), 10),
        )
        .verdict(TC_ACT_SHOT, reason::DROP_TRUNCATED),
        case(
            "a TCP header cut short, between pods, passes",
            PROG_FROM_POD,
            truncate_l4(&tcp((CLIENT, 40011), (OTHER_POD, 80), TCP_SYN).bytes(), 10),
        )
        .verdict(TC_ACT_OK, reason::PASS_TRUNCATED),
        // BPF_PROG_TEST_RUN refuses frames shorter than an IPv4 header
        // outright, so "cut short" is a header length running past the datagram.
        case(
            "an IP header longer than its datagram is dropped",
            PROG_FROM_POD,
            ihl_overrun,
        )
        .verdict(TC_ACT_SHOT, reason::DROP_MALFORMED),
        case(
            "a datagram longer than its frame is dropped",
            PROG_FROM_POD,
            long_claim,
        )
        .verdict(TC_ACT_SHOT, reason::DROP_MALFORMED),
        case(
            "an IPv4 ethertype with version 6 is dropped",
            PROG_FROM_POD,
            bad_version,
        )
        .verdict(TC_ACT_SHOT, reason::DROP_MALFORMED),
        case(
            "IP options on service traffic: dropped, never mis-translated",
            PROG_FROM_POD,
            tcp((CLIENT, 40012), (VIP, 80), TCP_SYN)
                .with_options(&[0x94, 0x04, 0, 0])
                .bytes(),
        )
        .verdict(TC_ACT_SHOT, reason::DROP_IP_OPTIONS),
        case(
            "IP options between pods pass",
            PROG_FROM_POD,
            tcp((CLIENT, 40012), (OTHER_POD, 80), TCP_SYN)
                .with_options(&[0x94, 0x04, 0, 0])
                .bytes(),
        )
        .verdict(TC_ACT_OK, reason::PASS_IP_OPTIONS),
        case(
            "a client RST is forwarded on its flow",
            PROG_FROM_POD,
            tcp((CLIENT, 40000), (VIP, 80), TCP_RST | TCP_ACK).bytes(),
        )
        .verdict(TC_ACT_OK, reason::FWD_ESTABLISHED)
        .out(tcp((CLIENT, 40000), (BE1, 8080), TCP_RST | TCP_ACK).bytes()),
    ]
}

/// Runs cases in order and fails with every case that went wrong.
fn run_cases(dp: &mut Datapath, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let before = dp.reason_count(c.reason);
        let r = dp
            .run(c.prog, &c.input)
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        let after = dp.reason_count(c.reason);
        let expected = c.output.as_ref().unwrap_or(&c.input);
        let mut problems = Vec::new();
        if r.action != c.action {
            problems.push(format!("action {} (expected {})", r.action, c.action));
        }
        if after != before + 1 {
            problems.push(format!(
                "reason {} counted {} times",
                reason::name(c.reason).unwrap_or("?"),
                after - before
            ));
        }
        // A dropped frame's bytes do not matter; everything else must match.
        if c.action != TC_ACT_SHOT {
            if &r.output != expected {
                problems.push(format!(
                    "output differs:\n   got      {:02x?}\n   expected {:02x?}",
                    r.output, expected
                ));
            }
            if c.output.is_some()
                && let Err(e) = verify_checksums(&r.output)
            {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn packet_fixtures() {
    let mut dp = seeded();
    seed_established_flow(&mut dp);
    run_cases(&mut dp, cases());
}

#[test]
fn a_flow_keeps_its_backend_and_new_flows_spread() {
    let mut dp = seeded();
    let mut chosen = std::collections::HashMap::new();
    for port in 0..300u16 {
        let sport = 20000 + port;
        let first = dp
            .run(
                PROG_FROM_POD,
                &tcp((CLIENT, sport), (VIP_MULTI, 80), TCP_SYN).bytes(),
            )
            .unwrap();
        assert_eq!(first.action, TC_ACT_OK);
        let backend = first.output[30..34].to_vec();
        for _ in 0..5 {
            let next = dp
                .run(
                    PROG_FROM_POD,
                    &tcp((CLIENT, sport), (VIP_MULTI, 80), TCP_ACK).bytes(),
                )
                .unwrap();
            assert_eq!(
                next.output[30..34],
                backend[..],
                "flow {sport} changed backend"
            );
        }
        *chosen.entry(backend).or_insert(0u32) += 1;
    }
    assert_eq!(chosen.len(), 3, "all three backends chosen: {chosen:?}");
    for (be, n) in &chosen {
        assert!(*n >= 60, "backend {be:?} got only {n} of 300 flows");
    }
    let (packets, conns, _) = dp.service_count(2);
    assert_eq!(conns, 300);
    assert_eq!(packets, 300 * 6);
}

#[test]
fn port_reuse_after_close_makes_a_fresh_choice() {
    let mut dp = seeded();
    let s = (CLIENT, 30000);
    // Open, answer and reset a flow, then reuse the tuple with a new SYN:
    // the service entry must be replaced, not reused.
    let syn = tcp(s, (VIP_MULTI, 80), TCP_SYN).bytes();
    let first = dp.run(PROG_FROM_POD, &syn).unwrap();
    let be = Ipv4Addr::new(
        first.output[30],
        first.output[31],
        first.output[32],
        first.output[33],
    );
    dp.run(PROG_TO_POD, &tcp((be, 8080), s, TCP_SYN | TCP_ACK).bytes())
        .unwrap();
    dp.run(
        PROG_FROM_POD,
        &tcp(s, (VIP_MULTI, 80), TCP_FIN | TCP_ACK).bytes(),
    )
    .unwrap();
    let key = CtKey {
        saddr: nbo(CLIENT),
        daddr: nbo(VIP_MULTI),
        sport: 30000u16.to_be(),
        dport: 80u16.to_be(),
        proto: proto::TCP,
        dir: CT_DIR_SERVICE,
        _pad: [0; 2],
    };
    let closing = dp.ct_get(&key).unwrap();
    assert_ne!(closing.flags & proxy_common::ct::CT_F_FIN_CLIENT, 0);
    assert_ne!(closing.flags & CT_F_REPLY_SEEN, 0, "reply seen was synced");
    let before = dp.reason_count(reason::FWD_NEW);
    dp.run(PROG_FROM_POD, &syn).unwrap();
    assert_eq!(dp.reason_count(reason::FWD_NEW), before + 1);
    let fresh = dp.ct_get(&key).unwrap();
    assert_eq!(fresh.flags & CT_F_REPLY_SEEN, 0);
}

#[test]
fn garbage_never_crashes_or_changes_a_passed_frame() {
    let mut dp = seeded();
    // The uplink programs only look at packets once the node is configured.
    dp.set_config(proxy_common::NodeConfig {
        version: proxy_common::config::NODE_CONFIG_VERSION,
        node_addr: nbo(Ipv4Addr::new(10, 77, 0, 10)),
        pod_cidr: nbo(Ipv4Addr::new(10, 244, 0, 0)),
        pod_mask: (u32::MAX << 8).to_be(),
        snat_port_min: 61_000,
        snat_port_max: 65_535,
        ..Default::default()
    })
    .unwrap();
    // A fixed-seed xorshift: reproducible garbage, half of it claiming IPv4.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..2000 {
        // At least an IPv4 header's worth: the kernel's test run refuses less.
        let len = 34 + (next() % 100) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            f[12] = 0x08;
            f[13] = 0x00;
            f[14] = 0x45;
        }
        for prog in [
            PROG_FROM_POD,
            PROG_TO_POD,
            proxy_common::names::PROG_FROM_NETDEV,
            proxy_common::names::PROG_TO_NETDEV,
        ] {
            let r = dp.run(prog, &f).unwrap();
            assert!(
                r.action == TC_ACT_OK || r.action == TC_ACT_SHOT,
                "garbage got action {} from {prog}: {f:02x?}",
                r.action
            );
            if r.action == TC_ACT_OK {
                assert_eq!(r.output, f, "{prog} changed a passed garbage frame");
            }
        }
    }
}

mod masquerade {
    use super::*;
    use proxy_common::{
        NodeConfig,
        config::NODE_CONFIG_VERSION,
        names::{PROG_FROM_NETDEV, PROG_TO_NETDEV},
    };
    use sluice::frame::icmp_echo_reply;

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
    const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
    const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 7);
    /// One port only: the allocation is deterministic and can run out.
    const PORT: u16 = 61_000;

    fn mask(bits: u32) -> u32 {
        (u32::MAX << (32 - bits)).to_be()
    }

    fn node() -> Datapath {
        let mut dp = Datapath::load("masq", Capacities::default()).unwrap();
        dp.set_config(NodeConfig {
            version: NODE_CONFIG_VERSION,
            flags: 0,
            node_addr: nbo(NODE),
            pod_cidr: nbo(Ipv4Addr::new(10, 244, 0, 0)),
            pod_mask: mask(24),
            cluster_cidr: nbo(Ipv4Addr::new(10, 244, 0, 0)),
            cluster_mask: mask(16),
            snat_port_min: PORT,
            snat_port_max: PORT,
            ..Default::default()
        })
        .unwrap();
        dp
    }

    fn cases() -> Vec<Case> {
        vec![
            case(
                "pod TCP leaving the cluster gets the node's address and a masquerade port",
                PROG_TO_NETDEV,
                tcp((CLIENT, 40000), (OUTSIDE, 80), TCP_SYN).bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE)
            .out(tcp((NODE, PORT), (OUTSIDE, 80), TCP_SYN).bytes()),
            case(
                "its reply gets the pod back",
                PROG_FROM_NETDEV,
                tcp((OUTSIDE, 80), (NODE, PORT), TCP_SYN | TCP_ACK).bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE_REPLY)
            .out(tcp((OUTSIDE, 80), (CLIENT, 40000), TCP_SYN | TCP_ACK).bytes()),
            case(
                "later packets of the flow keep the port",
                PROG_TO_NETDEV,
                tcp((CLIENT, 40000), (OUTSIDE, 80), TCP_ACK).bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE)
            .out(tcp((NODE, PORT), (OUTSIDE, 80), TCP_ACK).bytes()),
            case(
                "another flow to the same destination finds no free port",
                PROG_TO_NETDEV,
                tcp((CLIENT, 40001), (OUTSIDE, 80), TCP_SYN).bytes(),
            )
            .verdict(TC_ACT_SHOT, reason::DROP_SNAT_PORTS_EXHAUSTED),
            case(
                "UDP is masqueraded too (its own port space)",
                PROG_TO_NETDEV,
                udp((CLIENT, 5000), (OUTSIDE, 53), b"q").bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE)
            .out(udp((NODE, PORT), (OUTSIDE, 53), b"q").bytes()),
            case(
                "ping leaving the cluster: the echo identifier is the port",
                PROG_TO_NETDEV,
                icmp_echo(CLIENT, OUTSIDE, 7).bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE)
            .out(icmp_echo(NODE, OUTSIDE, PORT).bytes()),
            case(
                "the echo reply comes back to the pod with its identifier",
                PROG_FROM_NETDEV,
                icmp_echo_reply(OUTSIDE, NODE, PORT).bytes(),
            )
            .verdict(TC_ACT_OK, reason::MASQUERADE_REPLY)
            .out(icmp_echo_reply(OUTSIDE, CLIENT, 7).bytes()),
            case(
                "pod-to-pod traffic keeps pod addresses",
                PROG_TO_NETDEV,
                tcp((CLIENT, 40002), (REMOTE_POD, 80), TCP_SYN).bytes(),
            )
            .verdict(TC_ACT_OK, reason::PASS_UPLINK),
            case(
                "the node's own traffic is left alone",
                PROG_TO_NETDEV,
                tcp((NODE, 40003), (OUTSIDE, 80), TCP_SYN).bytes(),
            )
            .verdict(TC_ACT_OK, reason::PASS_UPLINK),
            case(
                "traffic to the node that is no reply is left alone",
                PROG_FROM_NETDEV,
                tcp((OUTSIDE, 1234), (NODE, 22), TCP_SYN).bytes(),
            )
            .verdict(TC_ACT_OK, reason::PASS_UPLINK),
        ]
    }

    #[test]
    fn masquerade_fixtures() {
        let mut dp = node();
        run_cases(&mut dp, cases());
    }
}

/// Replies of a NodePort flow SNATed to a backend on another node come back
/// addressed to this node's pod-CIDR network address: over the overlay
/// (`from_overlay`), or on the uplink when another network routes pod CIDRs
/// (`--overlay none`, `from_netdev`). Both restore frontend -> client.
mod external_reply {
    use super::*;
    use proxy_common::{
        NodeConfig,
        config::NODE_CONFIG_VERSION,
        names::{PROG_FROM_NETDEV, PROG_FROM_OVERLAY},
    };

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
    const OVERLAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
    const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
    const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
    const SNAT_PORT: u16 = 61_234;

    fn node_with_flow() -> Datapath {
        let mut dp = Datapath::load("extreply", Capacities::default()).unwrap();
        dp.set_config(NodeConfig {
            version: NODE_CONFIG_VERSION,
            node_addr: nbo(NODE),
            pod_cidr: nbo(OVERLAY_ADDR),
            pod_mask: (u32::MAX << 8).to_be(),
            snat_port_min: 61_000,
            snat_port_max: 65_535,
            ..Default::default()
        })
        .unwrap();
        let now = monotonic_secs();
        // The reply entry create_external_flow writes for OUTSIDE:40000 ->
        // NODE:30080 sent to REMOTE_BACKEND:8080 from OVERLAY_ADDR:SNAT_PORT
        // (without FIB routing, which needs the node's routes).
        dp.ct_insert(
            CtKey {
                saddr: nbo(REMOTE_BACKEND),
                daddr: nbo(OVERLAY_ADDR),
                sport: 8080u16.to_be(),
                dport: SNAT_PORT.to_be(),
                proto: proto::TCP,
                dir: CT_DIR_REPLY,
                _pad: [0; 2],
            },
            CtEntry {
                new_saddr: nbo(NODE),
                new_sport: 30080u16.to_be(),
                new_daddr: nbo(OUTSIDE),
                new_dport: 40000u16.to_be(),
                flags: CT_F_REWRITE_SRC | CT_F_REWRITE_DST,
                svc_id: 1,
                backend_id: 1,
                created: now,
                last_seen: now,
                synced: now,
                ..Default::default()
            },
        )
        .unwrap();
        dp
    }

    fn cases(prog: &'static str) -> Vec<Case> {
        vec![
            case(
                "the backend's reply to the SNAT address becomes the frontend's",
                prog,
                tcp(
                    (REMOTE_BACKEND, 8080),
                    (OVERLAY_ADDR, SNAT_PORT),
                    TCP_SYN | TCP_ACK,
                )
                .bytes(),
            )
            .verdict(TC_ACT_OK, reason::NODEPORT_REPLY)
            .out(tcp((NODE, 30080), (OUTSIDE, 40000), TCP_SYN | TCP_ACK).bytes()),
            case(
                "a packet to the SNAT address of no flow is left alone",
                prog,
                tcp(
                    (REMOTE_BACKEND, 8080),
                    (OVERLAY_ADDR, SNAT_PORT + 1),
                    TCP_ACK,
                )
                .bytes(),
            )
            .verdict(
                TC_ACT_OK,
                if prog == PROG_FROM_NETDEV {
                    reason::PASS_UPLINK
                } else {
                    reason::PASS_OVERLAY
                },
            ),
        ]
    }

    #[test]
    fn over_the_overlay() {
        run_cases(&mut node_with_flow(), cases(PROG_FROM_OVERLAY));
    }

    #[test]
    fn on_the_uplink_without_the_overlay() {
        run_cases(&mut node_with_flow(), cases(PROG_FROM_NETDEV));
    }
}

/// The datapath's flow hash, written out again as the test's oracle: the
/// client's address and port, the frontend port and the protocol.
fn maglev_flow_hash(client: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    // The program loads the ports as stored (network order) into a u16.
    let (sp, dp) = (
        u32::from(u16::from_ne_bytes(sport.to_be_bytes())),
        u32::from(u16::from_ne_bytes(dport.to_be_bytes())),
    );
    let mut h = nbo(client).wrapping_mul(0x9e37_79b1);
    h ^= ((sp << 16) | dp).wrapping_mul(0x85eb_ca6b);
    h ^= u32::from(proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[test]
fn maglev_sends_each_new_flow_to_the_slot_it_hashes_to() {
    const M: u32 = 13;
    let mut dp = seeded();
    dp.set_config(proxy_common::NodeConfig {
        version: proxy_common::config::NODE_CONFIG_VERSION,
        maglev_size: M,
        ..Default::default()
    })
    .unwrap();
    // VIP_MULTI (frontend id 2) gets a table whose slot s names backend
    // s % 3; an odd size leaves the last element's second half unused.
    let ids = [21u32, 22, 23];
    let addrs = [BE1, BE2, BE3];
    let table: Vec<u32> = (0..M).map(|s| ids[(s % 3) as usize]).collect();
    let inner =
        aya::maps::MapData::from_fd(sluice::datapath::raw::maglev_table(&table).unwrap()).unwrap();
    dp.maps.maglev.insert(2, &inner, 0).unwrap();
    let fe = proxy_common::ServiceKey::frontend(
        nbo(VIP_MULTI),
        80u16.to_be(),
        proto::TCP,
        proxy_common::service::SCOPE_EXTERNAL,
    );
    let mut master = dp.maps.services.get(&fe, 0).unwrap();
    master.flags |= proxy_common::service::SVC_F_MAGLEV;
    dp.maps.services.insert(fe, master, 0).unwrap();
    let mut halves = [0usize; 2];
    for sport in 30_000..30_200u16 {
        let out = dp
            .run(
                PROG_FROM_POD,
                &tcp((CLIENT, sport), (VIP_MULTI, 80), TCP_SYN).bytes(),
            )
            .unwrap();
        assert_eq!(out.action, TC_ACT_OK, "port {sport}");
        let slot = maglev_flow_hash(CLIENT, sport, 80, proto::TCP) % M;
        halves[(slot % 2) as usize] += 1;
        let want = addrs[(slot % 3) as usize];
        assert_eq!(
            out.output[30..34],
            want.octets(),
            "port {sport} hashes to slot {slot}"
        );
    }
    // Both halves of the two-slot elements were exercised.
    assert!(halves.iter().all(|n| *n > 50), "{halves:?}");
}

/// Direct delivery to pods of this node (`sluice_ep4_v1`). Run in a test
/// namespace of its own: BPF_PROG_TEST_RUN gives the skb that namespace's
/// loopback as its device, and the entries name two veths made there (one
/// with an MTU too small for a big datagram).
mod direct_delivery {
    use super::*;
    use proxy_common::LocalEndpoint;
    use sluice_testkit::netns::NetNs;

    const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
    const SMALL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 40);
    const LOOPED_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 41);

    fn link(ns: &NetNs, name: &str, mtu: &str) -> u32 {
        let st = ns
            .command("ip")
            .args([
                "link", "add", name, "mtu", mtu, "type", "veth", "peer", "name",
            ])
            .arg(format!("{name}p"))
            .status()
            .unwrap();
        assert!(st.success(), "ip link add {name}");
        let name = name.to_owned();
        ns.run(move || sluice_net::BlockingNetlink::new()?.link(&name))
            .unwrap()
            .unwrap()
            .expect("test link")
            .index
    }

    fn entry(ifindex: u32) -> LocalEndpoint {
        LocalEndpoint {
            ifindex,
            mac: POD_MAC,
            _pad: [0; 2],
        }
    }

    /// `f` as the gateway routes it to the pod: one hop less, gateway to pod.
    fn routed(mut f: Frame) -> Vec<u8> {
        f.ttl -= 1;
        f.with_macs(GATEWAY_MAC, POD_MAC).bytes()
    }

    #[test]
    fn fixtures() {
        let ns = NetNs::new("fx-direct").unwrap();
        let pod_if = link(&ns, "pod0", "1500");
        let small_if = link(&ns, "small0", "576");
        ns.run(move || {
            let mut dp = seeded();
            let eps = &mut dp.maps.local_endpoints;
            eps.insert(nbo(BE1), entry(pod_if), 0).unwrap();
            eps.insert(nbo(SMALL_POD), entry(small_if), 0).unwrap();
            // The skb's own interface (loopback here): a stale entry.
            eps.insert(nbo(LOOPED_POD), entry(1), 0).unwrap();

            let syn = || tcp((CLIENT, 40100), (BE1, 8080), TCP_SYN);
            let mut last_hop = syn();
            last_hop.ttl = 1;
            let big = || udp((CLIENT, 40102), (SMALL_POD, 53), &[7u8; 1000]);
            let cases = vec![
                case(
                    "to a local pod through the gateway",
                    PROG_FROM_POD,
                    syn().bytes(),
                )
                .verdict(TC_ACT_REDIRECT, reason::FWD_LOCAL_POD)
                .out(routed(syn())),
                case(
                    "to a local pod at layer 2",
                    PROG_FROM_POD,
                    syn().with_macs(CLIENT_MAC, POD_MAC).bytes(),
                )
                .verdict(TC_ACT_REDIRECT, reason::FWD_LOCAL_POD),
                case(
                    "ClusterIP to a local backend: translated, then delivered",
                    PROG_FROM_POD,
                    tcp((CLIENT, 40101), (VIP, 80), TCP_SYN).bytes(),
                )
                .verdict(TC_ACT_REDIRECT, reason::FWD_NEW)
                .out(routed(tcp((CLIENT, 40101), (BE1, 8080), TCP_SYN))),
                // The stack sends the ICMP errors.
                case(
                    "TTL about to expire: left to the stack",
                    PROG_FROM_POD,
                    last_hop.bytes(),
                ),
                case(
                    "too big for the pod's MTU: left to the stack",
                    PROG_FROM_POD,
                    big().bytes(),
                ),
                case(
                    "an entry naming the incoming interface: left to the stack",
                    PROG_FROM_POD,
                    tcp((CLIENT, 40103), (LOOPED_POD, 80), TCP_SYN).bytes(),
                ),
                case("a fragment: left to the stack", PROG_FROM_POD, {
                    let mut f = udp((CLIENT, 40104), (BE1, 53), &[1u8; 64]).bytes();
                    // More-fragments set, offset 0.
                    f[20] |= 0x20;
                    let c = packet::checksum(&[&{
                        let mut h = f[14..34].to_vec();
                        h[10..12].copy_from_slice(&[0, 0]);
                        h
                    }]);
                    f[24..26].copy_from_slice(&c.to_be_bytes());
                    f
                })
                .verdict(TC_ACT_OK, reason::PASS_FRAGMENT),
            ];
            run_cases(&mut dp, cases);
        })
        .unwrap();
    }
}
