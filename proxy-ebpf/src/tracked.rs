//! Packets of tracked flows: the one sequence every hook runs for a packet
//! whose CT entry it found (account it, rewrite it by the entry, refresh or
//! recreate the partner entry, count it, send it on).

use aya_ebpf::programs::TcContext;
use proxy_common::{CtEntry, ct::CT_DIR_REPLY, reason};

use crate::packet::Packet;
use crate::{
    conntrack::{self, Table},
    maps::{SvcDelta, count_service},
    nat, service,
    verdict::Verdict,
};

/// Translates a packet of a tracked flow by its entry `entry` (keyed under
/// `own_dir`: the client's direction, or `CT_DIR_REPLY`), refreshes the
/// partner under `partner_dir`, and forwards it counted as `counted`.
#[inline(always)]
pub fn translate<C: Table>(
    ctx: &TcContext,
    pkt: &mut Packet,
    entry: *mut CtEntry,
    own_dir: u8,
    partner_dir: u8,
    counted: u32,
    now: u32,
) -> Verdict {
    let before = conntrack::key(pkt, own_dir);
    let len = pkt.len;
    let new_bits = conntrack::observe(entry, pkt, now, own_dir != CT_DIR_REPLY);
    // SAFETY: pointer to a live map value; copied so later map updates
    // cannot change the rewrite half-way.
    let e = unsafe { *entry };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    conntrack::sync_partner::<C>(entry, &before, pkt, partner_dir, new_bits, now);
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: false,
            refused: false,
        },
    );
    service::forward(ctx, pkt, &e, counted)
}

/// A packet that may be a reply of a tracked flow: translated by its reply
/// entry and counted as `counted`; without one it gets `miss`, and when the
/// entry is dead (removed now) `stale`.
#[inline(always)]
pub fn reply<C: Table>(
    ctx: &TcContext,
    pkt: &mut Packet,
    partner_dir: u8,
    counted: u32,
    miss: Verdict,
    stale: Verdict,
) -> Verdict {
    let Some(entry) = C::get(&conntrack::key(pkt, CT_DIR_REPLY)) else {
        return miss;
    };
    reverse::<C>(ctx, pkt, entry, partner_dir, counted).unwrap_or(stale)
}

/// Translates a reply of a tracked flow by its reply entry (see
/// [`translate`]). `None` when the entry is dead: it is removed, and the
/// caller treats the packet as untracked.
#[inline(always)]
pub fn reverse<C: Table>(
    ctx: &TcContext,
    pkt: &mut Packet,
    entry: *mut CtEntry,
    partner_dir: u8,
    counted: u32,
) -> Option<Verdict> {
    let now = conntrack::now();
    // SAFETY: pointer to a live map value, copied.
    let current = unsafe { *entry };
    if conntrack::reply_is_stale(&current, pkt, now) {
        conntrack::retire::<C>(&conntrack::key(pkt, CT_DIR_REPLY), &current);
        return None;
    }
    if let Some(r) = service::untranslatable(pkt) {
        return Some(Verdict::drop(r));
    }
    Some(translate::<C>(
        ctx,
        pkt,
        entry,
        CT_DIR_REPLY,
        partner_dir,
        counted,
        now,
    ))
}
