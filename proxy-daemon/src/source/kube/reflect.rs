//! One kind's watcher, run for as long as the mirror listens.

use ::kube::{
    Api, Client,
    runtime::watcher::{self, Event},
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{Change, KubeSourceConfig, backoff::Backoff};

/// Whether kube-rs would retry this failure forever without relisting: it
/// restarts a watch from the same resourceVersion after any failure to
/// start one, so a server that answers a too-old version with an HTTP 410
/// (rather than the usual ERROR event inside a 200 stream) would never let
/// it recover. Such a watcher is replaced by a fresh one, which relists.
pub(super) fn needs_fresh_watcher(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchStartFailed(::kube::Error::Api(s)) if s.code == 410)
}

/// Runs one kind's watcher for as long as the mirror listens, with backoff
/// and logging; every event goes to the mirror. After a failure the watch
/// is retried only once the API server answers a cheap probe, so an outage
/// costs it no lists; `reachable` is shared by the kinds, and the first to
/// see the server answer wakes the others out of their backoff.
pub(super) async fn reflect<K>(
    api: Api<K>,
    kind: &'static str,
    cfg: KubeSourceConfig,
    tx: mpsc::Sender<Change>,
    wrap: fn(Event<K>) -> Change,
    reachable: Arc<Notify>,
) where
    K: ::kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Bookmarks keep the resourceVersion of a quiet kind fresh, so that a
    // reconnect resumes instead of relisting.
    let wcfg = watcher::Config::default().page_size(cfg.page_size);
    let client = Client::from(api.clone());
    let mut backoff = Backoff::new(&cfg);
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u64;
    let mut listed = 0usize;
    let mut synced_once = false;
    loop {
        let mut stream = watcher::watcher(api.clone(), wcfg.clone()).boxed();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = tx.closed() => return,
            };
            // The stream never ends by itself; if it did, start a new one.
            let Some(item) = item else { break };
            match item {
                Ok(event) => {
                    // kube-runtime emits `Init` before it sends the list
                    // request, so it proves nothing about the server; any
                    // other event came from a request that succeeded and
                    // lets the backoff start over.
                    let answered = !matches!(event, Event::Init);
                    if answered {
                        backoff.reset();
                    }
                    match &event {
                        Event::Init => {
                            listed = 0;
                            if synced_once {
                                info!(
                                    kind,
                                    "relisting (watch expired or restarted); the published view stays until the list is complete"
                                );
                            } else {
                                debug!(kind, "listing");
                            }
                        }
                        Event::InitApply(_) => listed += 1,
                        Event::InitDone => {
                            info!(
                                kind,
                                objects = listed,
                                relist = synced_once,
                                "list complete"
                            );
                            synced_once = true;
                        }
                        Event::Apply(_) | Event::Delete(_) => {}
                    }
                    if tx.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    failures += 1;
                    failing_since.get_or_insert_with(Instant::now);
                    let fresh = needs_fresh_watcher(&err);
                    let delay = backoff.delay(Instant::now());
                    warn!(
                        kind,
                        error = %err,
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        relist = fresh,
                        "API watch failed; the datapath keeps its last state"
                    );
                    let Some(()) = wait_for_server(
                        &client,
                        kind,
                        &reachable,
                        &mut backoff,
                        delay,
                        &mut failures,
                        &tx,
                    )
                    .await
                    else {
                        return;
                    };
                    if let Some(since) = failing_since.take() {
                        info!(
                            kind,
                            failures,
                            down_ms = since.elapsed().as_millis() as u64,
                            "API server reachable again; watch resumed"
                        );
                        failures = 0;
                    }
                    // The others may be sleeping out a long delay; the
                    // outage is over for them too.
                    reachable.notify_waiters();
                    if fresh {
                        break;
                    }
                }
            }
        }
    }
}

/// How long the reachability probe may take: a server that drops packets
/// instead of refusing them must not hold a kind for the client's own
/// (minutes-long) timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sleeps out `delay` (or until another kind saw the server answer), then
/// probes `/version` until it answers, backing off between probes. `None`
/// when the mirror stopped listening.
async fn wait_for_server(
    client: &Client,
    kind: &'static str,
    reachable: &Notify,
    backoff: &mut Backoff,
    mut delay: Duration,
    failures: &mut u64,
    tx: &mpsc::Sender<Change>,
) -> Option<()> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = reachable.notified() => {
                debug!(kind, "another watch reached the API server; probing now");
            }
            () = tx.closed() => return None,
        }
        let error = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => return Some(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        };
        *failures += 1;
        delay = backoff.delay(Instant::now());
        warn!(
            kind,
            error,
            attempt = *failures,
            retry_in_ms = delay.as_millis() as u64,
            "API server still unreachable; the datapath keeps its last state"
        );
    }
}
