//! healthCheckNodePort servers, as kube-proxy runs them.
//!
//! A LoadBalancer Service with externalTrafficPolicy Local asks the cloud
//! load balancer to probe each node on its healthCheckNodePort and send
//! traffic only to nodes that have local endpoints. The answer is
//! kube-proxy's: HTTP 200 with a small JSON document when the node has
//! local endpoints, 503 when it has none.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    model::{DesiredState, Scope},
    telemetry::Telemetry,
};

/// What one health check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Endpoints of the Service on this node.
    pub local_endpoints: usize,
}

/// The health checks `desired` asks for, by port: one per Service, with
/// the number of its distinct node-local endpoints.
pub fn health_checks(desired: &DesiredState) -> BTreeMap<u16, HealthCheck> {
    let mut out: BTreeMap<u16, (HealthCheck, std::collections::BTreeSet<Ipv4Addr>)> =
        BTreeMap::new();
    for fe in desired.frontends.values() {
        let Some(port) = fe.health_check_node_port else {
            continue;
        };
        if fe.key.scope != Scope::External {
            continue;
        }
        let entry = out.entry(port).or_insert_with(|| {
            (
                HealthCheck {
                    namespace: fe.service.namespace.clone(),
                    name: fe.service.name.clone(),
                    local_endpoints: 0,
                },
                Default::default(),
            )
        });
        entry
            .1
            .extend(fe.backends.iter().filter(|b| b.local).map(|b| b.addr));
    }
    out.into_iter()
        .map(|(port, (mut hc, addrs))| {
            hc.local_endpoints = addrs.len();
            (port, hc)
        })
        .collect()
}

/// The response kube-proxy gives: status, then body.
pub fn respond(hc: &HealthCheck, proxy_healthy: bool) -> (StatusCode, String) {
    let status = if hc.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": { "namespace": hc.namespace, "name": hc.name },
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    (
        status,
        serde_json::to_string_pretty(&body).expect("JSON value"),
    )
}

type Shared = Arc<RwLock<BTreeMap<u16, HealthCheck>>>;

/// The running health check servers of this node.
#[derive(Default)]
pub struct HealthServers {
    state: Shared,
    servers: BTreeMap<u16, JoinHandle<()>>,
    /// The daemon's own health, reported as serviceProxyHealthy (a node
    /// whose proxy is stuck should get no new load-balancer traffic).
    proxy: Option<Telemetry>,
}

impl HealthServers {
    pub fn set_proxy_health(&mut self, telemetry: Telemetry) {
        self.proxy = Some(telemetry);
    }

    /// Starts servers for new ports, stops those no longer wanted, and
    /// updates what every port reports.
    /// Some wanted port could not be opened yet (the next sync retries).
    pub fn incomplete(&self) -> bool {
        let wanted = self.state.read().unwrap_or_else(|e| e.into_inner());
        wanted.keys().any(|port| !self.servers.contains_key(port))
    }

    pub async fn sync(&mut self, wanted: BTreeMap<u16, HealthCheck>) {
        let ports: Vec<u16> = wanted.keys().copied().collect();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = wanted;
        self.servers.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
                info!(port, "health check port closed");
            }
            keep
        });
        for port in ports {
            if self.servers.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
                Ok(listener) => {
                    info!(port, "health check port open");
                    self.servers.insert(
                        port,
                        tokio::spawn(serve(
                            listener,
                            port,
                            self.state.clone(),
                            self.proxy.clone(),
                        )),
                    );
                }
                // Retried on the next sync.
                Err(e) => warn!(port, error = %e, "cannot open the health check port"),
            }
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.servers.values() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, port: u16, state: Shared, proxy: Option<Telemetry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, proxy) = (state.clone(), proxy.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let proxy_healthy = proxy.as_ref().is_none_or(|t| {
                    t.read(|s| crate::telemetry::healthy(s, std::time::Instant::now()))
                });
                let answer = state
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&port)
                    .map(|hc| respond(hc, proxy_healthy));
                async move {
                    let (status, body) =
                        answer.unwrap_or((StatusCode::SERVICE_UNAVAILABLE, "{}".to_string()));
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    let h = resp.headers_mut();
                    h.insert("Content-Type", "application/json".parse().expect("header"));
                    h.insert("X-Content-Type-Options", "nosniff".parse().expect("header"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendAddr, Frontend, FrontendKey, FrontendKind, Protocol, ServiceRef};

    fn fe(scope: Scope, port: u16, backends: &[(&str, bool)]) -> Frontend {
        Frontend {
            key: FrontendKey {
                addr: "192.0.2.1".parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
                scope,
            },
            kind: FrontendKind::LoadBalancer,
            service: ServiceRef {
                namespace: "shop".into(),
                name: "web".into(),
                port_name: "".into(),
            },
            backends: backends
                .iter()
                .map(|(a, local)| BackendAddr {
                    addr: a.parse().unwrap(),
                    port: 8080,
                    local: *local,
                    terminating: false,
                })
                .collect(),
            local_only: true,
            drop_when_empty: false,
            affinity_timeout: None,
            snat_remote: false,
            source_ranges: vec![],
            health_check_node_port: Some(32000),
            lb_algorithm: None,
        }
    }

    #[test]
    fn one_check_per_service_counting_distinct_local_endpoints() {
        let mut d = DesiredState::default();
        for f in [
            fe(
                Scope::External,
                80,
                &[("10.1.0.1", true), ("10.1.0.2", true)],
            ),
            fe(Scope::External, 443, &[("10.1.0.1", true)]),
            // The in-cluster entry has every endpoint: not what the LB asks.
            fe(
                Scope::Internal,
                80,
                &[("10.1.0.1", true), ("10.2.0.1", false)],
            ),
        ] {
            d.frontends.insert(f.key, f.into());
        }
        let checks = health_checks(&d);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[&32000].local_endpoints, 2);
    }

    #[test]
    fn answers_like_kube_proxy() {
        let hc = HealthCheck {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let (status, body) = respond(&hc, true);
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "service": {"namespace": "shop", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": true
            })
        );
        let none = HealthCheck {
            local_endpoints: 0,
            ..hc
        };
        assert_eq!(respond(&none, true).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
