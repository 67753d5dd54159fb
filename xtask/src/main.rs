//! Project tasks that need root or system tools: setup, the test suite, the demo.
//!
//! `cargo xtask setup`  installs what a fresh Debian 12 machine lacks (idempotent).
//! `cargo xtask test`   setup + every test: unit (also without the eBPF build), privileged integration, deploy checks.
//! `cargo xtask demo`   setup + the main job on a simulated node.
//! `cargo xtask bench`  release build + every benchmark of issue 7; writes BENCHMARKS.md.
//! `cargo xtask image`  the agent image (static musl binary, FROM scratch) built with podman.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod image;
mod toolchain;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "auditor project tasks (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install system packages, the pinned toolchains (userspace and eBPF nightly), bpf-linker; mount tracefs. Idempotent.
    Setup,
    /// Run setup, then all tests: unit tests, privileged integration tests (one thread), deploy checks.
    Test {
        /// Only run tests whose name contains this string (passed to the test harnesses).
        filter: Option<String>,
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
    },
    /// Run setup, then the demo: real ffmpeg pipelines on a simulated node, recorded and reported.
    Demo {
        /// Where the flow log and report go.
        #[arg(long, default_value = "out/demo")]
        output: PathBuf,
        #[arg(long)]
        no_setup: bool,
    },
    /// Build the agent image with podman (no registry, no Docker engine): a static musl
    /// `auditor` in deploy/Dockerfile's FROM scratch runtime stage, tagged
    /// ghcr.io/auditor-dev/auditor:<version>.
    ///
    /// Example: sudo -E cargo xtask image --tag registry.example/auditor:0.1.0 --output auditor.oci.tar
    Image {
        /// Further tags, besides ghcr.io/auditor-dev/auditor:<version> (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Also write the image to this file as an oci-archive (`podman save`), to push from elsewhere.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        no_setup: bool,
    },
    /// Build release binaries and run every benchmark (as root, about 10 minutes); writes BENCHMARKS.md.
    ///
    /// Example: sudo -E cargo xtask bench --no-setup
    Bench {
        /// Where the report goes (relative to the repository root).
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
        /// Interleaved repetitions of every figure (at least 5 for published figures).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only these figures, comma-separated (1-6, e = offline against external peers, c = collect at 100 agents, v = cluster view, s = soak, p = bpf stats and the bpftrace peers beside them); default all.
        #[arg(long)]
        only: Option<String>,
        /// Length of the soak figure (30,000 new flows/s with default settings).
        #[arg(long, default_value_t = 600)]
        soak_secs: u64,
        #[arg(long)]
        no_setup: bool,
    },
}

const APT_PACKAGES: &[&str] = &[
    // bpf-linker builds against LLVM 22
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // tests and demo
    "nftables",
    "iproute2",
    "ffmpeg",
    "curl",
    "dnsmasq-base",
    "python3",
    "python3-venv",
    "procps",
    "bpftool",
    // the bench's peers (figure P): bpftrace loggers beside the recorder
    "bpftrace",
    "util-linux",
    // promtool, Alertmanager
    "prometheus",
    "prometheus-alertmanager",
    // report test: the HTML report opened headless
    "chromium",
    // cargo xtask image and the container test: podman with runc (crun refuses hybrid
    // cgroups), musl-gcc for ring's C code in the static build, the CA bundle the image carries,
    // strip for the image's binary
    "podman",
    "runc",
    "musl-tools",
    "ca-certificates",
    "binutils",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_owned()
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() == 0 }
}

extern "C" {
    fn geteuid() -> u32;
}

fn setup() -> Result<()> {
    if !is_root() {
        bail!("setup installs packages and loads eBPF programs: run it as root (sudo -E cargo xtask ...)");
    }
    // 1. Debian packages
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])) || !dpkg_installed(p)
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
    } else {
        step(&format!(
            "Debian packages: installing {}",
            missing.join(" ")
        ));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // 2. the pinned toolchains: userspace (rust-toolchain.toml, with the musl target of
    // `cargo xtask image`) and the eBPF nightly with rust-src (auditor/build.rs runs
    // `rustup run <nightly> cargo build -Z build-std=core` through aya-build)
    let pins = toolchain::Pins::read(&root())?;
    for t in [&pins.user, &pins.ebpf] {
        toolchain::ensure(t)?;
    }
    // 3. bpf-linker
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || home_bin("bpf-linker").is_file();
    if linker_ok {
        step("bpf-linker: present");
    } else {
        step("bpf-linker: building it (cargo install bpf-linker 0.13 against LLVM 22; about 5 minutes on 2 cores)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    // 4. tracefs
    let tracefs = Path::new("/sys/kernel/tracing");
    if tracefs.join("events").is_dir() {
        step("tracefs: mounted");
    } else {
        step("tracefs: mounting at /sys/kernel/tracing");
        run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
    }
    // 5. Python tools for the deploy checks (kubernetes-validate, checkov), in a venv
    let deploy_setup = root().join("deploy/setup.sh");
    if deploy_setup.is_file() {
        step("deploy tools: deploy/setup.sh");
        run(Command::new("bash").arg(&deploy_setup))?;
    }
    Ok(())
}

fn dpkg_installed(p: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", p])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn home_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

/// Where cargo puts its builds: `$CARGO_TARGET_DIR` (relative to the repository root)
/// or `target/`.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    // bpf-linker is installed under ~/.cargo/bin, which may not be on a root shell's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let bin = home_bin("");
    if !paths.contains(&bin) {
        paths.push(bin);
    }
    c.env(
        "PATH",
        std::env::join_paths(paths).expect("PATH entries are valid"),
    );
    c
}

fn test(filter: Option<String>) -> Result<()> {
    let filter_args: Vec<String> = filter.into_iter().collect();
    step("build: cargo build --bins --tests (eBPF included through auditor/build.rs)");
    run(cargo().args(["build", "--bins", "--tests"]))?;
    step("unit and property tests: cargo test -p auditor -p xtask");
    run(cargo()
        .args(["test", "-p", "auditor", "-p", "xtask", "--"])
        .args(&filter_args))?;
    // The pure half builds and tests on stable alone, with no eBPF toolchain or bpf-linker:
    // auditor/build.rs then embeds an empty placeholder and Probe::load refuses it. In a
    // target dir of its own, so that AYA_BUILD_SKIP does not flip the main one's build.
    step("unit tests without the eBPF build: AYA_BUILD_SKIP=1 cargo test -p auditor (own target dir)");
    run(cargo()
        .args(["test", "-p", "auditor", "--target-dir"])
        .arg(target_dir().join("no-ebpf"))
        .arg("--")
        .args(&filter_args)
        .env("AYA_BUILD_SKIP", "1"))?;
    // The container test (tests/tests/container.rs) runs this image; built once here.
    let image = if is_root() && ok(Command::new("podman").arg("--version")) {
        step("container image for tests/tests/container.rs: cargo xtask image");
        Some(image::build(&[], None)?)
    } else {
        step("container image: skipped (needs root and podman); the container test skips too");
        None
    };
    step("privileged integration tests (root, one thread, each in its own network namespaces)");
    let bin = target_dir().join("debug/auditor");
    let mut it = cargo();
    it.args(["test", "-p", "integration-tests", "--", "--test-threads=1"])
        .args(&filter_args)
        .env("AUDITOR_BIN", &bin);
    if let Some(image) = &image {
        it.env("AUDITOR_IMAGE", image);
    }
    run(&mut it)?;
    let check = root().join("deploy/check.sh");
    if check.is_file() {
        step("deploy checks: deploy/check.sh (kubernetes-validate, promtool, checkov, image args)");
        run(Command::new("bash")
            .arg(&check)
            .current_dir(root())
            .env("AUDITOR_BIN", &bin))?;
    }
    eprintln!("==> all tests passed");
    Ok(())
}

fn demo(output: &Path) -> Result<()> {
    step("build: cargo build -p auditor -p integration-tests --bins");
    run(cargo().args([
        "build",
        "-p",
        "auditor",
        "-p",
        "integration-tests",
        "--bins",
    ]))?;
    step("demo: real ffmpeg pipelines on a simulated node (tests/src/demo.rs)");
    let output = if output.is_absolute() {
        output.to_owned()
    } else {
        root().join(output)
    };
    run(Command::new(target_dir().join("debug/demo"))
        .arg(&output)
        .env("AUDITOR_BIN", target_dir().join("debug/auditor"))
        .current_dir(root()))
}

fn bench(output: &Path, reps: usize, only: Option<&str>, soak_secs: u64) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and make network namespaces: run as root (sudo -E cargo xtask bench)");
    }
    step("build: cargo build --release -p auditor -p integration-tests --bins");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "auditor",
        "-p",
        "integration-tests",
        "--bins",
    ]))?;
    // The offline figure reuses the policy benchmark's generator (auditor/benches/policy.rs).
    step("build: cargo bench -p auditor --bench policy --no-run (the generator for the offline figure)");
    let out = cargo()
        .args(["bench", "-p", "auditor", "--bench", "policy", "--no-run"])
        .output()
        .context("cargo bench --no-run")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("cargo bench --no-run failed:\n{err}");
    }
    // "Executable benches/policy.rs (target/release/deps/policy-<hash>)"
    let policy_bench = err
        .lines()
        .find(|l| l.contains("Executable") && l.contains("policy"))
        .and_then(|l| {
            l.rsplit_once('(')
                .map(|(_, p)| p.trim_end_matches(')').trim().to_owned())
        })
        .map(|p| root().join(p));
    let output = if output.is_absolute() {
        output.to_owned()
    } else {
        root().join(output)
    };
    let mut cmd = Command::new(target_dir().join("release/bench"));
    cmd.arg("run")
        .arg("--auditor")
        .arg(target_dir().join("release/auditor"))
        .arg("--out")
        .arg(&output)
        .args(["--reps", &reps.to_string()])
        .args(["--soak-secs", &soak_secs.to_string()])
        .args(["--command", "cargo xtask bench"])
        .current_dir(root());
    if let Some(p) = &policy_bench {
        cmd.arg("--policy-bench").arg(p);
    }
    if let Some(o) = only {
        cmd.args(["--only", o]);
    }
    step(&format!(
        "bench: tests/src/bin/bench (writes {})",
        output.display()
    ));
    run(&mut cmd)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Test { filter, no_setup } => {
            if !no_setup {
                setup()?;
            }
            test(filter)
        }
        Cmd::Demo { output, no_setup } => {
            if !no_setup {
                setup()?;
            }
            demo(&output)
        }
        Cmd::Image {
            tag,
            output,
            no_setup,
        } => {
            if !no_setup {
                setup()?;
            }
            image::build(&tag, output.as_deref()).map(|_| ())
        }
        Cmd::Bench {
            output,
            reps,
            only,
            soak_secs,
            no_setup,
        } => {
            if !no_setup {
                setup()?;
            }
            bench(&output, reps, only.as_deref(), soak_secs)
        }
    }
}
