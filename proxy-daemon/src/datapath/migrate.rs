//! Carrying connection-tracking state across a map layout change.
//!
//! A release that changes a map's layout pins the new map under a new name
//! (see `proxy_common::names`). For connection tracking that alone would
//! reset every tracked connection of the node at the upgrade: the replies
//! of Service connections would leave untranslated and masqueraded flows
//! would lose their ports. So when the daemon finds the pin of an older CT
//! layout it knows, it copies the live entries into the new maps (before
//! its programs replace the old ones), copies again what the old programs
//! created or refreshed in the meantime (after), and only then lets the old
//! pin be retired. A pin it does not know is reported and left alone.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapType};
use proxy_common::{
    CtEntry, CtKey,
    ct::{CT_F_ASSURED, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT, CT_F_REPLY_SEEN, CT_F_RST},
    names, proto,
};

use super::{DatapathError, PinnedMaps, map_path, open_pinned};
use crate::conntrack::{insert_migrated, monotonic_secs};

/// The CT map of releases before the split by protocol.
pub struct LegacyCt {
    map: HashMap<MapData, CtKey, CtEntry>,
}

/// What is under the legacy CT pin.
pub enum Legacy {
    /// Nothing: a fresh node, or already migrated.
    None,
    /// A layout this release does not know: reported, left alone.
    Unknown(String),
    Found(LegacyCt),
}

/// What one copy pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Live entries read from the old map.
    pub live: usize,
    /// Entries the new maps did not have.
    pub created: usize,
    /// Dead entries left behind.
    pub expired: usize,
}

/// Looks for the legacy CT pin and checks its layout.
pub fn find_legacy_ct(bpffs: &Path) -> Result<Legacy, DatapathError> {
    let name = names::LEGACY_MAP_CT_V1;
    if !map_path(bpffs, name).exists() {
        return Ok(Legacy::None);
    }
    let data = open_pinned(bpffs, name)?;
    let info = data
        .info()
        .map_err(|source| DatapathError::Map { name, source })?;
    let kind = info.map_type();
    let known = matches!(kind, Ok(MapType::LruHash))
        && info.key_size() as usize == size_of::<CtKey>()
        && info.value_size() as usize == size_of::<CtEntry>();
    if !known {
        return Ok(Legacy::Unknown(format!(
            "{name}: {:?} key {} value {}, expected LruHash key {} value {}",
            kind.ok(),
            info.key_size(),
            info.value_size(),
            size_of::<CtKey>(),
            size_of::<CtEntry>()
        )));
    }
    let map = Map::from_map_data(data)
        .and_then(HashMap::try_from)
        .map_err(|source| DatapathError::Map { name, source })?;
    Ok(Legacy::Found(LegacyCt { map }))
}

impl LegacyCt {
    /// Copies every live entry into the new maps. Entries the new maps
    /// already hold keep their state, refreshed if the old one is fresher,
    /// so the pass can run again after the new programs took over.
    pub fn copy_into(&self, maps: &mut PinnedMaps) -> Result<Copied, DatapathError> {
        let now = monotonic_secs();
        let mut out = Copied::default();
        let mut batch = Vec::new();
        for item in self.map.iter() {
            let Ok((k, e)) = item else {
                continue;
            };
            if e.expired(k.proto, now) {
                out.expired += 1;
                continue;
            }
            batch.push((k, upgrade_v1(&k, &e)));
        }
        out.live = batch.len();
        out.created = insert_migrated(maps, &batch)?;
        Ok(out)
    }
}

/// A v1 entry in today's layout. The bytes are the same; v1 had no
/// `CT_F_ASSURED` and gave every answered TCP connection the established
/// lifetime, which is kept: an answered, open v1 connection is assured.
pub fn upgrade_v1(key: &CtKey, e: &CtEntry) -> CtEntry {
    let mut out = *e;
    let closing = e.flags & (CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST) != 0;
    if key.proto == proto::TCP && e.flags & CT_F_REPLY_SEEN != 0 && !closing {
        out.flags |= CT_F_ASSURED;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::ct::{CT_DIR_SERVICE, CT_F_REWRITE_DST, lifetime};

    fn key(protocol: u8) -> CtKey {
        CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: protocol,
            dir: CT_DIR_SERVICE,
            _pad: [0; 2],
        }
    }

    #[test]
    fn answered_v1_tcp_keeps_its_established_lifetime() {
        let e = CtEntry {
            flags: CT_F_REWRITE_DST | CT_F_REPLY_SEEN,
            new_daddr: 9,
            packets: 5,
            ..Default::default()
        };
        let up = upgrade_v1(&key(proto::TCP), &e);
        assert_eq!(up.flags, e.flags | CT_F_ASSURED);
        assert_eq!(
            lifetime(proto::TCP, up.flags),
            proxy_common::ct::CT_LIFETIME_TCP_ESTABLISHED
        );
        // Everything else is carried byte for byte.
        assert_eq!(
            CtEntry {
                flags: e.flags,
                ..up
            },
            e
        );
    }

    #[test]
    fn other_v1_entries_are_carried_as_they_are() {
        for (protocol, flags) in [
            (proto::TCP, CT_F_REWRITE_DST),
            (proto::TCP, CT_F_REPLY_SEEN | CT_F_FIN_CLIENT),
            (proto::TCP, CT_F_REPLY_SEEN | CT_F_RST),
            (proto::UDP, CT_F_REPLY_SEEN),
        ] {
            let e = CtEntry {
                flags,
                ..Default::default()
            };
            assert_eq!(upgrade_v1(&key(protocol), &e), e, "{protocol} {flags:#x}");
        }
    }
}
