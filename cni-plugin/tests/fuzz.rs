//! Property tests: whatever the runtime throws at the plugin, it answers with
//! success or a CNI error JSON, never panics or hangs, and never leaves state
//! behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures are reported, not written into the source tree.
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    }
}

/// Arbitrary JSON whose object keys are often ones the plugin reads.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("10.0.0.2/24"),
            Just("1.0.0"),
            Just("eth0"),
            Just("0.0.0.0/0"),
            Just("fd00::1/64")
        ]
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("cniVersion".to_owned()),
        Just("name".to_owned()),
        Just("podCIDR".to_owned()),
        Just("mtu".to_owned()),
        Just("interfaces".to_owned()),
        Just("ips".to_owned()),
        Just("routes".to_owned()),
        Just("address".to_owned()),
        Just("interface".to_owned()),
        Just("gateway".to_owned()),
        Just("sandbox".to_owned()),
        ".{0,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Pure parsers, in process: no panic on any input.
#[test]
fn parsers_never_panic() {
    let mut runner = TestRunner::new(config(2000));
    runner
        .run(&arb_json(), |v| {
            if let Value::Object(m) = &v {
                let _ = sluice_net::cni::conf::NetConf::from_object(m);
            }
            let _ = sluice_cni::result::CniResult::from_json(&v);
            Ok(())
        })
        .unwrap();
    let mut runner = TestRunner::new(config(2000));
    runner
        .run(
            &prop::collection::vec((".{0,12}", ".{0,40}"), 0..8),
            |vars| {
                let vars = vars
                    .into_iter()
                    .map(|(k, v)| (format!("CNI_{k}").into(), v.into()));
                if let Ok(env) = sluice_cni::env::CniEnv::from_vars(vars) {
                    let _ = env.command();
                    let _ = env.attachment();
                    let _ = env.args();
                }
                Ok(())
            },
        )
        .unwrap();
}

#[derive(Debug, Clone)]
struct Case {
    command: Option<String>,
    cid: Option<String>,
    netns: Option<usize>, // index into the netns choices
    netns_junk: String,
    ifname: Option<String>,
    path: bool,
    args: Option<String>,
    stdin: Stdin,
}

#[derive(Debug, Clone)]
enum Stdin {
    Bytes(Vec<u8>),
    Conf(Value),
}

fn weighted<T: Clone + std::fmt::Debug + 'static>(
    good: T,
    bad: BoxedStrategy<T>,
) -> BoxedStrategy<T> {
    prop_oneof![6 => Just(good), 1 => bad].boxed()
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let verb = |v: &str| Some(v.to_owned());
    let command = prop_oneof![
        4 => Just(verb("ADD")),
        2 => Just(verb("DEL")),
        2 => Just(verb("CHECK")),
        1 => Just(verb("STATUS")),
        1 => Just(verb("GC")),
        1 => Just(verb("VERSION")),
        1 => "[A-Za-z]{0,6}".prop_map(Some),
        1 => Just(None),
    ];
    let cid = prop_oneof![8 => Just(Some("fz1".to_owned())), 1 => "[ -~]{0,12}".prop_map(Some), 1 => Just(None)];
    let ifname = prop_oneof![
        8 => Just(Some("eth0".to_owned())),
        1 => Just(Some("lo".to_owned())),
        1 => "[ -~]{0,17}".prop_map(Some),
        1 => Just(None),
    ];
    let args = prop_oneof![
        4 => Just(None),
        1 => Just(Some("IgnoreUnknown=1;K8S_POD_NAME=x".to_owned())),
        1 => "[ -~]{0,16}".prop_map(Some),
    ];
    let conf = (
        weighted(json!("1.1.0"), prop_oneof![Just(json!("0.3.1")), Just(json!("0.4.0")), Just(json!("1.0.0")), "[0-9.]{0,6}".prop_map(Value::from), Just(json!(1))].boxed()),
        weighted(json!("fuzz"), prop_oneof!["[a-z0-9._-]{0,8}".prop_map(Value::from), Just(Value::Null)].boxed()),
        weighted(
            json!("10.250.0.0/24"),
            prop_oneof![
                Just(json!("10.250.0.0/30")),
                Just(json!("10.250.0.5/24")),
                Just(json!("fd00::/64")),
                "[0-9./]{0,18}".prop_map(Value::from),
            ]
            .boxed(),
        ),
        weighted(json!(1500), prop_oneof![any::<i64>().prop_map(Value::from), Just(json!("1500")), Just(Value::Null)].boxed()),
        weighted(json!("fz0"), prop_oneof![Just(json!("lo")), "[a-z0-9]{0,17}".prop_map(Value::from)].boxed()),
        prop::option::of(arb_json()),
        prop::option::of(prop::collection::vec(
            (prop_oneof![Just("fz1"), Just("fz2")], prop_oneof![Just("eth0"), Just("x")]),
            0..3,
        )),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(ver, name, cidr, mtu, bridge, prev, valid, ipam)| {
            let mut c = json!({"cniVersion": ver, "name": name, "type": "sluice-cni", "podCIDR": cidr, "mtu": mtu, "bridge": bridge});
            if let Some(p) = prev {
                c["prevResult"] = p;
            }
            if let Some(v) = valid {
                c["cni.dev/valid-attachments"] =
                    v.into_iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
            }
            if ipam {
                c["ipam"] = json!({"type": "host-local"});
            }
            c
        });
    let stdin = prop_oneof![
        4 => conf.prop_map(Stdin::Conf),
        1 => prop::collection::vec(any::<u8>(), 0..160).prop_map(Stdin::Bytes),
    ];
    (
        command,
        cid,
        prop::option::weighted(
            0.9,
            prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
        ),
        "[a-z/]{0,10}",
        ifname,
        prop::bool::weighted(0.9),
        args,
        stdin,
    )
        .prop_map(
            |(command, cid, netns, netns_junk, ifname, path, args, stdin)| Case {
                command,
                cid,
                netns,
                netns_junk,
                ifname,
                path,
                args,
                stdin,
            },
        )
}

fn invocation(case: &Case, node: &Node, pod: &NetNs, command: Option<&str>) -> Invocation {
    let mut vars = Vec::new();
    if let Some(c) = command {
        vars.push(("CNI_COMMAND".to_owned(), c.to_owned()));
    }
    if let Some(c) = &case.cid {
        vars.push(("CNI_CONTAINERID".into(), c.clone()));
    }
    if let Some(i) = case.netns {
        // Never anything that could name the init namespace: the junk has
        // no digits, so it cannot spell /proc/<pid>/ns/net.
        let ns = match i {
            0 => pod.path_str(),
            1 => "/run/netns/slcni-nonexistent".to_owned(),
            2 => "/proc/self/ns/net".to_owned(),
            _ => case.netns_junk.clone(),
        };
        vars.push(("CNI_NETNS".into(), ns));
    }
    if let Some(i) = &case.ifname {
        vars.push(("CNI_IFNAME".into(), i.clone()));
    }
    if case.path {
        vars.push(("CNI_PATH".into(), "/usr/lib/cni".into()));
    }
    if let Some(a) = &case.args {
        vars.push(("CNI_ARGS".into(), a.clone()));
    }
    let stdin = match &case.stdin {
        Stdin::Bytes(b) => b.clone(),
        Stdin::Conf(c) => {
            // Always our directories: the fuzzer must not reach real paths.
            let mut c = c.clone();
            c["stateDir"] = json!(node.state.path());
            c["bpffs"] = json!(node.bpf.dir());
            serde_json::to_vec(&c).unwrap()
        }
    };
    Invocation { vars, stdin }
}

fn run(inv: &Invocation, node: &Node) -> (bool, String) {
    let out = wait_with_timeout(inv.spawn(&node.ns), Duration::from_secs(30));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every reservation in every network's store under the state dir.
fn reservations(state: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let Ok(dir) = std::fs::read_dir(state.join("ipam")) else {
        return all;
    };
    for net in dir.flatten() {
        for f in std::fs::read_dir(net.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                name == "lock" || name == "allocations.json",
                "stray file {name}"
            );
            if name == "allocations.json" {
                let v: Value = serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
                for a in v["allocations"].as_array().unwrap() {
                    all.push(a.to_string());
                }
            }
        }
    }
    all
}

/// The binary, in a test node namespace, under random environments and
/// stdin: a CNI reply every time, and no state left once an ADD that
/// succeeded is DELeted.
#[test]
fn plugin_answers_everything_and_leaves_nothing() {
    const CASES: u32 = 400;
    let node = Node::new("fz", "10.250.0.0/24");
    let pod = NetNs::new("fzpod").unwrap();
    let successes = std::cell::Cell::new(0u32);
    let adds = std::cell::Cell::new(0u32);
    let property = |case: Case| -> Result<(), TestCaseError> {
        let inv = invocation(&case, &node, &pod, case.command.as_deref());
        let (ok, stdout) = run(&inv, &node);
        if ok {
            successes.set(successes.get() + 1);
            if !stdout.is_empty() {
                let v: Value = serde_json::from_str(&stdout).map_err(|e| {
                    TestCaseError::fail(format!("bad success JSON {stdout:?}: {e}"))
                })?;
                prop_assert!(v.is_object());
                prop_assert!(v["cniVersion"].is_string());
            }
        } else {
            let v: Value = serde_json::from_str(&stdout)
                .map_err(|e| TestCaseError::fail(format!("bad error JSON {stdout:?}: {e}")))?;
            prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0), "{}", stdout);
            prop_assert!(v["msg"].is_string(), "{}", stdout);
            prop_assert!(v["details"].is_string(), "{}", stdout);
            prop_assert!(v["cniVersion"].is_string(), "{}", stdout);
        }
        if ok && case.command.as_deref() == Some("ADD") {
            adds.set(adds.get() + 1);
            let (del_ok, del_out) = run(&invocation(&case, &node, &pod, Some("DEL")), &node);
            prop_assert!(del_ok, "DEL after a successful ADD failed: {}", del_out);
        }
        prop_assert_eq!(reservations(node.state.path()), Vec::<String>::new());
        prop_assert_eq!(node.host_veths(), Vec::<String>::new());
        prop_assert_eq!(pod.link_names(), vec!["lo".to_owned()]);
        Ok(())
    };
    // Hand-picked cases first, so the success paths are always exercised.
    let good = Case {
        command: Some("ADD".into()),
        cid: Some("fz1".into()),
        netns: Some(0),
        netns_junk: String::new(),
        ifname: Some("eth0".into()),
        path: true,
        args: None,
        stdin: Stdin::Conf(
            json!({"cniVersion": "1.1.0", "name": "fuzz", "podCIDR": "10.250.0.0/24"}),
        ),
    };
    property(good.clone()).unwrap();
    let mut lo_bridge = good.clone();
    lo_bridge.stdin = Stdin::Conf(
        json!({"cniVersion": "1.0.0", "name": "fuzz", "podCIDR": "10.250.0.0/24", "bridge": "lo"}),
    );
    property(lo_bridge).unwrap();
    property(Case {
        ifname: Some("lo".into()),
        ..good.clone()
    })
    .unwrap();
    property(Case {
        netns: Some(2),
        ..good.clone()
    })
    .unwrap();
    property(Case { command: Some("GC".into()), stdin: Stdin::Conf(json!({"cniVersion": "1.1.0", "name": "fuzz", "podCIDR": "10.250.0.0/24", "cni.dev/valid-attachments": []})), ..good }).unwrap();

    let mut runner = TestRunner::new(config(CASES));
    runner.run(&case_strategy(), property).unwrap();
    let (successes, adds) = (successes.get(), adds.get());
    eprintln!("{successes} of {CASES} invocations succeeded, {adds} of them ADDs");
    assert!(
        successes > 10 && adds > 1,
        "the generator should reach the success paths too"
    );
}
