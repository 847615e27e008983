//! Reading manifest files: what `kubectl get -o yaml` / `-o json` prints and
//! what people write by hand.
//!
//! A file is YAML or JSON (told apart by its first character), holding one
//! object, several YAML documents (`---`), several concatenated JSON values,
//! or a list (`kind: List` as kubectl prints it, or a typed list such as
//! `ServiceList` as the API returns it, whose items may omit their kind).
//! Each document stands alone: one that fails is reported with the file,
//! its position and the reason, and the others are still read.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::model::{DEFAULT_NAMESPACE, KubeObject, trim_service};

/// One object read from a manifest.
#[derive(Clone, Debug)]
pub enum ParsedObject {
    /// A Service, EndpointSlice, Endpoints or Node.
    Object(KubeObject),
    /// A well-formed object of a kind Sluice does not read (a ConfigMap in
    /// the same directory, say): not an error.
    Ignored { kind: String, reason: String },
}

impl ParsedObject {
    /// The object for the model; `None` for an ignored one.
    pub fn into_object(self) -> Option<KubeObject> {
        match self {
            ParsedObject::Object(o) => Some(o),
            ParsedObject::Ignored { .. } => None,
        }
    }
}

/// Everything read from one file: the objects, and the documents that
/// could not be read.
#[derive(Clone, Debug, Default)]
pub struct ParsedManifest {
    pub objects: Vec<ParsedObject>,
    pub errors: Vec<DocumentError>,
}

/// A document (or list item) that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}: {reason}", path.display(), self.position())]
pub struct DocumentError {
    pub path: PathBuf,
    /// 1-based position of the document among the file's non-empty YAML
    /// documents (or JSON values).
    pub document: usize,
    /// 1-based line where the document starts, when known.
    pub line: Option<usize>,
    /// 0-based index in the list's `items`, for an item of a list.
    pub item: Option<usize>,
    pub reason: String,
}

impl DocumentError {
    fn position(&self) -> String {
        let mut s = format!("document {}", self.document);
        if let Some(line) = self.line {
            s.push_str(&format!(" (line {line})"));
        }
        if let Some(item) = self.item {
            s.push_str(&format!(", items[{item}]"));
        }
        s
    }
}

/// A file that cannot be read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{}: not text: {reason}", path.display())]
    NotText { path: PathBuf, reason: String },
}

/// Reads every object in `bytes`, the contents of the file at `path` (used
/// in messages only).
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<ParsedManifest, ParseError> {
    let text = decode(bytes).map_err(|reason| ParseError::NotText {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut manifest = ParsedManifest::default();
    for doc in documents(&text) {
        let error = |item, reason| DocumentError {
            path: path.to_path_buf(),
            document: doc.number,
            line: doc.line,
            item,
            reason,
        };
        let value = match doc.value {
            Ok(value) => value,
            Err(reason) => {
                manifest.errors.push(error(None, reason));
                continue;
            }
        };
        for (item, result) in objects_in(value) {
            match result {
                Ok(object) => manifest.objects.push(object),
                Err(reason) => manifest.errors.push(error(item, reason)),
            }
        }
    }
    Ok(manifest)
}

/// UTF-8 (with or without a byte order mark), or UTF-16 with a byte order
/// mark, which is what PowerShell's `>` writes.
fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |bytes: &[u8], from: fn([u8; 2]) -> u16| {
        if !bytes.len().is_multiple_of(2) {
            return Err("UTF-16 with an odd number of bytes".to_string());
        }
        let units: Vec<u16> = bytes.chunks_exact(2).map(|c| from([c[0], c[1]])).collect();
        String::from_utf16(&units).map_err(|e| format!("invalid UTF-16: {e}"))
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|e| e.to_string())
        }
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ => String::from_utf8(bytes.to_vec()).map_err(|e| format!("invalid UTF-8: {e}")),
    }
}

/// One document of a file, parsed into a generic value (or why not).
struct Document {
    number: usize,
    line: Option<usize>,
    value: Result<Value, String>,
}

fn documents(text: &str) -> Vec<Document> {
    let start = text.trim_start();
    if start.starts_with('{') || start.starts_with('[') {
        let json = json_documents(text);
        // A flow-style YAML mapping (`{kind: Service, ...}`) also starts
        // with a brace; if the first JSON value does not parse, and YAML
        // reads the whole file, it was YAML.
        if json.first().is_some_and(|d| d.value.is_err()) {
            let yaml = yaml_documents(text);
            if yaml.iter().all(|d| d.value.is_ok()) {
                return yaml;
            }
        }
        return json;
    }
    yaml_documents(text)
}

/// Concatenated JSON values (`kubectl get a -o json; kubectl get b -o json`).
/// A syntax error ends the stream: nothing after it can be trusted.
fn json_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut offset = 0;
    loop {
        let skipped = text[offset..].len() - text[offset..].trim_start().len();
        let line = line_of(text, offset + skipped);
        match stream.next() {
            None => break,
            Some(Ok(value)) => docs.push(Document {
                number: docs.len() + 1,
                line: Some(line),
                value: Ok(value),
            }),
            Some(Err(e)) => {
                docs.push(Document {
                    number: docs.len() + 1,
                    line: Some(line),
                    value: Err(format!("invalid JSON: {e}")),
                });
                break;
            }
        }
        offset = stream.byte_offset();
    }
    docs
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// YAML documents, split at `---` and after `...` so that a syntax error in
/// one does not hide the others (a YAML parser gives up at the first one).
fn yaml_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for chunk in yaml_chunks(text) {
        // Pad with the lines before the chunk so the parser's line numbers
        // are the file's.
        let padded = "\n".repeat(chunk.first_line - 1) + &chunk.text;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(yaml_budget(chunk.text.len()));
        let value = serde_saphyr::from_str_with_options::<Value>(&padded, options)
            .map_err(|e| format!("invalid YAML: {}", e.without_snippet()));
        if matches!(value, Ok(Value::Null)) {
            continue;
        }
        docs.push(Document {
            number: docs.len() + 1,
            line: Some(chunk.content_line),
            value,
        });
    }
    docs
}

/// The parser's limits for a YAML document of `len` bytes. Without aliases
/// every node costs at least a byte of input and every event at most two
/// per node, so limits proportional to the size admit any real document,
/// however large (a `kubectl get svc -A -o yaml` List of a 100k-Service
/// cluster), while an alias bomb, whose expansion is charged against the
/// same limits, is stopped at a few times its own size. Nesting keeps the
/// parser's fixed depth limit; anchors and aliases keep its defaults
/// (kubectl never writes them).
fn yaml_budget(len: usize) -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_nodes = b.max_nodes.max(len);
    b.max_events = b.max_events.max(2 * len);
    b.max_total_scalar_bytes = b.max_total_scalar_bytes.max(len);
    b
}

struct Chunk {
    /// Line of the chunk's first line.
    first_line: usize,
    /// Line of its first line of content.
    content_line: usize,
    text: String,
}

fn yaml_chunks(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut content_line = None;
    let mut has_marker = false;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if is_document_start(line) {
            if content_line.is_some() {
                chunks.push(Chunk {
                    first_line,
                    content_line: content_line.unwrap_or(first_line),
                    text: std::mem::take(&mut current),
                });
                content_line = None;
                first_line = number;
            } else if has_marker {
                // `---` after `---`: the first document was empty.
                current.clear();
                first_line = number;
            }
            has_marker = true;
        }
        if content_line.is_none() && is_content(line) {
            content_line = Some(number);
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end() == "..." {
            if let Some(content_line) = content_line.take() {
                chunks.push(Chunk {
                    first_line,
                    content_line,
                    text: std::mem::take(&mut current),
                });
            } else {
                current.clear();
            }
            first_line = number + 1;
            has_marker = false;
        }
    }
    if let Some(content_line) = content_line {
        chunks.push(Chunk {
            first_line,
            content_line,
            text: current,
        });
    }
    chunks
}

fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// A line that belongs to a document's body: not blank, not a comment, not
/// a directive, not a bare document marker.
fn is_content(line: &str) -> bool {
    let line = if is_document_start(line) {
        &line[3..]
    } else {
        line
    };
    let trimmed = line.trim();
    !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%') || trimmed == "...")
}

/// The objects in one document: the document itself, or each item of a
/// list (with its index).
fn objects_in(value: Value) -> Vec<(Option<usize>, Result<ParsedObject, String>)> {
    match value {
        // A bare array of objects: accept it like a List.
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| (Some(i), object(item, None)))
            .collect(),
        Value::Object(map) if is_list(&map) => list_items(map),
        other => vec![(None, object(other, None))],
    }
}

fn is_list(map: &Map<String, Value>) -> bool {
    match map.get("kind").and_then(Value::as_str) {
        Some("List") => true,
        Some(kind) => kind.ends_with("List") && map.contains_key("items"),
        None => false,
    }
}

fn list_items(mut list: Map<String, Value>) -> Vec<(Option<usize>, Result<ParsedObject, String>)> {
    let kind = list
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Items of a typed list (ServiceList...) as the API returns them carry
    // no apiVersion/kind of their own.
    let inherited = kind
        .strip_suffix("List")
        .filter(|item_kind| !item_kind.is_empty())
        .map(|item_kind| Inherited {
            kind: item_kind.to_string(),
            api_version: list
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    match list.remove("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| (Some(i), object(item, inherited.as_ref())))
            .collect(),
        Some(_) => vec![(None, Err(format!("{kind}: items is not a list")))],
    }
}

struct Inherited {
    kind: String,
    api_version: String,
}

/// Turns one object into a [`ParsedObject`], or says why it cannot.
fn object(value: Value, inherited: Option<&Inherited>) -> Result<ParsedObject, String> {
    let Value::Object(mut map) = value else {
        return Err(format!(
            "not a Kubernetes object: expected a mapping with apiVersion and kind, found {}",
            type_name(&value)
        ));
    };
    let kind = type_field(&map, "kind", inherited.map(|i| i.kind.as_str()))?;
    let api_version = type_field(
        &map,
        "apiVersion",
        inherited.map(|i| i.api_version.as_str()),
    )?;
    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        return Err(format!("{kind} inside a list is not supported"));
    }
    let Some(namespaced) = read_kind(&kind, &api_version)? else {
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("(no name)");
        return Ok(ParsedObject::Ignored {
            reason: format!("{api_version} {kind} {name}: not a kind Sluice reads"),
            kind,
        });
    };
    let described = name_and_namespace(&mut map, &kind, namespaced)?;
    // Items of typed lists lack these; the typed structs would accept their
    // absence, but keeping them makes the object complete.
    map.insert("apiVersion".into(), Value::String(api_version));
    map.insert("kind".into(), Value::String(kind.clone()));
    let value = Value::Object(map);
    let object = match kind.as_str() {
        "Service" => typed(value).map(|mut o| {
            trim_service(&mut o);
            KubeObject::Service(Arc::new(o))
        }),
        "Endpoints" => typed(value).map(|o| KubeObject::Endpoints(Arc::new(o))),
        "EndpointSlice" => typed(value).map(KubeObject::endpoint_slice),
        _ => typed(value).map(|o| KubeObject::Node(Arc::new(o))),
    };
    object
        .map(ParsedObject::Object)
        .map_err(|e| format!("{described}: {e}"))
}

/// `kind` or `apiVersion`: a non-empty string, or what a typed list lends
/// its items.
fn type_field(
    map: &Map<String, Value>,
    name: &str,
    inherit: Option<&str>,
) -> Result<String, String> {
    match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => inherit
            .filter(|s| !s.is_empty())
            .map(String::from)
            .ok_or_else(|| format!("no {name}")),
        Some(Value::String(_)) => Err(format!("empty {name}")),
        Some(other) => Err(format!("{name} is {}, not a string", type_name(other))),
    }
}

/// Whether a kind Sluice reads is namespaced (`None`: a kind it ignores);
/// only v1 of each is supported.
fn read_kind(kind: &str, api_version: &str) -> Result<Option<bool>, String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let namespaced = match (group, kind) {
        ("", "Service" | "Endpoints") | ("discovery.k8s.io", "EndpointSlice") => true,
        ("", "Node") => false,
        _ => return Ok(None),
    };
    if version != "v1" {
        let hint = if kind == "EndpointSlice" {
            " (kubectl get endpointslices.v1.discovery.k8s.io -o yaml prints v1)"
        } else {
            ""
        };
        return Err(format!(
            "{kind} {api_version} is not supported: only {}v1{hint}",
            group_prefix(group)
        ));
    }
    Ok(Some(namespaced))
}

/// Checks metadata.name, gives a namespaced object the default namespace
/// when it names none (what `kubectl apply` does with a file), and returns
/// `Kind namespace/name` for messages.
fn name_and_namespace(
    map: &mut Map<String, Value>,
    kind: &str,
    namespaced: bool,
) -> Result<String, String> {
    let metadata = match map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "{kind}: metadata is {}, not a mapping",
                type_name(other)
            ));
        }
    };
    let name = match metadata.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        // YAML reads `name: no` or `name: 1` as a boolean or a number.
        Some(other @ (Value::Bool(_) | Value::Number(_))) => {
            return Err(format!(
                "{kind}: metadata.name is {}, not a string (quote it)",
                type_name(other)
            ));
        }
        _ if metadata.contains_key("generateName") => {
            return Err(format!(
                "{kind}: no metadata.name (generateName needs an API server to pick one)"
            ));
        }
        _ => return Err(format!("{kind}: no metadata.name")),
    };
    if !namespaced {
        return Ok(format!("{kind} {name}"));
    }
    let namespace = match metadata.get("namespace") {
        Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
        _ => {
            metadata.insert("namespace".into(), Value::String(DEFAULT_NAMESPACE.into()));
            DEFAULT_NAMESPACE.to_string()
        }
    };
    Ok(format!("{kind} {namespace}/{name}"))
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

fn group_prefix(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!("{group}/")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterState, NodeContext, ObjectKey, desired_state};

    fn parse(text: &str) -> ParsedManifest {
        parse_manifest(Path::new("manifests/test.yaml"), text.as_bytes()).unwrap()
    }

    /// `Kind namespace/name` of every object read, `Ignored Kind` for the
    /// ignored ones.
    fn summary(m: &ParsedManifest) -> Vec<String> {
        m.objects
            .iter()
            .map(|o| match o {
                ParsedObject::Ignored { kind, .. } => format!("Ignored {kind}"),
                other => {
                    let object = other.clone().into_object().unwrap();
                    let key = object.key().unwrap();
                    if key.namespace.is_empty() {
                        format!("{} {}", object.kind(), key.name)
                    } else {
                        format!("{} {key}", object.kind())
                    }
                }
            })
            .collect()
    }

    fn errors(m: &ParsedManifest) -> Vec<String> {
        m.errors.iter().map(ToString::to_string).collect()
    }

    /// A `kind: List` of `n` Services as `kubectl get svc -A -o yaml`
    /// prints them (metadata with labels, annotations, managedFields).
    fn big_list(n: usize) -> String {
        let mut y = String::from("apiVersion: v1\nitems:\n");
        for i in 0..n {
            y.push_str(&format!(
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    annotations:\n      note: \"service {i}\"\n    creationTimestamp: \"2026-01-01T00:00:00Z\"\n    labels:\n      app: app-{i}\n      tier: web\n    managedFields:\n    - apiVersion: v1\n      fieldsType: FieldsV1\n      fieldsV1:\n        f:spec:\n          f:ports:\n            .: {{}}\n          f:selector: {{}}\n      manager: kubectl\n      operation: Update\n    name: svc-{i}\n    namespace: ns-{}\n    resourceVersion: \"{}\"\n    uid: 00000000-0000-0000-0000-{i:012}\n  spec:\n    clusterIP: 10.96.{}.{}\n    clusterIPs:\n    - 10.96.{}.{}\n    internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    ipFamilyPolicy: SingleStack\n    ports:\n    - name: http\n      port: 80\n      protocol: TCP\n      targetPort: 8080\n    selector:\n      app: app-{i}\n    sessionAffinity: None\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
                i % 50,
                1000 + i,
                i / 250,
                i % 250,
                i / 250,
                i % 250
            ));
        }
        y.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        y
    }

    #[test]
    fn a_cluster_sized_list_parses_whole() {
        // 5000 Services, ~5 MB: 40x the parser's default node budget.
        let text = big_list(5000);
        assert!(text.len() > 4_000_000, "{}", text.len());
        let m = parse(&text);
        assert!(errors(&m).is_empty(), "{:?}", &errors(&m)[..1]);
        assert_eq!(m.objects.len(), 5000);
        assert_eq!(summary(&m)[4999], "Service ns-49/svc-4999");
    }

    #[test]
    fn alias_bombs_and_absurd_nesting_are_refused() {
        // Billion laughs: nine levels of ten aliases each.
        let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\na: &a [\"lol\"]\n");
        let mut prev = 'a';
        for c in "bcdefghij".chars() {
            let refs = vec![format!("*{prev}"); 10].join(",");
            bomb.push_str(&format!("{c}: &{c} [{refs}]\n"));
            prev = c;
        }
        let m = parse(&bomb);
        assert_eq!(m.objects.len(), 0);
        let e = errors(&m);
        assert!(e.len() == 1 && e[0].contains("budget"), "{e:?}");
        let deep = format!(
            "apiVersion: v1\nkind: Service\nspec: {}1{}\n",
            "[".repeat(300),
            "]".repeat(300)
        );
        let e = errors(&parse(&deep));
        assert_eq!(e.len(), 1, "{e:?}");
    }

    /// A Service as `kubectl get svc kubernetes -o yaml` prints it.
    const KUBECTL_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    component: apiserver
    provider: kubernetes
  name: kubernetes
  namespace: default
  resourceVersion: "234"
  uid: 6b3f1f0e-4c8e-4b7a-9d55-0f0c6a1d2e3f
spec:
  clusterIP: 10.96.0.1
  clusterIPs:
  - 10.96.0.1
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: https
    port: 443
    protocol: TCP
    targetPort: 6443
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

    #[test]
    fn a_single_object_as_kubectl_prints_it() {
        let m = parse(KUBECTL_SERVICE);
        assert!(m.errors.is_empty(), "{:?}", errors(&m));
        let [ParsedObject::Object(KubeObject::Service(svc))] = m.objects.as_slice() else {
            panic!("{:?}", summary(&m));
        };
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 443);
        assert!(svc.metadata.creation_timestamp.is_some());
    }

    /// `kubectl get svc,endpointslices -o yaml` output (abridged).
    const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-01T10:00:00Z"
    name: web
    namespace: shop
    resourceVersion: "1201"
    uid: 0a1b2c3d-0000-4000-8000-000000000001
  spec:
    clusterIP: 10.96.0.10
    clusterIPs:
    - 10.96.0.10
    ports:
    - name: http
      nodePort: 30080
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app: web
    sessionAffinity: None
    type: NodePort
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-7d9c8b6f5-abcde
      namespace: shop
      uid: 0a1b2c3d-0000-4000-8000-000000000002
  kind: EndpointSlice
  metadata:
    creationTimestamp: "2024-05-01T10:00:01Z"
    generateName: web-
    generation: 3
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 0a1b2c3d-0000-4000-8000-000000000001
    resourceVersion: "1300"
    uid: 0a1b2c3d-0000-4000-8000-000000000003
  ports:
  - name: http
    port: 8080
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

    #[test]
    fn a_kubectl_list() {
        let m = parse(KUBECTL_LIST);
        assert!(m.errors.is_empty(), "{:?}", errors(&m));
        assert_eq!(
            summary(&m),
            ["Service shop/web", "EndpointSlice shop/web-x7k2p"]
        );
    }

    #[test]
    fn a_parsed_directory_drives_the_model() {
        let m = parse(KUBECTL_LIST);
        let cluster =
            ClusterState::from_objects(m.objects.into_iter().filter_map(ParsedObject::into_object));
        let node = NodeContext {
            name: "node-a".into(),
            addresses: vec!["192.168.0.10".parse().unwrap()],
            zone: None,
        };
        let state = desired_state(&cluster, &node);
        let keys: Vec<String> = state.frontends.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["10.96.0.10:80/TCP", "192.168.0.10:30080/TCP"]);
        let f = state.frontends.values().next().unwrap();
        assert_eq!(
            (
                f.backends[0].addr.to_string(),
                f.backends[0].port,
                f.backends[0].local
            ),
            ("10.244.1.5".into(), 8080, true)
        );
        assert!(
            cluster
                .services
                .contains_key(&ObjectKey::new("shop", "web"))
        );
    }

    #[test]
    fn typed_lists_from_the_api_lend_their_items_a_kind() {
        let cases = [
            (
                "apiVersion: v1\nkind: ServiceList\nmetadata: {resourceVersion: \"9\"}\nitems:\n- metadata: {name: a, namespace: x}\n  spec: {clusterIP: 10.96.0.1}\n- metadata: {name: b}\n",
                vec!["Service x/a", "Service default/b"],
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\n  addressType: IPv4\n  endpoints: null\n",
                vec!["EndpointSlice x/a-1"],
            ),
            (
                "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: node-a}\n  status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n",
                vec!["Node node-a"],
            ),
            (
                "apiVersion: v1\nkind: EndpointsList\nitems:\n- metadata: {name: db, namespace: x}\n  subsets: [{addresses: [{ip: 10.1.0.1}], ports: [{port: 5432}]}]\n",
                vec!["Endpoints x/db"],
            ),
            ("apiVersion: v1\nkind: List\nitems: []\n", vec![]),
            ("apiVersion: v1\nkind: ServiceList\nitems: null\n", vec![]),
        ];
        for (text, want) in cases {
            let m = parse(text);
            assert!(m.errors.is_empty(), "{text}: {:?}", errors(&m));
            assert_eq!(summary(&m), want, "{text}");
        }
    }

    #[test]
    fn multi_document_yaml() {
        let text = "\
# a comment before anything
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.1}
---
# an empty document
---
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
...
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {x: y}
--- # trailing comment after a marker
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: []
";
        let m = parse(text);
        assert!(m.errors.is_empty(), "{:?}", errors(&m));
        assert_eq!(
            summary(&m),
            [
                "Service default/a",
                "Node node-a",
                "Ignored ConfigMap",
                "EndpointSlice default/a-1"
            ]
        );
    }

    #[test]
    fn windows_line_endings_and_byte_order_marks() {
        let crlf = KUBECTL_SERVICE.replace('\n', "\r\n");
        assert_eq!(summary(&parse(&crlf)), ["Service default/kubernetes"]);

        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(KUBECTL_SERVICE.as_bytes());
        let m = parse_manifest(Path::new("svc.yaml"), &bom).unwrap();
        assert_eq!(summary(&m), ["Service default/kubernetes"]);

        let mut utf16 = vec![0xFF, 0xFE];
        for unit in crlf.encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        let m = parse_manifest(Path::new("svc.yaml"), &utf16).unwrap();
        assert_eq!(summary(&m), ["Service default/kubernetes"]);

        let err = parse_manifest(Path::new("bin/blob"), &[0x80, 0x81, 0xFE]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bin/blob: not text: invalid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn json_single_list_stream_and_array() {
        let single = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1"}}"#;
        assert_eq!(summary(&parse(single)), ["Service default/a"]);

        // `kubectl get svc -o json` (abridged).
        let list = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "a", "namespace": "x", "resourceVersion": "5"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {}}
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-a"}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}"#;
        assert_eq!(summary(&parse(list)), ["Service x/a", "Node node-a"]);

        let stream = format!("{single}\n{}", single.replace("\"a\"", "\"b\""));
        assert_eq!(
            summary(&parse(&stream)),
            ["Service default/a", "Service default/b"]
        );

        let array = format!(
            "[{single}, {{\"apiVersion\": \"v1\", \"kind\": \"Secret\", \"metadata\": {{\"name\": \"s\"}}}}]"
        );
        assert_eq!(
            summary(&parse(&array)),
            ["Service default/a", "Ignored Secret"]
        );
    }

    #[test]
    fn flow_style_yaml_is_not_mistaken_for_json() {
        let m = parse("{apiVersion: v1, kind: Service, metadata: {name: a}}\n");
        assert!(m.errors.is_empty(), "{:?}", errors(&m));
        assert_eq!(summary(&m), ["Service default/a"]);
    }

    #[test]
    fn broken_json_stops_the_stream_where_it_breaks() {
        let good = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}"#;
        let m = parse(&format!("{good}\n{{\"apiVersion\": \"v1\", \"kind\": \n"));
        assert_eq!(summary(&m), ["Service default/a"]);
        assert_eq!(m.errors.len(), 1);
        assert_eq!(m.errors[0].document, 2);
        assert_eq!(m.errors[0].line, Some(2));
        assert!(
            m.errors[0].reason.starts_with("invalid JSON"),
            "{:?}",
            errors(&m)
        );
    }

    #[test]
    fn bad_documents_are_reported_and_the_rest_is_read() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: first}
---
apiVersion: v1
kind: Service
metadata: {name: broken
---
apiVersion: v1
kind: Service
metadata: {name: typed}
spec:
  ports:
  - port: eighty
---
apiVersion: v1
kind: Service
metadata: {namespace: x}
---
metadata: {name: kindless}
---
just some text
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: in-list}
- apiVersion: v1
  kind: Service
  metadata: {name: bad-in-list}
  spec: {clusterIP: [1]}
- 42
---
apiVersion: v1
kind: Service
metadata: {name: last, generateName: last-}
---
apiVersion: v1
kind: Service
metadata: {name: really-last}
";
        let m = parse(text);
        // A name and a generateName: the name counts.
        assert_eq!(
            summary(&m),
            [
                "Service default/first",
                "Service default/in-list",
                "Service default/last",
                "Service default/really-last"
            ]
        );
        let got = errors(&m);
        let want = [
            ("document 2 (line 5)", "invalid YAML"),
            (
                "document 3 (line 9)",
                "Service default/typed: invalid type: string \"eighty\"",
            ),
            ("document 4 (line 16)", "Service: no metadata.name"),
            ("document 5 (line 20)", "no kind"),
            (
                "document 6 (line 22)",
                "not a Kubernetes object: expected a mapping with apiVersion and kind, found a string",
            ),
            (
                "document 7 (line 24)",
                "EndpointSlice discovery.k8s.io/v1beta1 is not supported: only discovery.k8s.io/v1",
            ),
            (
                "document 8 (line 28), items[1]",
                "Service default/bad-in-list: invalid type",
            ),
            ("document 8 (line 28), items[2]", "found a number"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, (position, reason)) in got.iter().zip(want) {
            assert!(
                got.starts_with(&format!("manifests/test.yaml: {position}: ")),
                "{got}"
            );
            assert!(got.contains(reason), "{got} should contain {reason}");
        }
        // The YAML parser's own position is the file's line.
        assert!(
            m.errors[0].reason.contains("at line 7, column 11"),
            "{}",
            m.errors[0].reason
        );
    }

    #[test]
    fn generate_name_is_not_a_name() {
        let m = parse("apiVersion: v1\nkind: Service\nmetadata: {generateName: web-}\n");
        assert!(m.objects.is_empty());
        assert!(
            m.errors[0].reason.contains("generateName"),
            "{:?}",
            errors(&m)
        );
    }

    #[test]
    fn other_kinds_are_ignored_not_errors() {
        let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative-web}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
";
        let m = parse(text);
        assert!(m.errors.is_empty(), "{:?}", errors(&m));
        assert_eq!(
            summary(&m),
            ["Ignored Deployment", "Ignored Service", "Ignored ConfigMap"]
        );
        let ParsedObject::Ignored { reason, .. } = &m.objects[1] else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "serving.knative.dev/v1 Service knative-web: not a kind Sluice reads"
        );
    }

    #[test]
    fn core_kinds_need_version_v1() {
        let m = parse("apiVersion: v2\nkind: Service\nmetadata: {name: a}\n");
        assert_eq!(
            errors(&m),
            ["manifests/test.yaml: document 1 (line 1): Service v2 is not supported: only v1"]
        );
    }

    #[test]
    fn namespaces_default_like_kubectl_apply() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: a}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: \"\"}
---
apiVersion: v1
kind: Node
metadata: {name: n}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
";
        let m = parse(text);
        // `n` is YAML for false, as kubectl would read it too.
        assert_eq!(
            errors(&m),
            [
                "manifests/test.yaml: document 3 (line 9): Node: metadata.name is a boolean, not a string (quote it)"
            ]
        );
        let ParsedObject::Object(KubeObject::Service(a)) = &m.objects[0] else {
            panic!()
        };
        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        let ParsedObject::Object(KubeObject::Service(b)) = &m.objects[1] else {
            panic!()
        };
        assert_eq!(b.metadata.namespace.as_deref(), Some("default"));
        let ParsedObject::Object(KubeObject::Node(n)) = &m.objects[2] else {
            panic!()
        };
        assert_eq!(n.metadata.namespace, None, "Nodes have no namespace");
    }

    #[test]
    fn empty_files_and_documents_are_nothing() {
        for text in [
            "",
            "\n\n",
            "# just a comment\n",
            "---\n",
            "---\n---\n...\n",
            "null\n",
            "~\n",
        ] {
            let m = parse(text);
            assert!(
                m.objects.is_empty() && m.errors.is_empty(),
                "{text:?}: {:?}",
                errors(&m)
            );
        }
    }
}
