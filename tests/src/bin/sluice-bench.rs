//! `sluice-bench <datapath|cni|control-plane|e2e|memory|all>` (run by `cargo xtask bench`).

// Counts live heap bytes for the memory bench; costs the others nothing
// that matters (one relaxed atomic per allocation in the harness).
#[global_allocator]
static ALLOC: sluice_tests::bench::memory::CountingAlloc =
    sluice_tests::bench::memory::CountingAlloc;

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = which == "all";
    let mut ran = false;
    if all || which == "datapath" {
        sluice_tests::bench::datapath::run()?;
        ran = true;
    }
    if all || which == "cni" {
        sluice_tests::bench::cni::run()?;
        ran = true;
    }
    if all || which == "control-plane" {
        sluice_tests::bench::control_plane::run()?;
        ran = true;
    }
    if all || which == "e2e" {
        sluice_tests::bench::e2e::run()?;
        ran = true;
    }
    if all || which == "memory" {
        sluice_tests::bench::memory::run()?;
        ran = true;
    }
    anyhow::ensure!(
        ran,
        "unknown benchmark {which:?} (datapath, cni, control-plane, e2e, memory, all)"
    );
    Ok(())
}
