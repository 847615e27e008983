//! The HTTP endpoints: /metrics, /healthz, /readyz, /livez.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use proxy_common::{names, reason, stats::write_error};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use super::{
    Telemetry, healthy, healthz_body,
    render::{CONTENT_TYPE, DatapathCounters, render},
};
use crate::{
    conntrack::{CtClass, class_stats},
    datapath::{Capacities, PinnedMaps},
};

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// /metrics and the health endpoints (kube-proxy's metrics port).
    All,
    /// Only the health endpoints (kube-proxy's healthz port, which load
    /// balancers and probes may reach from outside the node).
    Health,
}

#[derive(Clone)]
struct Ctx {
    telemetry: Telemetry,
    maps: Arc<Mutex<PinnedMaps>>,
    capacities: Capacities,
    endpoints: Endpoints,
}

/// Binds `addr` and serves until the task is dropped/aborted.
pub async fn spawn(
    addr: SocketAddr,
    endpoints: Endpoints,
    telemetry: Telemetry,
    maps: Arc<Mutex<PinnedMaps>>,
    capacities: Capacities,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(address = %addr, ?endpoints, "telemetry endpoints listening");
    let ctx = Ctx {
        telemetry,
        maps,
        capacities,
        endpoints,
    };
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "accepting a telemetry connection failed");
                    continue;
                }
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(&ctx, &req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert("Content-Type", v);
    }
    if let Ok(v) = "nosniff".parse() {
        h.insert("X-Content-Type-Options", v);
    }
    resp
}

async fn handle(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let now = Instant::now();
    match (req.uri().path(), ctx.endpoints) {
        ("/metrics", Endpoints::All) => {
            let (maps, caps) = (ctx.maps.clone(), ctx.capacities);
            let telemetry = ctx.telemetry.clone();
            // Map reads are syscalls: off the control loop's thread.
            let body = tokio::task::spawn_blocking(move || {
                let ids: Vec<u32> = telemetry.read(|s| s.frontend_names.keys().copied().collect());
                let counters = read_counters(&maps, &ids, caps, &telemetry);
                telemetry.read(|s| render(s, &counters))
            })
            .await;
            match body {
                Ok(b) => reply(StatusCode::OK, CONTENT_TYPE, b),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("reading the datapath counters failed: {e}\n"),
                ),
            }
        }
        ("/healthz", _) => {
            let (ok, body) = ctx
                .telemetry
                .read(|s| (healthy(s, now), healthz_body(s, SystemTime::now())));
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        ("/readyz", _) => {
            let (ready, ok) = ctx.telemetry.read(|s| (s.ready, healthy(s, now)));
            match (ready, ok) {
                (true, true) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
                (false, _) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: the first complete view is not programmed yet\n".into(),
                ),
                (true, false) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: a change has waited too long to be programmed\n".into(),
                ),
            }
        }
        ("/livez", _) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Per-CPU counters summed; unreadable entries are left out (a scrape
/// never fails because one lookup did).
fn read_counters(
    maps: &Mutex<PinnedMaps>,
    ids: &[u32],
    caps: Capacities,
    telemetry: &Telemetry,
) -> DatapathCounters {
    let maps = maps.lock().unwrap_or_else(|e| e.into_inner());
    let reasons = (0..reason::MAX)
        .filter_map(|code| {
            let sum = maps.reason_total(code).ok()?;
            (sum.packets > 0).then_some((code, sum))
        })
        .collect();
    let services = ids
        .iter()
        .filter_map(|id| Some((*id, maps.service_total(*id).ok()?)))
        .collect();
    let (svc_entries, backends, any_entries) = telemetry.read(|s| {
        (
            s.service_entries as u64,
            s.backends as u64,
            s.ct_sweeps.get(names::MAP_CT_ANY).map(|g| g.entries),
        )
    });
    let cap = |name| u64::from(caps.of(name));
    let conntrack: Vec<_> = CtClass::ALL
        .iter()
        .filter_map(|c| Some((c.map_name(), class_stats(&maps, *c).ok()?)))
        .collect();
    // Nothing evicts from the TCP map: its counters are its size.
    let tcp_entries = conntrack
        .iter()
        .find(|(m, _)| *m == names::MAP_CT_TCP)
        .map(|(_, c)| c.accounted());
    let write_errors = (0..write_error::MAX)
        .filter_map(|i| Some((write_error::name(i)?, maps.write_errors_total(i).ok()?)))
        .collect();
    DatapathCounters {
        reasons,
        services,
        conntrack,
        write_errors,
        maps: vec![
            (
                names::MAP_SERVICES,
                Some(svc_entries),
                cap(names::MAP_SERVICES),
            ),
            (
                names::MAP_BACKENDS,
                Some(backends),
                cap(names::MAP_BACKENDS),
            ),
            (
                names::MAP_SVC_STATS,
                Some(ids.len() as u64),
                cap(names::MAP_SVC_STATS),
            ),
            (names::MAP_CT_TCP, tcp_entries, cap(names::MAP_CT_TCP)),
            (names::MAP_CT_ANY, any_entries, cap(names::MAP_CT_ANY)),
            (names::MAP_AFFINITY, None, cap(names::MAP_AFFINITY)),
            (
                names::MAP_SOURCE_RANGES,
                None,
                cap(names::MAP_SOURCE_RANGES),
            ),
            (names::MAP_MAGLEV, None, cap(names::MAP_MAGLEV)),
            (names::MAP_FRAG, None, cap(names::MAP_FRAG)),
        ],
    }
}
