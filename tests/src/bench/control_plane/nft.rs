//! kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go, >= 1.31) as
//! a peer: its ruleset for the same Services, loaded with `nft -f`, and its
//! partial sync after one endpoint changed: one transaction that rewrites
//! that Service's chains and drops the stale endpoint's chain, on a node
//! carrying the whole ruleset.

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Result, bail};
use sluice_testkit::netns::NetNs;

use super::{
    CLUSTER_CIDR, ENDPOINTS, SERVICE_PORT, TARGET_PORT, chain_name, changed_endpoint,
    changed_service, endpoint, endpoints_after, ms, restore, vip,
};

const TABLE: &str = "ip kube-proxy";

/// `service-<hash>-<namespace>/<name>/<protocol>/<port name>`, as
/// kube-proxy names a service port's chain (8 characters of hash).
fn service_chain(i: usize) -> String {
    let name = format!("bench/svc-{i}/tcp/http");
    let hash = chain_name("", &[&name]);
    format!("service-{}-{name}", &hash[..8])
}

/// `endpoint-<hash>-<service port>__<ip>/<port>`.
fn endpoint_chain(i: usize, ep: Ipv4Addr) -> String {
    let name = format!("bench/svc-{i}/tcp/http__{ep}/{TARGET_PORT}");
    let hash = chain_name("", &[&name]);
    format!("endpoint-{}-{name}", &hash[..8])
}

/// The fixed part: the table, its base chains, masquerading and the
/// `service-ips` verdict map the `services` chain dispatches through.
fn base(out: &mut String) {
    let t = TABLE;
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // Chains exist before any rule jumps to them.
    for chain in ["services", "masquerading", "mark-for-masquerade"] {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    for (chain, hook, prio) in [
        ("nat-prerouting", "prerouting", -100),
        ("nat-output", "output", -100),
    ] {
        let _ = writeln!(
            out,
            "add chain {t} {chain} {{ type nat hook {hook} priority {prio} ; }}"
        );
        let _ = writeln!(out, "add rule {t} {chain} jump services");
    }
    let _ = writeln!(
        out,
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"
    );
    let _ = writeln!(out, "add rule {t} nat-postrouting jump masquerading");
    let _ = writeln!(
        out,
        "add rule {t} mark-for-masquerade mark set mark or 0x4000"
    );
    let _ = writeln!(out, "add rule {t} masquerading mark and 0x4000 == 0 return");
    let _ = writeln!(out, "add rule {t} masquerading mark set mark xor 0x4000");
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(
        out,
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
}

/// One service port's chains (created or flushed, then filled), as both
/// the full and the partial sync write them.
fn service(i: usize, eps: &[Ipv4Addr], out: &mut String) {
    let t = TABLE;
    let svc = service_chain(i);
    let _ = writeln!(out, "add chain {t} {svc}");
    let _ = writeln!(out, "flush chain {t} {svc}");
    let _ = writeln!(
        out,
        "add rule {t} {svc} ip daddr {} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        vip(i)
    );
    let targets: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(k, ep)| format!("{k} : goto {}", endpoint_chain(i, *ep)))
        .collect();
    for ep in eps {
        let chain = endpoint_chain(i, *ep);
        let _ = writeln!(out, "add chain {t} {chain}");
        let _ = writeln!(out, "flush chain {t} {chain}");
        let _ = writeln!(
            out,
            "add rule {t} {chain} ip saddr {ep} jump mark-for-masquerade"
        );
        let _ = writeln!(
            out,
            "add rule {t} {chain} meta l4proto tcp dnat to {ep}:{TARGET_PORT}"
        );
    }
    let _ = writeln!(
        out,
        "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
        eps.len(),
        targets.join(" , ")
    );
}

/// kube-proxy's full sync of `services` on an empty node.
fn full_ruleset(services: usize) -> String {
    full_ruleset_with(services, &|i| {
        (0..ENDPOINTS).map(|e| endpoint(i, e)).collect()
    })
}

/// [`full_ruleset`] with Service `i`'s endpoints `eps(i)`.
pub(crate) fn full_ruleset_with(services: usize, eps: &dyn Fn(usize) -> Vec<Ipv4Addr>) -> String {
    let mut out = String::with_capacity(services * 2_000);
    base(&mut out);
    let mut elements = Vec::with_capacity(services);
    for i in 0..services {
        service(i, &eps(i), &mut out);
        elements.push(format!(
            "{} . tcp . {SERVICE_PORT} : goto {}",
            vip(i),
            service_chain(i)
        ));
    }
    // Map elements in batches, as one very long line is slow to parse.
    for batch in elements.chunks(1_000) {
        let _ = writeln!(
            out,
            "add element {TABLE} service-ips {{ {} }}",
            batch.join(" , ")
        );
    }
    out
}

/// The partial sync after Service `i`'s endpoints went from `before` to
/// `after`: its chains rewritten, the chains of endpoints that left
/// flushed and deleted (nothing refers to them once the service chain is
/// rewritten). The `service-ips` element is unchanged.
fn partial(i: usize, before: &[Ipv4Addr], after: &[Ipv4Addr]) -> String {
    let mut out = String::new();
    service(i, after, &mut out);
    for gone in before.iter().filter(|ep| !after.contains(ep)) {
        let chain = endpoint_chain(i, *gone);
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
        let _ = writeln!(out, "delete chain {TABLE} {chain}");
    }
    out
}

pub(super) struct NftFigures {
    pub(super) rules: usize,
    pub(super) full_load: Duration,
    pub(super) partial: Vec<Duration>,
    pub(super) partial_bytes: usize,
}

/// The full sync, then `changes` partial syncs, each one `nft -f`
/// transaction in a namespace of its own.
pub(super) fn measure(services: usize, changes: usize) -> Result<NftFigures> {
    let ns = NetNs::new("kproxy-nft")?;
    let path = ns.path();
    let full = full_ruleset(services);
    let rules = full.lines().filter(|l| l.starts_with("add rule ")).count();
    let full_load = restore(&path, "nft", &["-f", "-"], full.as_bytes())?;
    eprintln!(
        "  nft: full sync of {rules} rules and {services} map elements: {:.1} ms",
        ms(full_load)
    );
    let mut done: Vec<(usize, Ipv4Addr)> = Vec::new();
    let mut partials = Vec::with_capacity(changes);
    let mut partial_bytes = 0;
    for k in 0..changes {
        let i = changed_service(k, services);
        let before = endpoints_after(i, &done);
        done.push((i, changed_endpoint(k)));
        let after = endpoints_after(i, &done);
        let input = partial(i, &before, &after);
        partial_bytes = input.len();
        partials.push(restore(&path, "nft", &["-f", "-"], input.as_bytes())?);
    }
    // The last change is in the kernel's ruleset and the stale chain gone.
    if let Some(&(i, addr)) = done.last() {
        let chain = ns.output(
            "nft",
            &["list", "chain", "ip", "kube-proxy", &service_chain(i)],
        )?;
        if !chain.contains(&endpoint_chain(i, addr)) {
            bail!("nft: the last partial sync is not in the ruleset:\n{chain}");
        }
        let table = ns.output("nft", &["list", "chains", "ip"])?;
        let chains = table.matches("chain endpoint-").count();
        if chains != services * ENDPOINTS {
            bail!(
                "nft: {chains} endpoint chains after the syncs, not {}",
                services * ENDPOINTS
            );
        }
    }
    Ok(NftFigures {
        rules,
        full_load,
        partial: partials,
        partial_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_sync_rewrites_one_service_and_drops_the_stale_endpoint() {
        let before: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(3, e)).collect();
        let mut after = before.clone();
        after[0] = changed_endpoint(0);
        let p = partial(3, &before, &after);
        assert_eq!(p.matches("dnat to").count(), ENDPOINTS);
        assert!(p.contains(&format!(
            "delete chain {TABLE} {}",
            endpoint_chain(3, before[0])
        )));
        assert!(p.contains(&format!("numgen random mod {ENDPOINTS} vmap")));
        assert!(!p.contains("service-ips"));
        assert!(!p.contains(&service_chain(4)));
        let full = full_ruleset(3);
        assert_eq!(full.matches("dnat to").count(), 3 * ENDPOINTS);
        assert_eq!(full.matches(" : goto service-").count(), 3);
        assert!(
            service_chain(1).starts_with("service-") && service_chain(1).ends_with("/tcp/http")
        );
    }
}
