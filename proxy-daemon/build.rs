//! Builds the eBPF programs (proxy-ebpf) with aya-build and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With AYA_BUILD_SKIP=1 (clippy, docs, machines without bpf-linker) an empty
//! placeholder is written instead; loading it fails at run time with an error
//! that says how the binary was built.

use std::{env, fs, path::PathBuf};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("proxy-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.join("../proxy-ebpf");
    let root = root.to_str().expect("UTF-8 path");
    if skip {
        if !object.exists() {
            fs::write(&object, b"").expect("write placeholder");
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .expect("building the eBPF programs failed (is bpf-linker installed? run `cargo xtask setup`)");
}
