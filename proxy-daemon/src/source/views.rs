//! Publishing immutable views of a source's live state, cheaply.
//!
//! Publishing a view of 10k Services by cloning every map costs about as
//! much as the daemon's whole recomputation of a change (and dropping it
//! again as much), so views are recycled: a published copy that nobody
//! holds any more is brought up to date with the objects changed since (a
//! journal of touched keys) and published again. Each view is numbered and
//! says what changed since the one before ([`ViewDelta`]), so the model
//! need not compare every key either.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
};

use crate::model::{ClusterState, ObjectKey, ViewDelta};

/// What a change touched, to bring an older copy of the view up to date.
#[derive(Clone, Debug)]
pub(crate) enum Touched<K> {
    Key(K),
    All,
}

#[derive(Clone, Debug)]
pub(crate) enum Dirty {
    Service(Touched<ObjectKey>),
    EndpointSlice(Touched<ObjectKey>),
    Endpoints(Touched<ObjectKey>),
    Node(Touched<String>),
}

/// Published views kept for reuse. Three suffice: when view N is
/// published, N-3 is normally held by nobody any more (the channel holds
/// N-1 and the daemon keeps the view it last applied, N-2, to tell what the
/// next one changed). A view costs its map nodes only; the objects are
/// shared.
pub(crate) const KEPT_VIEWS: usize = 3;

/// The journal and the views published from one live state.
#[derive(Debug, Default)]
pub(crate) struct Views {
    /// What changed in the live state, from the oldest kept view on.
    pub(crate) journal: Vec<Dirty>,
    /// Journal position of `journal[0]`.
    journal_base: u64,
    /// Views published lately, each with the journal position it matches.
    kept: VecDeque<(Arc<ClusterState>, u64)>,
    /// Views published by bringing an old one up to date.
    pub(crate) recycled: u64,
    /// The last view published: its id and journal position.
    last: Option<(u64, u64)>,
}

impl Views {
    /// Records that the live state changed.
    pub(crate) fn note(&mut self, dirty: Dirty) {
        self.journal.push(dirty);
    }

    /// `live` as an immutable snapshot: a recycled earlier view brought up
    /// to date when one is free, a copy otherwise.
    pub(crate) fn publish(&mut self, live: &ClusterState) -> Arc<ClusterState> {
        let end = self.journal_base + self.journal.len() as u64;
        let free = self
            .kept
            .iter()
            .position(|(v, _)| Arc::strong_count(v) == 1)
            .and_then(|i| self.kept.remove(i));
        let mut state = match free.map(|(v, at)| (Arc::try_unwrap(v), at)) {
            Some((Ok(mut old), at)) => {
                self.recycled += 1;
                for d in self.since(at) {
                    replay(&mut old, live, d);
                }
                old
            }
            // No free view (or, impossibly, one that was shared after all).
            _ => live.clone(),
        };
        let id = self.last.map_or(1, |(id, _)| id + 1);
        state.id = id;
        state.delta = self.last.map(|(from, at)| delta(from, self.since(at)));
        self.last = Some((id, end));
        let view = Arc::new(state);
        self.kept.push_back((view.clone(), end));
        while self.kept.len() > KEPT_VIEWS {
            self.kept.pop_front();
        }
        // The journal is needed back to the oldest kept view only.
        let keep_from = self.kept.front().map_or(end, |(_, at)| *at);
        let drained = usize::try_from(keep_from - self.journal_base).unwrap_or(0);
        self.journal.drain(..drained.min(self.journal.len()));
        self.journal_base = keep_from;
        view
    }

    /// The journal from position `at` on.
    fn since(&self, at: u64) -> &[Dirty] {
        let from = usize::try_from(at - self.journal_base).unwrap_or(usize::MAX);
        self.journal.get(from..).unwrap_or_default()
    }
}

/// What the journal entries `since` the view `from` changed.
fn delta(from: u64, since: &[Dirty]) -> ViewDelta {
    let mut d = ViewDelta {
        from,
        services: Some(BTreeSet::new()),
        endpoint_slices: Some(BTreeSet::new()),
        endpoints: Some(BTreeSet::new()),
    };
    fn note(keys: &mut Option<BTreeSet<ObjectKey>>, touched: &Touched<ObjectKey>) {
        match (keys.as_mut(), touched) {
            (Some(keys), Touched::Key(k)) => {
                keys.insert(k.clone());
            }
            _ => *keys = None,
        }
    }
    for dirty in since {
        match dirty {
            Dirty::Service(t) => note(&mut d.services, t),
            Dirty::EndpointSlice(t) => note(&mut d.endpoint_slices, t),
            Dirty::Endpoints(t) => note(&mut d.endpoints, t),
            Dirty::Node(_) => {}
        }
    }
    d
}

/// Makes `dst` agree with `src` on what `dirty` touched.
pub(crate) fn replay(dst: &mut ClusterState, src: &ClusterState, dirty: &Dirty) {
    fn one<K: Ord + Clone, T: Clone>(
        dst: &mut BTreeMap<K, T>,
        src: &BTreeMap<K, T>,
        touched: &Touched<K>,
    ) {
        match touched {
            Touched::All => dst.clone_from(src),
            Touched::Key(k) => match src.get(k) {
                Some(v) => {
                    dst.insert(k.clone(), v.clone());
                }
                None => {
                    dst.remove(k);
                }
            },
        }
    }
    match dirty {
        Dirty::Service(t) => one(&mut dst.services, &src.services, t),
        Dirty::EndpointSlice(t) => one(&mut dst.endpoint_slices, &src.endpoint_slices, t),
        Dirty::Endpoints(t) => one(&mut dst.endpoints, &src.endpoints, t),
        Dirty::Node(t) => one(&mut dst.nodes, &src.nodes, t),
    }
}
