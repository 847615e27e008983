//! A Kubernetes API server for tests: Services, EndpointSlices
//! (discovery.k8s.io/v1) and Nodes over the real list/watch protocol,
//! enough for kube-rs' watcher as `sluiced` runs it.
//!
//! Protocol (as the real API server speaks it):
//! - `GET /api/v1/services`, `/api/v1/namespaces/{ns}/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices` (and namespaced),
//!   `/api/v1/nodes`, and single objects under each: JSON lists with
//!   `metadata.resourceVersion`; `limit` pages carry a `continue` token and
//!   `remainingItemCount`, and every page of one list is served from the
//!   snapshot its first page was taken from (etcd's consistent paging).
//! - `?watch=true&resourceVersion=N`: a chunked stream of
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` lines,
//!   starting with every change after N; `BOOKMARK`s (with
//!   `allowWatchBookmarks=true`) carry the current resourceVersion;
//!   `timeoutSeconds` ends the stream cleanly; `resourceVersion` 0 or
//!   absent starts with a synthetic `ADDED` per object; `sendInitialEvents`
//!   ends those with the `k8s.io/initial-events-end` bookmark.
//! - A resourceVersion older than the compaction point is answered the way
//!   the real server does: HTTP 200 and one `ERROR` event holding a
//!   `Status` with code 410, reason `Expired` (or, with
//!   [`GoneMode::HttpStatus`], a plain HTTP 410 on the watch request). A
//!   continue token of a compacted snapshot gets HTTP 410 on the list.
//! - Every change bumps one global resourceVersion, as etcd's revision does.
//!
//! Test controls: create/update/delete objects, compact the history, drop
//! every watch connection (abruptly, mid-stream), expire every watcher's
//! resourceVersion, and stop/start the server (listening socket and all
//! connections closed, state kept, as when an API server restarts).
//!
//! The server runs on a thread that entered a test network namespace, so its
//! socket exists only there; plain HTTP, no authentication.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hyper::{
    Request, Response, StatusCode,
    body::{Body, Frame, Incoming, SizeHint},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use sluice_testkit::netns::NetNs;

/// The port the test API server listens on (kube-apiserver's usual one).
pub const PORT: u16 = 6443;

/// Most watch events a slow stream may fall behind by before it is cut
/// (the client resumes from its last resourceVersion).
const EVENT_BACKLOG: usize = 1 << 17;
/// Paginated lists kept for their continue tokens.
const MAX_SNAPSHOTS: usize = 256;

/// The kinds the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            _ => "",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Node
    }

    fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneMode {
    /// HTTP 200 and an `ERROR` event with a 410 `Status` (the real server).
    ErrorEvent,
    /// HTTP 410 with a `Status` body on the watch request itself.
    HttpStatus,
}

#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// How often open watches get a `BOOKMARK` (the real server: about a
    /// minute; shorter here so tests exercise them).
    pub bookmark_interval: Duration,
    pub gone_mode: GoneMode,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            gone_mode: GoneMode::ErrorEvent,
        }
    }
}

/// Requests served, for tests that check what the client did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests (pages) per kind, in [`Kind::ALL`] order.
    pub lists: [u64; 3],
    /// List requests without a continue token (a list or relist begins).
    pub list_starts: [u64; 3],
    /// Watch requests per kind.
    pub watches: [u64; 3],
    /// Watches refused with 410 Gone (event or status), and expired
    /// continue tokens.
    pub gone: u64,
}

impl Stats {
    pub fn list_starts(&self, kind: Kind) -> u64 {
        self.list_starts[kind.index()]
    }

    pub fn watches(&self, kind: Kind) -> u64 {
        self.watches[kind.index()]
    }
}

#[derive(Default)]
struct Counters {
    lists: [AtomicU64; 3],
    list_starts: [AtomicU64; 3],
    watches: [AtomicU64; 3],
    gone: AtomicU64,
}

/// An object as stored: its JSON, serialized once per change.
struct Stored {
    value: Value,
    json: Bytes,
}

/// What goes to the open watches, in commit order.
enum Wire {
    Event {
        rv: u64,
        kind: Kind,
        namespace: String,
        line: Bytes,
    },
    Bookmark {
        rv: u64,
    },
}

struct Snapshot {
    rv: u64,
    items: Arc<Vec<Arc<Stored>>>,
}

type ObjKey = (String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this are expired.
    compacted: u64,
    objects: [BTreeMap<ObjKey, Arc<Stored>>; 3],
    /// Every change after `compacted`, oldest first (only `Wire::Event`s).
    history: VecDeque<Arc<Wire>>,
    snapshots: BTreeMap<u64, Snapshot>,
    next_snapshot: u64,
    next_uid: u64,
}

#[derive(Clone, Debug, Default)]
struct Control {
    listening: bool,
    /// Bumped to cut every open watch.
    watch_generation: u64,
    shutdown: bool,
    gone_mode: Option<GoneMode>,
    /// Added to every list request (a large cluster's lists take time).
    list_delay: Duration,
}

#[derive(Clone, Debug, Default)]
struct Status {
    listening: bool,
    error: Option<String>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Wire>>,
    control: watch::Sender<Control>,
    status: watch::Sender<Status>,
    counters: Counters,
    cfg: ApiServerConfig,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gone_mode(&self) -> GoneMode {
        self.control
            .borrow()
            .gone_mode
            .unwrap_or(self.cfg.gone_mode)
    }
}

/// The running server; stopped on drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddrV4,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts the server on `ip`:[`PORT`] inside `ns` (which must hold `ip`)
    /// and waits until it listens.
    pub fn start(ns: &NetNs, ip: Ipv4Addr, cfg: ApiServerConfig) -> Result<Self> {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            control: watch::Sender::new(Control {
                listening: true,
                ..Control::default()
            }),
            status: watch::Sender::new(Status::default()),
            counters: Counters::default(),
            cfg,
        });
        let addr = SocketAddrV4::new(ip, PORT);
        let s = shared.clone();
        let thread = ns.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    s.status
                        .send_modify(|st| st.error = Some(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(serve(s, addr));
        })?;
        let server = Self {
            shared,
            addr,
            thread: Some(thread),
        };
        server.wait_listening(true)?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// `http://<ip>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose current context is this server (no auth).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice-test\n  cluster:\n    server: {}\ncontexts:\n- name: sluice-test\n  context:\n    cluster: sluice-test\n    user: sluice-test\ncurrent-context: sluice-test\nusers:\n- name: sluice-test\n  user: {{}}\n",
            self.url()
        );
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    fn wait_listening(&self, want: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.shared.status.borrow().clone();
            if let Some(e) = st.error {
                bail!("test API server on {}: {e}", self.addr);
            }
            if st.listening == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "test API server on {} did not {} within 10 s",
                    self.addr,
                    if want { "start listening" } else { "stop" }
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Closes the listening socket and every connection (clients see
    /// resets and refused connections) until [`ApiServer::start_listening`].
    /// The objects stay; changes may still be made meanwhile.
    pub fn stop_listening(&self) -> Result<()> {
        self.shared.status.send_modify(|s| s.error = None);
        self.shared.control.send_modify(|c| c.listening = false);
        self.wait_listening(false)
    }

    pub fn start_listening(&self) -> Result<()> {
        self.shared.status.send_modify(|s| s.error = None);
        self.shared.control.send_modify(|c| c.listening = true);
        self.wait_listening(true)
    }

    /// Delays every list request by `delay`, as listing a large cluster
    /// takes time: a relist then spans many coalescing windows of the
    /// client, so a client that published a partial view would be caught.
    pub fn set_list_delay(&self, delay: Duration) {
        self.shared.control.send_modify(|c| c.list_delay = delay);
    }

    pub fn set_gone_mode(&self, mode: GoneMode) {
        self.shared
            .control
            .send_modify(|c| c.gone_mode = Some(mode));
    }

    /// Forgets the history up to the current resourceVersion: a watch from
    /// an older version is answered with 410 Gone.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        compact(&mut store);
    }

    /// Makes every client relist: the resourceVersion moves on (as writes
    /// to other resources move etcd's revision), the history is compacted
    /// to it and every watch is cut, all at once, so no client can have
    /// seen the new version: each reconnect gets 410 Gone.
    pub fn expire_watches(&self) {
        let mut store = self.shared.store();
        store.rv += 1;
        compact(&mut store);
        // Under the store lock: any bookmark carrying the new version is
        // sent after this, and streams check the generation before sending.
        self.shared.control.send_modify(|c| c.watch_generation += 1);
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let load = |a: &[AtomicU64; 3]| {
            [
                a[0].load(Ordering::Relaxed),
                a[1].load(Ordering::Relaxed),
                a[2].load(Ordering::Relaxed),
            ]
        };
        Stats {
            lists: load(&c.lists),
            list_starts: load(&c.list_starts),
            watches: load(&c.watches),
            gone: c.gone.load(Ordering::Relaxed),
        }
    }

    /// Creates or replaces an object (its `kind` says which); returns the
    /// resourceVersion of the change.
    pub fn apply(&self, object: Value) -> Result<u64> {
        self.apply_all([object])
    }

    /// Applies a YAML manifest holding one object (as `tests::manifests`
    /// writes them).
    pub fn apply_yaml(&self, yaml: &str) -> Result<u64> {
        let value: Value = serde_saphyr::from_str(yaml).context("parsing a YAML manifest")?;
        self.apply(value)
    }

    /// Applies many objects, one change (and resourceVersion) each, under
    /// one lock. Returns the last resourceVersion.
    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) -> Result<u64> {
        let mut store = self.shared.store();
        let mut last = store.rv;
        for object in objects {
            last = apply_one(&mut store, &self.shared.events, object)?;
        }
        Ok(last)
    }

    /// Deletes an object (namespace ignored for Nodes); returns the
    /// resourceVersion of the deletion.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<u64> {
        let mut store = self.shared.store();
        let key = object_key(kind, namespace, name);
        let Some(old) = store.objects[kind.index()].get(&key).cloned() else {
            bail!("{} {namespace}/{name} does not exist", kind.name());
        };
        Ok(commit(
            &mut store,
            &self.shared.events,
            kind,
            key,
            "DELETED",
            old.value.clone(),
        ))
    }

    /// The stored object, if any.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().objects[kind.index()]
            .get(&object_key(kind, namespace, name))
            .map(|o| o.value.clone())
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.shared.store().objects[kind.index()].len()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.control.send_modify(|c| {
            c.shutdown = true;
            c.listening = false;
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn object_key(kind: Kind, namespace: &str, name: &str) -> ObjKey {
    if kind.namespaced() {
        (namespace.to_string(), name.to_string())
    } else {
        (String::new(), name.to_string())
    }
}

fn compact(store: &mut Store) {
    store.compacted = store.rv;
    store.history.clear();
    let c = store.compacted;
    store.snapshots.retain(|_, s| s.rv >= c);
}

fn apply_one(
    store: &mut Store,
    events: &broadcast::Sender<Arc<Wire>>,
    mut object: Value,
) -> Result<u64> {
    let kind_name = object["kind"].as_str().unwrap_or_default().to_string();
    let kind = Kind::from_name(&kind_name)
        .ok_or_else(|| anyhow!("the test API server does not serve kind {kind_name:?}"))?;
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("{kind_name} without metadata"))?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("{kind_name} without metadata.name"))?
        .to_string();
    let namespace = if kind.namespaced() {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        meta.insert("namespace".into(), json!(ns));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    let key = (namespace, name);
    let (typ, uid, created) = match store.objects[kind.index()].get(&key) {
        Some(old) => (
            "MODIFIED",
            old.value["metadata"]["uid"].clone(),
            old.value["metadata"]["creationTimestamp"].clone(),
        ),
        None => {
            store.next_uid += 1;
            (
                "ADDED",
                json!(format!("00000000-0000-4000-8000-{:012x}", store.next_uid)),
                json!("2025-01-01T00:00:00Z"),
            )
        }
    };
    meta.insert("uid".into(), uid);
    meta.insert("creationTimestamp".into(), created);
    object["apiVersion"] = json!(kind.api_version());
    Ok(commit(store, events, kind, key, typ, object))
}

/// Records one change: a new resourceVersion, the stored object, the
/// history entry and the event for the open watches.
fn commit(
    store: &mut Store,
    events: &broadcast::Sender<Arc<Wire>>,
    kind: Kind,
    key: ObjKey,
    typ: &str,
    mut object: Value,
) -> u64 {
    store.rv += 1;
    let rv = store.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let json = Bytes::from(serde_json::to_vec(&object).unwrap_or_default());
    let mut line = Vec::with_capacity(json.len() + 40);
    line.extend_from_slice(format!("{{\"type\":\"{typ}\",\"object\":").as_bytes());
    line.extend_from_slice(&json);
    line.extend_from_slice(b"}\n");
    let namespace = key.0.clone();
    if typ == "DELETED" {
        store.objects[kind.index()].remove(&key);
    } else {
        store.objects[kind.index()].insert(
            key,
            Arc::new(Stored {
                value: object,
                json,
            }),
        );
    }
    let wire = Arc::new(Wire::Event {
        rv,
        kind,
        namespace,
        line: Bytes::from(line),
    });
    store.history.push_back(wire.clone());
    // No receiver is fine: nobody watches.
    let _ = events.send(wire);
    rv
}

// ---------------------------------------------------------------------------
// Serving

async fn serve(shared: Arc<Shared>, addr: SocketAddrV4) {
    let ticker = tokio::spawn(bookmarks(shared.clone()));
    let mut control = shared.control.subscribe();
    loop {
        let c = control.borrow_and_update().clone();
        if c.shutdown {
            break;
        }
        if !c.listening {
            if control.changed().await.is_err() {
                break;
            }
            continue;
        }
        let listener = match bind(addr) {
            Ok(l) => l,
            Err(e) => {
                shared
                    .status
                    .send_modify(|s| s.error = Some(format!("binding {addr}: {e}")));
                if control.changed().await.is_err() {
                    break;
                }
                continue;
            }
        };
        shared.status.send_modify(|s| {
            s.listening = true;
            s.error = None;
        });
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let _ = stream.set_nodelay(true);
                        conns.spawn(serve_connection(stream, shared.clone()));
                    }
                }
                changed = control.changed() => {
                    let stop = changed.is_err() || {
                        let c = control.borrow_and_update();
                        !c.listening || c.shutdown
                    };
                    if stop {
                        break;
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        // Dropping the connection tasks closes their sockets mid-response.
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        shared.status.send_modify(|s| s.listening = false);
    }
    ticker.abort();
    shared.status.send_modify(|s| s.listening = false);
}

fn bind(addr: SocketAddrV4) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // A restart rebinds at once, whatever TIME_WAIT the old sockets left.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(addr))?;
    socket.listen(1024)
}

/// Sends the current resourceVersion to every open watch now and then. Under
/// the store lock, so a bookmark is ordered after every change it covers.
async fn bookmarks(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.bookmark_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = shared.store();
        let _ = shared
            .events
            .send(Arc::new(Wire::Bookmark { rv: store.rv }));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let delay = shared.control.borrow().list_delay;
            let is_list = req.method() == hyper::Method::GET
                && !req.uri().query().unwrap_or("").contains("watch=")
                && matches!(route(req.uri().path()), Some(Route::Collection { .. }));
            if is_list && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(handle(&shared, &req))
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A response body: a whole buffer, or a watch's lines as they come (an
/// `Err` from the channel aborts the connection mid-stream).
enum Out {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for Out {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Out::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Stream(rx) => rx.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Out::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Out::Full(None) => SizeHint::with_exact(0),
            Out::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(code: StatusCode, body: Bytes) -> Response<Out> {
    let mut res = Response::new(Out::Full(Some(body)));
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

/// A `metav1.Status` body as the API server writes it.
fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Out> {
    let body = status_json(code.as_u16(), reason, message).to_string();
    json_response(code, Bytes::from(body))
}

enum Route {
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: String,
        name: String,
    },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/v1/").map(|r| ("", r)).or_else(|| {
        path.strip_prefix("/apis/discovery.k8s.io/v1/")
            .map(|r| ("discovery.k8s.io", r))
    })?;
    let (group, rest) = rest;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, resource, name) = match parts.as_slice() {
        ["namespaces", ns, resource] => (Some(ns.to_string()), *resource, None),
        ["namespaces", ns, resource, name] => (Some(ns.to_string()), *resource, Some(*name)),
        [resource] => (None, *resource, None),
        [resource, name] => (None, *resource, Some(*name)),
        _ => return None,
    };
    let kind = Kind::from_plural(resource).filter(|k| k.group() == group)?;
    if namespace.is_some() && !kind.namespaced() {
        return None;
    }
    match name {
        None => Some(Route::Collection { kind, namespace }),
        // A namespaced object is only addressed inside its namespace.
        Some(_) if kind.namespaced() && namespace.is_none() => None,
        Some(name) => Some(Route::Object {
            kind,
            namespace: namespace.unwrap_or_default(),
            name: name.to_string(),
        }),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn handle(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Out> {
    let path = req.uri().path();
    match path {
        "/healthz" | "/readyz" | "/livez" => {
            return json_response(StatusCode::OK, Bytes::from_static(b"ok"));
        }
        "/version" => {
            let v = json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-sluice-test",
                           "platform": "linux/amd64"});
            return json_response(StatusCode::OK, Bytes::from(v.to_string()));
        }
        _ => {}
    }
    if req.method() != hyper::Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the test API server is read-only over HTTP",
        );
    }
    let q = query(req.uri().query());
    match route(path) {
        Some(Route::Collection { kind, namespace }) => {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch_collection(shared, kind, namespace, &q)
            } else {
                list(shared, kind, namespace.as_deref(), &q)
            }
        }
        Some(Route::Object {
            kind,
            namespace,
            name,
        }) => {
            let store = shared.store();
            match store.objects[kind.index()].get(&object_key(kind, &namespace, &name)) {
                Some(o) => json_response(StatusCode::OK, o.json.clone()),
                None => status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", kind.plural()),
                ),
            }
        }
        None => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
    }
}

fn in_namespace(namespace: Option<&str>, key_ns: &str) -> bool {
    namespace.is_none_or(|ns| ns == key_ns)
}

fn list(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<&str>,
    q: &HashMap<String, String>,
) -> Response<Out> {
    let c = &shared.counters;
    c.lists[kind.index()].fetch_add(1, Ordering::Relaxed);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let mut store = shared.store();
    let (rv, items, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once('-')
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid",
                );
            };
            match store.snapshots.get(&id) {
                Some(s) => (s.rv, s.items.clone(), offset),
                None => {
                    c.gone.fetch_add(1, Ordering::Relaxed);
                    return status_response(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    );
                }
            }
        }
        None => {
            c.list_starts[kind.index()].fetch_add(1, Ordering::Relaxed);
            let items: Vec<Arc<Stored>> = store.objects[kind.index()]
                .iter()
                .filter(|((ns, _), _)| in_namespace(namespace, ns))
                .map(|(_, o)| o.clone())
                .collect();
            (store.rv, Arc::new(items), 0)
        }
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let start = offset.min(end);
    let mut continue_token = None;
    if end < items.len() {
        // Later pages come from this same snapshot, like etcd's paging at
        // the first page's revision.
        let id = match q.get("continue").and_then(|t| t.split_once('-')) {
            Some((id, _)) => id.parse().unwrap_or_default(),
            None => {
                store.next_snapshot += 1;
                let id = store.next_snapshot;
                store.snapshots.insert(
                    id,
                    Snapshot {
                        rv,
                        items: items.clone(),
                    },
                );
                while store.snapshots.len() > MAX_SNAPSHOTS {
                    store.snapshots.pop_first();
                }
                id
            }
        };
        continue_token = Some(format!("{id}-{end}"));
    } else if let Some(id) = q
        .get("continue")
        .and_then(|t| t.split_once('-'))
        .and_then(|(id, _)| id.parse::<u64>().ok())
    {
        // The last page: the snapshot is done with.
        store.snapshots.remove(&id);
    }
    drop(store);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = &continue_token {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(items.len() - end);
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{meta},\"items\":[",
        kind.name(),
        kind.api_version()
    );
    let page = &items[start..end];
    let mut body =
        Vec::with_capacity(head.len() + page.iter().map(|o| o.json.len() + 1).sum::<usize>() + 2);
    body.extend_from_slice(head.as_bytes());
    for (i, o) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&o.json);
    }
    body.extend_from_slice(b"]}");
    json_response(StatusCode::OK, Bytes::from(body))
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let event = json!({
        "type": "BOOKMARK",
        "object": {"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": meta},
    });
    Bytes::from(format!("{event}\n"))
}

fn watch_collection(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    q: &HashMap<String, String>,
) -> Response<Out> {
    let c = &shared.counters;
    c.watches[kind.index()].fetch_add(1, Ordering::Relaxed);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let send_initial = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(1800);
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let generation = shared.control.borrow().watch_generation;
    let mut initial = Vec::new();
    let mut end_after_initial = false;
    let rx = {
        let store = shared.store();
        if from.is_empty() || from == "0" {
            for ((ns, _), o) in &store.objects[kind.index()] {
                if in_namespace(namespace.as_deref(), ns) {
                    let mut line = b"{\"type\":\"ADDED\",\"object\":".to_vec();
                    line.extend_from_slice(&o.json);
                    line.extend_from_slice(b"}\n");
                    initial.push(Bytes::from(line));
                }
            }
            if send_initial {
                initial.push(bookmark_line(kind, store.rv, true));
            }
        } else {
            let Ok(n) = from.parse::<u64>() else {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {from:?}"),
                );
            };
            if n < store.compacted {
                c.gone.fetch_add(1, Ordering::Relaxed);
                let message = format!("too old resource version: {n} ({})", store.compacted);
                if shared.gone_mode() == GoneMode::HttpStatus {
                    return status_response(StatusCode::GONE, "Expired", &message);
                }
                let event =
                    json!({"type": "ERROR", "object": status_json(410, "Expired", &message)});
                initial.push(Bytes::from(format!("{event}\n")));
                end_after_initial = true;
            } else {
                for w in &store.history {
                    if let Wire::Event {
                        rv,
                        kind: k,
                        namespace: ns,
                        line,
                    } = &**w
                        && *rv > n
                        && *k == kind
                        && in_namespace(namespace.as_deref(), ns)
                    {
                        initial.push(line.clone());
                    }
                }
            }
        }
        // Subscribed under the lock: nothing committed is missed or doubled.
        shared.events.subscribe()
    };
    let (tx, body) = mpsc::channel(256);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    tokio::spawn(stream_watch(WatchStream {
        initial,
        end_after_initial,
        rx,
        tx,
        kind,
        namespace,
        bookmarks,
        deadline,
        control: shared.control.subscribe(),
        generation,
    }));
    let mut res = Response::new(Out::Stream(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

struct WatchStream {
    initial: Vec<Bytes>,
    end_after_initial: bool,
    rx: broadcast::Receiver<Arc<Wire>>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    kind: Kind,
    namespace: Option<String>,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    control: watch::Receiver<Control>,
    generation: u64,
}

async fn stream_watch(mut w: WatchStream) {
    let cut = |w: &WatchStream| w.control.borrow().watch_generation != w.generation;
    for line in std::mem::take(&mut w.initial) {
        if w.tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    if w.end_after_initial {
        return;
    }
    loop {
        let line = tokio::select! {
            m = w.rx.recv() => match m {
                Ok(wire) => match &*wire {
                    Wire::Event { kind, namespace, line, .. }
                        if *kind == w.kind && in_namespace(w.namespace.as_deref(), namespace) =>
                    {
                        Some(line.clone())
                    }
                    Wire::Bookmark { rv } if w.bookmarks => Some(bookmark_line(w.kind, *rv, false)),
                    _ => None,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow: cut it; the client resumes from its last
                    // resourceVersion, which the history still has.
                    let _ = w.tx.send(Err(std::io::Error::other("watch fell behind"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep_until(w.deadline) => return,
            changed = w.control.changed() => {
                if changed.is_err() || cut(&w) {
                    let _ = w.tx.send(Err(std::io::Error::other("watch dropped"))).await;
                    return;
                }
                None
            }
            () = w.tx.closed() => return,
        };
        // Checked before every line: a cut decided under the store lock
        // must win over anything committed after it.
        if cut(&w) {
            let _ = w.tx.send(Err(std::io::Error::other("watch dropped"))).await;
            return;
        }
        if let Some(line) = line
            && w.tx.send(Ok(line)).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route("/api/v1/services"),
            Some(Route::Collection {
                kind: Kind::Service,
                namespace: None
            })
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"),
            Some(Route::Collection { kind: Kind::EndpointSlice, namespace: Some(ns) }) if ns == "shop"
        ));
        assert!(matches!(
            route("/api/v1/nodes/n1"),
            Some(Route::Object { kind: Kind::Node, name, .. }) if name == "n1"
        ));
        assert!(route("/api/v1/endpointslices").is_none());
        assert!(route("/api/v1/namespaces/x/nodes").is_none());
        assert!(route("/api/v1/pods").is_none());
    }

    #[test]
    fn query_decoding() {
        let q = query(Some("&watch=true&labelSelector=app%3Dweb&continue=3-500"));
        assert_eq!(q["watch"], "true");
        assert_eq!(q["labelSelector"], "app=web");
        assert_eq!(q["continue"], "3-500");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
