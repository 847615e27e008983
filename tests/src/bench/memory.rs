//! `cargo xtask bench memory`: where sluiced's memory goes, per component,
//! measured in this process by counting live heap bytes (the bench binary
//! installs [`CountingAlloc`]) while the daemon's own code builds each
//! part from objects shaped as a real cluster writes them:
//!
//! - objects as stored: Services and EndpointSlices (ten endpoints each,
//!   with the target refs, owner references, uids and zones the
//!   EndpointSlice controller writes) parsed as the API client does, then
//!   converted as the API source keeps them; the k8s-openapi objects
//!   untouched, for comparison;
//! - the model: the incremental model's caches and desired state after
//!   the first full computation;
//! - writer state: the planner's ids, planned backends and use counts, and
//!   the shadow of map contents after the first plan is recorded.
//!
//! Not counted: kernel map memory (the control-plane bench reads it), the
//! binary's pages, the API client's transient buffers, the Maglev tables of
//! external frontends (none here: ClusterIP Services use random selection
//! by default).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{ENDPOINTS, endpoint, vip};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};
use sluice::{
    model::{
        ClusterState, IncrementalModel, KubeObject, NodeContext, ObjectKey, ServiceInfo, Slice,
    },
    writer::{
        IdAllocator, PlanOptions, Touch,
        plan::{MapContents, Planner},
    },
};

/// Live heap bytes, when the binary's global allocator is [`CountingAlloc`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const UID: &str = "0b5c6a3e-8d0f-4a47-9f5e-1f2d3c4b5a69";

/// A Service as the API server returns it.
fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "shop", "uid": UID,
            "resourceVersion": "123456", "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {"app": format!("svc-{i}"), "team": "shop"}},
        "spec": {"type": "ClusterIP", "clusterIP": vip(i).to_string(), "clusterIPs": [vip(i).to_string()],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None", "selector": {"app": format!("svc-{i}")},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}}
    })
}

/// An EndpointSlice as the EndpointSlice controller writes it.
fn slice(i: usize) -> Value {
    let eps: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            json!({"addresses": [endpoint(i, e).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", (i + e) % 50), "zone": "zone-a",
                "targetRef": {"kind": "Pod", "namespace": "shop",
                    "name": format!("svc-{i}-7d4b9c8f6d-x{e}k2p"), "uid": UID}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "generateName": format!("svc-{i}-"),
            "namespace": "shop", "uid": UID, "resourceVersion": "123456", "generation": 3,
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app": format!("svc-{i}")},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{i}"),
                "uid": UID, "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

struct Figures {
    services: usize,
    raw_objects: usize,
    stored_services: usize,
    stored_slices: usize,
    cluster_maps: usize,
    model: usize,
    writer: usize,
}

fn measure(services: usize) -> Result<Figures> {
    // The k8s-openapi objects as deserialized (what was kept before).
    let before = live();
    let raw: Vec<(Arc<Service>, Arc<EndpointSlice>)> = (0..services)
        .map(|i| {
            Ok((
                Arc::new(serde_json::from_value(service(i))?),
                Arc::new(serde_json::from_value(slice(i))?),
            ))
        })
        .collect::<Result<_>>()?;
    let raw_objects = live() - before;
    drop(raw);

    // What the API source keeps (the manifests source keeps trimmed
    // Services besides, per file).
    let before = live();
    let svcs: Vec<(ObjectKey, Arc<ServiceInfo>)> = (0..services)
        .map(|i| {
            let s: Service = serde_json::from_value(service(i))?;
            let key = ObjectKey::of(&s.metadata).context("a Service without a name")?;
            let info = Arc::new(ServiceInfo::new(&key, &s));
            Ok((key, info))
        })
        .collect::<Result<_>>()?;
    let stored_services = live() - before;
    let before = live();
    let slices: Vec<(ObjectKey, Arc<Slice>)> = (0..services)
        .map(
            |i| match KubeObject::endpoint_slice(serde_json::from_value(slice(i))?) {
                KubeObject::EndpointSlice(Some(key), slice) => Ok((key, slice)),
                _ => anyhow::bail!("an EndpointSlice without a name"),
            },
        )
        .collect::<Result<_>>()?;
    let stored_slices = live() - before;
    let before = live();
    let mut cluster = ClusterState::default();
    cluster.services.extend(svcs);
    cluster.endpoint_slices.extend(slices);
    let cluster = Arc::new(cluster);
    let cluster_maps = live() - before;

    let before = live();
    let mut model = IncrementalModel::new();
    let node = NodeContext {
        name: "node-1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 0, 1)],
        zone: Some("zone-a".into()),
    };
    let changes = model.update(&cluster, &node);
    ensure!(
        model.desired().frontends.len() == services,
        "{} frontends for {services} Services",
        model.desired().frontends.len()
    );
    drop(changes);
    let model_bytes = live() - before;

    let before = live();
    let mut contents = MapContents::default();
    let mut planner = Planner::new(
        &contents,
        IdAllocator::new((services * 2) as u32 + 1),
        IdAllocator::new((services * ENDPOINTS * 2) as u32 + 1),
        PlanOptions {
            maglev_size: 16_381,
            maglev_by_default: false,
        },
    );
    let plan = planner.plan(&contents, model.desired(), Touch::All);
    for op in plan.groups.iter().flat_map(|g| &g.ops) {
        contents.record(op);
    }
    ensure!(
        contents.backends.len() == services * ENDPOINTS,
        "{} backends recorded",
        contents.backends.len()
    );
    drop(plan);
    let writer = live() - before;
    drop((planner, contents, model, cluster));
    Ok(Figures {
        services,
        raw_objects,
        stored_services,
        stored_slices,
        cluster_maps,
        model: model_bytes,
        writer,
    })
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn run() -> Result<()> {
    // Without the counting allocator nothing is measured: say so.
    let probe = std::hint::black_box(vec![0u8; 4096]);
    ensure!(
        live() >= probe.len(),
        "the bench binary does not count allocations (install CountingAlloc)"
    );
    drop(probe);
    let counts: Vec<usize> = std::env::var("SLUICE_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    println!(
        "== memory: live heap per component, N Services x {ENDPOINTS} endpoints (objects shaped as a real cluster writes them)"
    );
    println!(
        "| Services | k8s-openapi objects (not kept) | Services kept | EndpointSlices kept | view maps | model | writer state | total kept | per Service |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in counts {
        let f = measure(n)?;
        let kept = f.stored_services + f.stored_slices + f.cluster_maps + f.model + f.writer;
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} KiB |",
            f.services,
            mib(f.raw_objects),
            mib(f.stored_services),
            mib(f.stored_slices),
            mib(f.cluster_maps),
            mib(f.model),
            mib(f.writer),
            mib(kept),
            kept as f64 / 1024.0 / f.services as f64
        );
    }
    println!(
        "(view maps: one ClusterState's map nodes; the API source keeps up to 3 published views besides its live one, sharing the objects)"
    );
    Ok(())
}
