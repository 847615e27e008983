//! Synthetic Ethernet/IPv4/TCP/UDP/ICMP frames with correct checksums, to feed
//! programs through BPF_PROG_TEST_RUN (`sluicectl trace`, the packet
//! fixtures, the datapath benchmark), and a checker that recomputes the
//! checksums of frames a program wrote.

use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        /// Send 0 in the checksum field ("no checksum", legal for UDP/IPv4).
        no_checksum: bool,
    },
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
}

/// An IPv4 datagram in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub tos: u8,
    /// IP options (padded to a multiple of 4 by the caller).
    pub options: Vec<u8>,
    pub l4: L4,
}

pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
    Frame::new(
        src.0,
        dst.0,
        L4::Tcp {
            sport: src.1,
            dport: dst.1,
            seq: 1000,
            ack: if flags & TCP_ACK != 0 { 2000 } else { 0 },
            flags,
            payload: Vec::new(),
        },
    )
}

pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Frame {
    Frame::new(
        src.0,
        dst.0,
        L4::Udp {
            sport: src.1,
            dport: dst.1,
            payload: payload.to_vec(),
            no_checksum: false,
        },
    )
}

pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Frame {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[3] = 1;
    Frame::new(
        src,
        dst,
        L4::Icmp {
            kind: 8,
            code: 0,
            rest,
            payload: b"ping".to_vec(),
        },
    )
}

pub fn icmp_echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Frame {
    let mut f = icmp_echo(src, dst, id);
    if let L4::Icmp { kind, .. } = &mut f.l4 {
        *kind = 0;
    }
    f
}

/// Internet checksum (RFC 1071) of the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = proto;
    p[10..].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: GATEWAY_MAC,
            src,
            dst,
            ttl: 64,
            id: 0x1234,
            tos: 0,
            options: Vec::new(),
            l4,
        }
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
        }
    }

    /// The L4 segment with its checksum filled in.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut seg = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            } => {
                let mut s = Vec::with_capacity(20 + payload.len());
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&seq.to_be_bytes());
                s.extend_from_slice(&ack.to_be_bytes());
                s.push(5 << 4);
                s.push(*flags);
                s.extend_from_slice(&64240u16.to_be_bytes());
                s.extend_from_slice(&[0, 0, 0, 0]);
                s.extend_from_slice(payload);
                s
            }
            L4::Udp {
                sport,
                dport,
                payload,
                ..
            } => {
                let mut s = Vec::with_capacity(8 + payload.len());
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(payload);
                s
            }
            L4::Icmp {
                kind,
                code,
                rest,
                payload,
            } => {
                let mut s = vec![*kind, *code, 0, 0];
                s.extend_from_slice(rest);
                s.extend_from_slice(payload);
                s
            }
        };
        let pseudo = pseudo_header(self.src, self.dst, self.proto(), seg.len());
        match &self.l4 {
            L4::Tcp { .. } => {
                let c = checksum(&[&pseudo, &seg]);
                seg[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp { no_checksum, .. } => {
                if !no_checksum {
                    let mut c = checksum(&[&pseudo, &seg]);
                    if c == 0 {
                        c = 0xffff;
                    }
                    seg[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Icmp { .. } => {
                let c = checksum(&[&seg]);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        seg
    }

    fn ip_header(&self, payload_len: usize, frag_field: u16) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        let mut h = Vec::with_capacity(ihl);
        h.push(0x40 | (ihl / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&((ihl + payload_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&frag_field.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn ethernet(&self) -> Vec<u8> {
        let mut e = Vec::with_capacity(14);
        e.extend_from_slice(&self.dst_mac);
        e.extend_from_slice(&self.src_mac);
        e.extend_from_slice(&0x0800u16.to_be_bytes());
        e
    }

    /// The whole frame, with valid IP and L4 checksums.
    pub fn bytes(&self) -> Vec<u8> {
        let seg = self.l4_bytes();
        let mut f = self.ethernet();
        f.extend_from_slice(&self.ip_header(seg.len(), 0));
        f.extend_from_slice(&seg);
        f
    }

    /// The datagram split into two fragments after `first_len` bytes of L4
    /// data (a multiple of 8).
    pub fn fragments(&self, first_len: usize) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(first_len % 8, 0);
        let seg = self.l4_bytes();
        let (a, b) = seg.split_at(first_len);
        let mut first = self.ethernet();
        first.extend_from_slice(&self.ip_header(a.len(), 0x2000));
        first.extend_from_slice(a);
        let mut second = self.ethernet();
        second.extend_from_slice(&self.ip_header(b.len(), (first_len / 8) as u16));
        second.extend_from_slice(b);
        (first, second)
    }

    pub fn with_macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn with_id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    pub fn with_options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn with_payload(mut self, data: &[u8]) -> Self {
        match &mut self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } | L4::Icmp { payload, .. } => {
                *payload = data.to_vec()
            }
        }
        self
    }

    pub fn without_udp_checksum(mut self) -> Self {
        if let L4::Udp { no_checksum, .. } = &mut self.l4 {
            *no_checksum = true;
        }
        self
    }
}

/// Recomputes the IPv4 header checksum and, for unfragmented TCP, UDP and
/// ICMP, the L4 checksum of a frame; returns what is wrong, if anything.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 34 {
        return Err(format!("frame of {} bytes has no IPv4 header", frame.len()));
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < tot || tot < ihl {
        return Err(format!("total length {tot} does not fit the frame"));
    }
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return Ok(());
    }
    let proto = ip[9];
    let seg = &ip[ihl..tot];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let pseudo = pseudo_header(src, dst, proto, seg.len());
    let ok = match proto {
        6 => checksum(&[&pseudo, seg]) == 0,
        17 => seg.len() >= 8 && (seg[6..8] == [0, 0] || checksum(&[&pseudo, seg]) == 0),
        1 => checksum(&[seg]) == 0,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum (protocol {proto})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        for f in [
            tcp((a, 1234), (b, 80), TCP_SYN),
            udp((a, 53), (b, 5353), b"hello"),
            icmp_echo(a, b, 7),
            tcp((a, 1), (b, 2), TCP_ACK).with_options(&[1, 1, 1, 0]),
        ] {
            verify_checksums(&f.bytes()).unwrap();
        }
    }

    #[test]
    fn corruption_is_detected() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let mut f = tcp((a, 1234), (b, 80), TCP_SYN).bytes();
        f[14 + 20 + 2] ^= 1; // destination port
        assert!(verify_checksums(&f).is_err());
        let mut f = udp((a, 1), (b, 2), b"x").bytes();
        f[14 + 16] ^= 1; // destination address
        assert!(verify_checksums(&f).is_err());
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example words sum to 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), 0x220d);
    }
}
