//! Builds the kernel programs in `auditor-ebpf` for the BPF target with aya-build,
//! so that a plain `cargo build` produces a userspace binary with its eBPF object embedded.
//!
//! The programs are built with the nightly pinned in auditor-ebpf/Cargo.toml
//! (`package.metadata.ebpf.toolchain`), through `rustup run <that nightly> cargo build`:
//! not with the userspace toolchain of rust-toolchain.toml.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "auditor-ebpf")
        .ok_or_else(|| anyhow!("the auditor-ebpf package is not in the workspace"))?;
    let toolchain = ebpf.metadata["ebpf"]["toolchain"]
        .as_str()
        .ok_or_else(|| {
            anyhow!(
                "{}: no `toolchain` string under [package.metadata.ebpf] (the nightly that builds the eBPF programs)",
                ebpf.manifest_path
            )
        })?
        .to_owned();
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("auditor-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| format!("building the eBPF programs with {toolchain} (run `cargo xtask setup` first if bpf-linker or {toolchain} with rust-src is missing)"))
}
