//! `cargo xtask`: the project's tasks. Every task that needs the toolchain
//! or test tools runs `setup` first; it is idempotent and fast when done.

mod preflight;
mod run;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_testkit::sweep::sweep;

use crate::run::run;

#[derive(Parser)]
#[command(about = "Sluice project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages, rust-src, bpf-linker.
    Setup,
    /// Build release binaries: target/release/{sluiced,sluicectl,sluice-cni}.
    Build,
    /// Lint, then run every test: unit, BPF_PROG_TEST_RUN fixtures, end to end (root).
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this string.
        filter: Option<String>,
    },
    /// rustfmt --check and clippy -D warnings over the workspace.
    Lint,
    /// Simulate a cluster in network namespaces and send traffic through it.
    Demo,
    /// Benchmarks: datapath (BPF_PROG_TEST_RUN), cni, control-plane, e2e, memory.
    Bench {
        /// Which benchmark (default: all).
        #[arg(value_parser = ["datapath", "cni", "control-plane", "memory", "all"], default_value = "all")]
        which: String,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root())
        .env("PATH", setup::path_with_cargo_bin());
    c
}

fn build() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "proxy-daemon",
        "--package",
        "sluice-cni",
        "--package",
        "sluice-tests",
        "--bins",
    ]))?;
    let dir = workspace_root().join("target/release");
    for bin in ["sluiced", "sluicectl", "sluice-cni"] {
        anyhow::ensure!(
            dir.join(bin).exists(),
            "missing {}",
            dir.join(bin).display()
        );
    }
    Ok(())
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "proxy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for its own target (with std crates in the
    // same build, feature unification would pull std into it).
    run(Command::new("rustup")
        .current_dir(workspace_root().join("proxy-ebpf"))
        .env("PATH", setup::path_with_cargo_bin())
        .args(["run", &setup::bpf_toolchain()])
        .args([
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
}

fn test(no_lint: bool, filter: Option<String>) -> Result<()> {
    preflight::check()?;
    sweep();
    if !no_lint {
        lint()?;
    }
    build()?;
    let bin_dir = workspace_root().join("target/release");
    let filter: Vec<String> = filter.into_iter().collect();
    // Unit tests and in-process kernel tests run in parallel; the end-to-end
    // tests share the machine's CPUs with the daemons they start and run one
    // at a time.
    run(cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "sluice-tests",
            "--",
        ])
        .args(&filter))?;
    let result = run(cargo()
        .args(["test", "--release", "--package", "sluice-tests", "--"])
        .args(["--test-threads", "1"])
        .args(&filter)
        .env("SLUICE_BIN_DIR", &bin_dir));
    sweep();
    result
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            build()
        }
        Task::Lint => {
            setup::setup()?;
            lint()
        }
        Task::Test { no_lint, filter } => {
            setup::setup()?;
            test(no_lint, filter)
        }
        Task::Demo => {
            setup::setup()?;
            preflight::check()?;
            sweep();
            build()?;
            run(
                Command::new(workspace_root().join("target/release/sluice-demo"))
                    .env("SLUICE_BIN_DIR", workspace_root().join("target/release")),
            )
        }
        Task::Bench { which } => {
            setup::setup()?;
            preflight::check()?;
            sweep();
            build()?;
            run(
                Command::new(workspace_root().join("target/release/sluice-bench"))
                    .arg(which)
                    .env("SLUICE_BIN_DIR", workspace_root().join("target/release")),
            )
        }
    }
}
