//! Builds the eBPF programs (crate proxy-ebpf) for bpfel-unknown-none with
//! the nightly toolchain and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! This does what aya-build does (`rustup run nightly cargo build -Z
//! build-std=core`, BTF on) plus a code generation flag aya-build has no
//! way to pass: `target-cpu=v3` (32-bit ALU and jumps, in the kernel since
//! 5.1), which makes the programs smaller and faster. (LLVM's
//! `allows-misaligned-mem-access` would make packet reads cheaper still, but
//! it also misaligns stack slots, which the verifier rejects.)
//!
//! With AYA_BUILD_SKIP=1 (clippy, docs, machines without bpf-linker) an
//! empty placeholder is written instead; loading it fails at run time with
//! an error that says how the binary was built.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "proxy-ebpf";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join(PACKAGE);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, b"").expect("write placeholder");
        }
        return;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir.parent().expect("crate inside the workspace");
    for dir in ["proxy-ebpf", "proxy-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    // The container image pins a dated nightly; machines use `nightly`.
    println!("cargo:rerun-if-env-changed=SLUICE_BPF_TOOLCHAIN");
    let toolchain = env::var("SLUICE_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets it");
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ];
    // A target directory of its own: cargo must not wait for the lock the
    // outer build holds on the workspace's.
    let target_dir = out_dir.join("ebpf-target");
    let status = Command::new("rustup")
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "--release",
            "--package",
            PACKAGE,
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .status()
        .expect(
            "running `rustup run nightly cargo` (is rustup installed? run `cargo xtask setup`)",
        );
    assert!(
        status.success(),
        "building the eBPF programs failed (bpf-linker missing? run `cargo xtask setup`)"
    );
    let built: &Path = &target_dir.join(TARGET).join("release").join(PACKAGE);
    fs::copy(built, &object).expect("copying the eBPF object to OUT_DIR");
}
