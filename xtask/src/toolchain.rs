//! The two toolchains pinned in the repository, read from the files the builds take them
//! from, and installed with rustup when something is missing:
//!
//! - userspace: rust-toolchain.toml (`[toolchain]` channel, components, targets), which
//!   rustup's cargo proxy uses for every cargo command in the repository;
//! - eBPF: `[package.metadata.ebpf] toolchain` in auditor-ebpf/Cargo.toml, the nightly that
//!   auditor/build.rs hands to aya-build; it needs rust-src for `-Z build-std=core`.
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{run, step};

/// One pinned toolchain and what the project needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// What it builds, for the messages.
    pub what: &'static str,
    /// The rustup toolchain name (`1.99.1`, `nightly-2026-08-01`).
    pub channel: String,
    pub components: Vec<String>,
    pub targets: Vec<String>,
}

#[derive(Debug)]
pub struct Pins {
    pub user: Toolchain,
    pub ebpf: Toolchain,
}

impl Pins {
    pub fn read(root: &Path) -> Result<Pins> {
        let path = root.join("rust-toolchain.toml");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let channel = value(&text, "toolchain", "channel")
            .and_then(string)
            .with_context(|| {
                format!(
                    "{}: no `channel = \"...\"` under [toolchain]",
                    path.display()
                )
            })?;
        let user = Toolchain {
            what: "userspace",
            channel,
            components: value(&text, "toolchain", "components")
                .and_then(list)
                .unwrap_or_default(),
            targets: value(&text, "toolchain", "targets")
                .and_then(list)
                .unwrap_or_default(),
        };
        let path = root.join("auditor-ebpf/Cargo.toml");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let channel = value(&text, "package.metadata.ebpf", "toolchain")
            .and_then(string)
            .with_context(|| {
                format!(
                    "{}: no `toolchain = \"...\"` under [package.metadata.ebpf]",
                    path.display()
                )
            })?;
        let ebpf = Toolchain {
            what: "eBPF",
            channel,
            components: vec!["rust-src".to_owned()],
            targets: Vec::new(),
        };
        Ok(Pins { user, ebpf })
    }
}

/// The raw value of `key` in `[section]`: enough TOML for the two pins (one-line strings
/// and arrays of strings).
fn value<'a>(text: &'a str, section: &str, key: &str) -> Option<&'a str> {
    let header = format!("[{section}]");
    let mut inside = false;
    for line in text.lines() {
        let line = line.split_once('#').map_or(line, |(l, _)| l).trim();
        if line.starts_with('[') {
            inside = line == header;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim());
                }
            }
        }
    }
    None
}

fn string(v: &str) -> Option<String> {
    v.strip_prefix('"')?.strip_suffix('"').map(str::to_owned)
}

fn list(v: &str) -> Option<Vec<String>> {
    v.strip_prefix('[')?
        .strip_suffix(']')?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(string)
        .collect()
}

/// What `rustup component list --installed` must show for `t`: its components (listed
/// as `name` or `name-<host>`) and `rust-std-<target>` for each target.
fn missing(t: &Toolchain, installed: &[String]) -> Vec<String> {
    let has = |c: &str| {
        installed
            .iter()
            .any(|i| i == c || i.strip_prefix(c).is_some_and(|r| r.starts_with('-')))
    };
    let mut out: Vec<String> = t.components.iter().filter(|c| !has(c)).cloned().collect();
    out.extend(
        t.targets
            .iter()
            .filter(|target| !installed.iter().any(|i| *i == format!("rust-std-{target}")))
            .map(|target| format!("target {target}")),
    );
    out
}

/// The installed components of `channel`, or `None` if the toolchain is not installed.
fn installed_components(channel: &str) -> Option<Vec<String>> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", channel])
        // A check must not install: rustup would otherwise fetch the toolchain here.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

/// Installs `t` with its components and targets unless all of them are there.
pub fn ensure(t: &Toolchain) -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "toolchain",
        "install",
        &t.channel,
        "--profile",
        "minimal",
        "--no-self-update",
    ]);
    if !t.components.is_empty() {
        cmd.args(["--component", &t.components.join(",")]);
    }
    if !t.targets.is_empty() {
        cmd.args(["--target", &t.targets.join(",")]);
    }
    let wanted = t
        .components
        .iter()
        .chain(&t.targets)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match installed_components(&t.channel) {
        Some(installed) if missing(t, &installed).is_empty() => {
            step(&format!(
                "{} toolchain {} ({wanted}): present",
                t.what, t.channel
            ));
            return Ok(());
        }
        Some(installed) => step(&format!(
            "{} toolchain {}: adding {} ({cmd:?})",
            t.what,
            t.channel,
            missing(t, &installed).join(", ")
        )),
        None => step(&format!(
            "{} toolchain {}: installing it ({cmd:?})",
            t.what, t.channel
        )),
    }
    run(&mut cmd).with_context(|| format!("install the {} toolchain {}", t.what, t.channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_pins_both_toolchains() {
        let pins = Pins::read(&crate::root()).unwrap();
        assert!(
            pins.user
                .channel
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit()),
            "the userspace toolchain is a stable release: {:?}",
            pins.user
        );
        assert!(
            pins.user
                .targets
                .iter()
                .any(|t| t == crate::image::MUSL_TARGET),
            "rust-toolchain.toml lists the image's target: {:?}",
            pins.user
        );
        assert!(
            pins.ebpf.channel.starts_with("nightly-"),
            "the eBPF toolchain is a dated nightly: {:?}",
            pins.ebpf
        );
    }

    #[test]
    fn deploy_dockerfile_builds_with_the_pinned_toolchains() {
        let pins = Pins::read(&crate::root()).unwrap();
        let path = crate::root().join("deploy/Dockerfile");
        let text = std::fs::read_to_string(&path).unwrap();
        let from = format!("FROM rust:{}-bookworm AS builder", pins.user.channel);
        let nightly = format!("ARG RUST_NIGHTLY={}", pins.ebpf.channel);
        for line in [from, nightly] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "{}: expected the line `{line}` (rust-toolchain.toml and auditor-ebpf/Cargo.toml pin the toolchains)",
                path.display()
            );
        }
    }

    #[test]
    fn values_are_read_from_their_section_only() {
        let text = "[other]\nchannel = \"no\"\n[toolchain] # the one\nchannel = \"1.99.1\" # pinned\ntargets = [\"a\", \"b\",]\ncomponents = []\n";
        assert_eq!(
            value(text, "toolchain", "channel")
                .and_then(string)
                .as_deref(),
            Some("1.99.1")
        );
        assert_eq!(
            value(text, "toolchain", "targets").and_then(list),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            value(text, "toolchain", "components").and_then(list),
            Some(vec![])
        );
        assert_eq!(value(text, "toolchain", "profile"), None);
        assert_eq!(value(text, "nope", "channel"), None);
    }

    #[test]
    fn missing_components_and_targets_are_named() {
        let t = Toolchain {
            what: "userspace",
            channel: "1.99.1".into(),
            components: vec!["clippy".into(), "rust-src".into()],
            targets: vec!["x86_64-unknown-linux-musl".into()],
        };
        let installed: Vec<String> = [
            "cargo-x86_64-unknown-linux-gnu",
            "clippy-x86_64-unknown-linux-gnu",
            "rust-std-x86_64-unknown-linux-gnu",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            missing(&t, &installed),
            ["rust-src", "target x86_64-unknown-linux-musl"]
        );
        let mut all = installed;
        all.extend(["rust-src", "rust-std-x86_64-unknown-linux-musl"].map(String::from));
        assert!(missing(&t, &all).is_empty());
    }
}
