use proxy_common::{ct, names, reason, service, socket};

/// Entry capacities of the maps whose size an operator may choose.
///
/// A pinned map keeps the capacity it was created with; a daemon started
/// with a different one refuses to run rather than silently using the old
/// size (see [`crate::datapath::Loader::load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Frontends plus backend slots.
    pub service_entries: u32,
    pub backends: u32,
    /// Distinct frontend ids (also the size of the per-service counters).
    pub service_ids: u32,
    /// TCP connection tracking (two entries per connection).
    pub ct_tcp_entries: u32,
    /// UDP and ICMP connection tracking (two entries per flow).
    pub ct_any_entries: u32,
    pub frag_entries: u32,
    pub affinity_entries: u32,
    pub source_ranges: u32,
    pub maglev_tables: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            service_entries: service::DEFAULT_MAX_SERVICE_ENTRIES,
            backends: service::DEFAULT_MAX_BACKENDS,
            service_ids: service::DEFAULT_MAX_SERVICE_IDS,
            ct_tcp_entries: ct::DEFAULT_MAX_CT_TCP_ENTRIES,
            ct_any_entries: ct::DEFAULT_MAX_CT_ANY_ENTRIES,
            frag_entries: ct::DEFAULT_MAX_FRAG_ENTRIES,
            affinity_entries: service::DEFAULT_MAX_AFFINITY_ENTRIES,
            source_ranges: service::DEFAULT_MAX_SOURCE_RANGES,
            maglev_tables: service::DEFAULT_MAX_MAGLEV_TABLES,
        }
    }
}

impl Capacities {
    /// The configured `max_entries` of a pinned map.
    pub fn of(&self, map: &str) -> u32 {
        match map {
            names::MAP_SERVICES => self.service_entries,
            names::MAP_BACKENDS => self.backends,
            names::MAP_SVC_STATS => self.service_ids,
            names::MAP_CT_TCP => self.ct_tcp_entries,
            names::MAP_CT_ANY => self.ct_any_entries,
            names::MAP_CT_STATS => ct::CT_STATS_ROWS,
            names::MAP_WRITE_ERRORS => proxy_common::stats::write_error::MAX,
            names::MAP_FRAG => self.frag_entries,
            names::MAP_REASONS => reason::MAX,
            names::MAP_CONFIG => 1,
            names::MAP_AFFINITY => self.affinity_entries,
            names::MAP_SOURCE_RANGES => self.source_ranges,
            names::MAP_MAGLEV => self.maglev_tables,
            names::MAP_LOCAL_ENDPOINTS => proxy_common::endpoint::DEFAULT_MAX_LOCAL_ENDPOINTS,
            names::MAP_SOCK_CONFIG => 1,
            names::MAP_SOCK_REV => socket::DEFAULT_MAX_SOCK_REV_ENTRIES,
            names::MAP_SOCK_AFFINITY => socket::DEFAULT_MAX_SOCK_AFFINITY_ENTRIES,
            names::MAP_NODE_ADDRS => socket::DEFAULT_MAX_NODE_ADDRS,
            other => unreachable!("unknown map {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_capacity() {
        let c = Capacities::default();
        for m in names::ALL_MAPS {
            assert!(c.of(m) > 0, "{m}");
        }
    }
}
