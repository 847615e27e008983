//! Machine set-up: what a fresh machine of this kind lacks to build and
//! test Sluice. Every step checks before it acts, so running it again is
//! cheap (well under a second when everything is in place).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run::{output, run, tool_ok};

/// Debian packages the tests, demo and benchmarks use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iptables",
    "nftables",
    "iperf3",
    "bpftool",
    "containernetworking-plugins",
    // A real runtime driving sluice-cni (tests/tests/runtime.rs): podman's
    // CNI backend, crun, and a static busybox for the test image.
    "podman",
    "crun",
    "busybox-static",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The toolchain that builds the eBPF crate (`SLUICE_BPF_TOOLCHAIN`, as
/// proxy-daemon's build script reads it; `nightly` by default).
pub fn bpf_toolchain() -> String {
    std::env::var("SLUICE_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

/// Where bpf-linker's libLLVM shim lives; bpf-linker keeps an rpath to it.
fn shim_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map_or_else(|| home().join(".cache"), PathBuf::from)
        .join("sluice/llvm-shim")
}

pub fn setup() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn package_installed(p: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let toolchain = bpf_toolchain();
    let list = || {
        output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            &toolchain,
            "--installed",
        ]))
    };
    let installed = match list() {
        Ok(l) => l,
        Err(_) => {
            // The eBPF crate needs nightly (build-std); a machine without
            // it gets one, with rust-src, once.
            eprintln!("setup: installing the {toolchain} toolchain with rust-src");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                &toolchain,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            list().context("the nightly toolchain is required for the eBPF crate")?
        }
    };
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin().join("bpf-linker");
    if output(Command::new(&bin).arg("--version")).is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's libLLVM"
    );
    let sysroot = output(Command::new("rustc").args([
        &format!("+{}", bpf_toolchain()),
        "--print",
        "sysroot",
    ]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", libdir.display()))?;
    let llvm_major = lib
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from the library name")?
        .to_string();
    let shim = shim_dir();
    std::fs::create_dir_all(shim.join("bin"))?;
    std::fs::create_dir_all(shim.join("lib"))?;
    let config = shim.join("bin/llvm-config");
    std::fs::write(&config, format!("#!/bin/sh\necho {llvm_major}.1.0\n"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755))?;
    for name in [
        "libLLVM.so".to_string(),
        lib.file_name().unwrap().to_string_lossy().into_owned(),
    ] {
        let link = shim.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &shim))?;
    if !tool_ok(&bin) {
        bail!(
            "bpf-linker was installed but does not run: {}",
            bin.display()
        );
    }
    Ok(())
}

/// PATH with cargo's bin directory first, so aya-build finds bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut parts = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&p).filter(|d| *d != cargo_bin()));
    }
    std::env::join_paths(parts).expect("valid PATH")
}
