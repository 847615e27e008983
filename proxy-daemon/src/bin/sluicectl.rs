//! sluicectl: inspect and debug the live datapath from its pinned maps.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use sluice::ctl::{snapshot::Snapshot, views};

/// Inspect and debug a node's Sluice datapath: what the kernel actually
/// holds (frontends, backends, connections, counters), with Service names,
/// read from the maps pinned under <bpffs>/sluice. Works whether sluiced is
/// running or not; reading never changes the datapath (only `conntrack
/// --flush` writes). Run it in the node's network namespace, as root.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The BPF filesystem sluiced pins to (its --bpffs).
    #[arg(long, global = true, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// sluiced's state directory (its --state-dir): frontend names, lock.
    #[arg(long, global = true, default_value = "/var/lib/sluice")]
    state_dir: PathBuf,
    /// Output format: aligned tables for people, JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TraceProto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// A pod on this node sends it (from_pod).
    Pod,
    /// It arrives from outside the node (from_netdev).
    Uplink,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every frontend (address:port/protocol, kind, Service) with its backends,
    /// flags and counters (packets, bytes, new connections, refusals).
    Services,
    /// Every backend and the frontends that use it.
    Backends,
    /// Tracked connections: 5-tuple, state, chosen backend, age, expiry,
    /// packets and bytes each way.
    Conntrack {
        /// Only connections of this Service (NAMESPACE/NAME).
        #[arg(long, value_name = "NS/NAME")]
        service: Option<String>,
        /// Delete the listed connections instead of showing them (their next
        /// packet is treated as a new connection).
        #[arg(long)]
        flush: bool,
    },
    /// ClientIP session-affinity entries still in force: client, Service,
    /// pinned backend, when it was last used and when it expires.
    Affinity,
    /// Verdicts and drops by reason, and how full each map is.
    Stats,
    /// Overlay peers as the kernel holds them: node, address, pod CIDR, VTEP
    /// MAC, and whether the route, FDB and neighbour entries are in place.
    Nodes,
    /// Where would this packet go? Runs one synthetic TCP SYN (or UDP
    /// datagram; a plain ACK if the flow is already tracked) through the
    /// datapath program with BPF_PROG_TEST_RUN and prints the verdict, the
    /// backend the flow goes to (for a new flow: the one its connection
    /// would get), and the packet as rewritten.
    ///
    /// Live connections cannot be disturbed: the packet runs through a
    /// private instance of the program, loaded from this binary, whose maps
    /// are private too (pinned under <bpffs>/sluicectl_trace_<pid> and
    /// removed afterwards). They are seeded with copies of the live entries
    /// the packet can read; live maps are only ever read, so the new flow,
    /// affinity and counters the run writes never reach them. The output
    /// says whether the private program is the same code (same tag) as
    /// the one attached on the node.
    Trace {
        /// Client address, with its source port (default 40000).
        #[arg(long, value_name = "ADDR[:PORT]")]
        from: String,
        /// Destination: a frontend, or any address.
        #[arg(long, value_name = "ADDR:PORT")]
        to: String,
        #[arg(long, value_enum)]
        proto: TraceProto,
        /// Hook the packet enters through (default: a pod's veth if the
        /// client is in this node's pod CIDR, else the uplink).
        #[arg(long, value_enum)]
        via: Option<Via>,
    },
    /// Whether the daemon runs, which pins exist, where the programs are attached.
    Status,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Frontend ids of a Service named `ns/name`.
fn service_ids(s: &Snapshot, wanted: &str) -> Result<Vec<u32>> {
    let Some((ns, name)) = wanted.split_once('/') else {
        bail!("--service takes NAMESPACE/NAME, got {wanted:?}");
    };
    let ids: Vec<u32> = s
        .meta
        .frontends
        .iter()
        .filter(|f| f.namespace == ns && f.name == name)
        .map(|f| f.id)
        .collect();
    if ids.is_empty() {
        bail!("no programmed frontend belongs to Service {wanted}");
    }
    Ok(ids)
}

fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Services => {
            let s = Snapshot::read(&cli.bpffs, &cli.state_dir, false)?;
            let rows = views::services(&s);
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", views::services_table(&rows));
            }
        }
        Command::Backends => {
            let s = Snapshot::read(&cli.bpffs, &cli.state_dir, false)?;
            let rows = views::backends(&s);
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", views::backends_table(&rows));
            }
        }
        Command::Conntrack { service, flush } => {
            let s = Snapshot::read(&cli.bpffs, &cli.state_dir, true)?;
            let ids = service.as_deref().map(|w| service_ids(&s, w)).transpose()?;
            if flush {
                let mut maps = sluice::datapath::PinnedMaps::open(&cli.bpffs)?;
                let set = ids.map(|v| v.into_iter().collect());
                let n = sluice::conntrack::flush(&mut maps, set.as_ref())
                    .context("flushing connection tracking")?;
                if json {
                    print_json(&serde_json::json!({ "flushed_entries": n }))?;
                } else {
                    println!("flushed {n} entries");
                }
                return Ok(());
            }
            let rows = views::conntrack(&s, ids.as_deref());
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", views::conntrack_table(&rows));
            }
        }
        Command::Affinity => {
            let s = Snapshot::read(&cli.bpffs, &cli.state_dir, false)?;
            let rows = views::affinity(&s);
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", views::affinity_table(&rows));
            }
        }
        Command::Nodes => {
            let n = sluice::ctl::nodes::collect(&cli.state_dir)?;
            if json {
                print_json(&n)?;
            } else {
                match (&n.device, n.device_up) {
                    (None, _) => println!("overlay: off (sluiced runs with --overlay none)"),
                    (Some(d), Some(up)) => {
                        println!("overlay: {d} {}", if up { "up" } else { "DOWN" })
                    }
                    (Some(d), None) => println!("overlay: {d} MISSING"),
                }
                if let Some(me) = &n.this_node {
                    println!("this node: {me}");
                }
                print!("{}", sluice::ctl::nodes::table(&n));
            }
        }
        Command::Trace {
            from,
            to,
            proto,
            via,
        } => {
            use sluice::ctl::trace;
            let (from, sport) = trace::parse_endpoint(&from, Some(40000))
                .map_err(|e| anyhow::anyhow!("--from {e}"))?;
            let (to, dport) =
                trace::parse_endpoint(&to, None).map_err(|e| anyhow::anyhow!("--to {e}"))?;
            let req = trace::Request {
                from,
                sport,
                to,
                dport,
                proto: match proto {
                    TraceProto::Tcp => proxy_common::proto::TCP,
                    TraceProto::Udp => proxy_common::proto::UDP,
                },
                entry: via.map(|v| match v {
                    Via::Pod => trace::Entry::Pod,
                    Via::Uplink => trace::Entry::Uplink,
                }),
            };
            let o = trace::trace(&cli.bpffs, &req)?;
            if json {
                print_json(&o)?;
            } else {
                print!("{}", trace::render(&o));
            }
        }
        Command::Stats => {
            let s = Snapshot::read(&cli.bpffs, &cli.state_dir, false)?;
            if json {
                print_json(&serde_json::json!({
                    "reasons": views::reasons(&s),
                    "maps": s.fill,
                    "conntrack": s.conntrack,
                    "write_failures": s.write_errors,
                }))?;
            } else {
                let (reasons, maps) = views::stats_tables(&s);
                print!("{reasons}\n{maps}");
            }
        }
        Command::Status => {
            let st = sluice::ctl::status::collect(&cli.bpffs, &cli.state_dir);
            if json {
                print_json(&st)?;
            } else {
                print!("{}", sluice::ctl::status::render(&st));
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sluicectl",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
