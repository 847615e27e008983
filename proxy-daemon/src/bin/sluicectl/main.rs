//! sluicectl: inspect and debug the live datapath from its pinned maps.
//! The arguments are here; each verb is a module of [`verbs`], and every
//! verb's result goes out through one path (a table, or JSON).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod verbs;

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
    /// A process of the node itself (or a hostNetwork pod) sends it: no TC
    /// hook sees it leave; socket load balancing (cgroup/connect4) decides.
    Host,
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
    /// Socket load balancing: the cgroup its programs are attached to, the
    /// scope (host: this node's own sockets; all: pods too), counters, and
    /// each translated socket with the backend it was given and the Service
    /// address getpeername()/recvmsg() show it.
    SocketLb,
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
        /// client is in this node's pod CIDR, the host if it is one of this
        /// node's addresses or loopback, else the uplink).
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

fn run(cli: Cli) -> Result<()> {
    let ctx = verbs::Ctx {
        bpffs: cli.bpffs,
        state_dir: cli.state_dir,
    };
    let report = match cli.command {
        Command::Services => verbs::services::run(&ctx)?,
        Command::Backends => verbs::backends::run(&ctx)?,
        Command::Conntrack { service, flush } => {
            verbs::conntrack::run(&ctx, service.as_deref(), flush)?
        }
        Command::Affinity => verbs::affinity::run(&ctx)?,
        Command::Nodes => verbs::nodes::run(&ctx)?,
        Command::Trace {
            from,
            to,
            proto,
            via,
        } => verbs::trace::run(
            &ctx,
            &from,
            &to,
            match proto {
                TraceProto::Tcp => proxy_common::proto::TCP,
                TraceProto::Udp => proxy_common::proto::UDP,
            },
            via.map(|v| match v {
                Via::Pod => sluice::ctl::trace::Entry::Pod,
                Via::Uplink => sluice::ctl::trace::Entry::Uplink,
                Via::Host => sluice::ctl::trace::Entry::Host,
            }),
        )?,
        Command::Stats => verbs::stats::run(&ctx)?,
        Command::SocketLb => verbs::socket_lb::run(&ctx)?,
        Command::Status => verbs::status::run(&ctx)?,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sluicectl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
    };
    report.print(cli.output == Output::Json)
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
