//! Builds the kernel programs in `auditor-ebpf` for the BPF target with aya-build,
//! so that a plain `cargo build` produces a userspace binary with its eBPF object embedded.
//!
//! The programs are built with the nightly pinned in auditor-ebpf/Cargo.toml
//! (`package.metadata.ebpf.toolchain`), through `rustup run <that nightly> cargo build`:
//! not with the userspace toolchain of rust-toolchain.toml.
//!
//! With `AYA_BUILD_SKIP=1` (aya-build's own switch) nothing is built and an empty
//! placeholder object is embedded instead, so that the userspace crate and its pure tests
//! build on stable with no eBPF toolchain; `Probe::load` then refuses with a message
//! saying so.
use anyhow::{anyhow, Context as _};

/// The objects' file names in `OUT_DIR`: the eBPF crate's bin targets (the recorder's
/// programs, and the drill's, which alone can drop packets).
const OBJECTS: [&str; 2] = ["auditor-probes", "auditor-drill"];

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        for object in OBJECTS {
            let placeholder = std::path::Path::new(&out_dir).join(object);
            // Empty, also over an object of an earlier build: never a stale program.
            std::fs::write(&placeholder, b"")
                .with_context(|| format!("write {}", placeholder.display()))?;
        }
        println!("cargo::warning=AYA_BUILD_SKIP is set: the eBPF programs are not built; this auditor cannot record");
        return Ok(());
    }
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
