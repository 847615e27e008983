//! `sluice-bench <datapath|cni|control-plane|all>` (run by `cargo xtask bench`).

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
    anyhow::ensure!(
        ran,
        "unknown benchmark {which:?} (datapath, cni, control-plane, all)"
    );
    Ok(())
}
