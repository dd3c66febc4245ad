//! Builds the eBPF programs (bpfel-unknown-none, nightly + bpf-linker) and
//! leaves the object in OUT_DIR, where `src/datapath.rs` embeds it. Run
//! `cargo xtask setup` once if this fails for want of a toolchain piece.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("failed to read cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tollgate-ebpf")
        .ok_or_else(|| anyhow!("package tollgate-ebpf not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tollgate-ebpf manifest has no parent directory"))?;
    // `bench-programs`: the object also carries the benchmark programs.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH_PROGRAMS").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("failed to build the eBPF programs; did you run `cargo xtask setup`?")
}
