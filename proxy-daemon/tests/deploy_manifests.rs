//! Every manifest in deploy/ parses into its k8s-openapi type, and the
//! objects agree with each other and with sluiced: the role grants exactly
//! what the watchers use, the DaemonSet's flags exist, the container has
//! only the capabilities the datapath was measured to need.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::de::DeserializeOwned,
};
use serde_json::Value;

#[derive(Default)]
struct Deploy {
    daemonsets: Vec<DaemonSet>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn typed<T: DeserializeOwned>(doc: Value, what: &str) -> T {
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Parses every YAML document of every `.yaml` file, as `kubectl apply -f
/// deploy/` would read them; an unknown kind fails the test.
fn load() -> Deploy {
    let mut d = Deploy::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, chunk) in text.split("\n---\n").enumerate() {
            let what = format!("{} document {}", file.display(), i + 1);
            let doc: Value =
                serde_saphyr::from_str(chunk).unwrap_or_else(|e| panic!("{what}: {e}"));
            if doc.is_null() {
                continue;
            }
            let kind = (doc["apiVersion"].as_str(), doc["kind"].as_str());
            match kind {
                (Some("apps/v1"), Some("DaemonSet")) => d.daemonsets.push(typed(doc, &what)),
                (Some("v1"), Some("ServiceAccount")) => d.accounts.push(typed(doc, &what)),
                (Some("v1"), Some("ConfigMap")) => d.config_maps.push(typed(doc, &what)),
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                    d.roles.push(typed(doc, &what))
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                    d.bindings.push(typed(doc, &what))
                }
                other => panic!("{what}: unexpected object {other:?}"),
            }
        }
    }
    d
}

fn sluiced(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.name == "sluiced")
        .expect("a sluiced container")
}

fn capabilities(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_default();
    (
        caps.add.unwrap_or_default().into_iter().collect(),
        caps.drop.unwrap_or_default().into_iter().collect(),
    )
}

#[test]
fn every_manifest_parses_into_its_type() {
    let d = load();
    assert_eq!(d.daemonsets.len(), 1);
    assert_eq!(d.accounts.len(), 1);
    assert_eq!(d.roles.len(), 1);
    assert_eq!(d.bindings.len(), 1);
    assert_eq!(d.config_maps.len(), 1);
}

#[test]
fn the_role_reads_services_endpointslices_and_nodes_only() {
    let d = load();
    let mut granted = BTreeSet::new();
    for rule in d.roles[0].rules.as_ref().unwrap() {
        for group in rule.api_groups.as_ref().unwrap() {
            for resource in rule.resources.as_ref().unwrap() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    }
    let mut want = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["get", "list", "watch"] {
            want.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, want);
}

#[test]
fn the_binding_ties_the_role_to_the_daemonsets_account() {
    let d = load();
    let b = &d.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), d.roles[0].metadata.name.as_ref());
    let sa = &d.accounts[0].metadata;
    let subjects = b.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.namespace);
    let pod = d.daemonsets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name, sa.name);
    assert_eq!(d.daemonsets[0].metadata.namespace, sa.namespace);
}

#[test]
fn the_daemonset_runs_on_the_host_network_with_minimal_capabilities() {
    let d = load();
    let ds = &d.daemonsets[0];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let main = sluiced(ds);
    let (add, drop) = capabilities(main);
    assert_eq!(drop, BTreeSet::from(["ALL".to_string()]));
    assert_eq!(
        add,
        ["BPF", "NET_ADMIN", "PERFMON"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let sc = main.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let (init_add, init_drop) = capabilities(init);
    assert!(init_add.is_empty(), "the installer only copies files");
    assert_eq!(init_drop, BTreeSet::from(["ALL".to_string()]));

    // Host paths: bpffs for the pins, the CNI directories for the
    // installer, the state directory shared with the plugin.
    let volumes = pod.volumes.as_ref().unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
    };
    let mounted = |c: &Container, path: &str| -> String {
        let m = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{} does not mount {path}", c.name));
        host_path(&m.name)
    };
    assert_eq!(mounted(main, "/sys/fs/bpf"), "/sys/fs/bpf");
    // The plugin runs on the host with the conflist's paths: the same
    // inside and out.
    assert_eq!(mounted(main, "/var/lib/sluice"), "/var/lib/sluice");
    assert_eq!(mounted(main, "/host/etc/cni/net.d"), "/etc/cni/net.d");
    assert_eq!(mounted(init, "/host/opt/cni/bin"), "/opt/cni/bin");
    assert_eq!(mounted(init, "/host/etc/cni/net.d"), "/etc/cni/net.d");
    let args = init.command.as_ref().unwrap();
    assert!(args.contains(&"--install-cni-to=/host/opt/cni/bin".to_string()));
    assert!(args.contains(&"--cni-conf-dir=/host/etc/cni/net.d".to_string()));

    // Probes on kube-proxy's healthz port, which sluiced serves.
    let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| match &p
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap()
        .port
    {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
        other => panic!("{other:?}"),
    };
    assert_eq!(probe_port(&main.liveness_probe), 10256);
    assert_eq!(probe_port(&main.readiness_probe), 10256);
    assert!(
        main.command
            .as_ref()
            .unwrap()
            .contains(&"--healthz-addr=0.0.0.0:10256".to_string())
    );
}

#[test]
fn every_flag_the_daemonset_passes_exists_in_sluiced() {
    let help = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let d = load();
    let pod = d.daemonsets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    let mut checked = 0;
    for c in containers {
        let cmd = c.command.as_ref().unwrap();
        assert_eq!(cmd[0], "/usr/local/bin/sluiced", "{}", c.name);
        for arg in &cmd[1..] {
            let flag = arg.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{}: sluiced has no {flag}",
                c.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 10);
    // Every $(VAR) the commands use is defined in the container's env.
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        for arg in c.command.iter().flatten() {
            if let Some(var) = arg.split("$(").nth(1).and_then(|v| v.split(')').next()) {
                assert!(env.contains(var), "{}: $({var}) is not defined", c.name);
            }
        }
        // In-cluster configuration needs the API server's real address.
        assert!(env.contains("KUBERNETES_SERVICE_HOST"), "{}", c.name);
    }
}

#[test]
fn config_map_keys_referenced_by_the_daemonset_exist() {
    let d = load();
    let cm = &d.config_maps[0];
    let data = cm.data.as_ref().unwrap();
    let pod = d.daemonsets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
            else {
                continue;
            };
            assert_eq!(Some(&r.name), cm.metadata.name.as_ref());
            assert!(data.contains_key(&r.key), "{}: no key {}", c.name, r.key);
        }
    }
    data["cluster-cidr"]
        .parse::<ipnetwork::Ipv4Network>()
        .expect("cluster-cidr is a CIDR");
}
