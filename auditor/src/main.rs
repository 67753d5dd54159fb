//! The `auditor` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// eBPF connection auditor for Kubernetes media pipelines: records what ffmpeg
/// pods really do on the network, diffs it against the NetworkPolicies, and
/// suggests minimal allowlists.
///
/// Examples:
///   sudo auditor record --comm ffmpeg --output flows.jsonl --duration 5m
///   auditor diff --cluster snapshot.yaml --flows flows.jsonl -o table       (-o: the format, as kubectl's)
///   auditor diff --context staging --flows flows.jsonl      (the live cluster, as kubectl reads it)
///   auditor diff --cluster snapshot.yaml --flows flows.jsonl --policies proposed.yaml   (what-if: exit 4 if it breaks a flow)
///   auditor suggest --cluster snapshot.yaml --flows flows.jsonl --output suggested/
///   auditor report --cluster snapshot.yaml --flows flows.jsonl --output report/
///   auditor collect --since 1h --output flows.jsonl     (in a cluster, with kubectl's config)
///   sudo auditor drill --cluster snapshot.yaml --pod media/packager-0 --peer svc/media/cdn --duration 5s --i-mean-it
#[derive(Debug, Parser)]
#[command(name = "auditor", version, about, verbatim_doc_comment)]
struct Cli {
    /// Log format on standard error (`json` for the DaemonSet).
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "AUDITOR_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `auditor=debug`. The Kubernetes client's own
    /// retry errors are off by default: the agent logs each API outage once.
    #[arg(
        long,
        global = true,
        default_value = "info,kube_client=off",
        env = "AUDITOR_LOG"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    Record(Box<auditor::record::RecordArgs>),
    Diff(auditor::diff::DiffArgs),
    Suggest(auditor::suggest::SuggestArgs),
    Report(auditor::report::ReportArgs),
    Collect(auditor::collect::CollectArgs),
    Drill(auditor::drill::DrillArgs),
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let result: anyhow::Result<u8> = match cli.command {
        Command::Record(args) => record(*args),
        Command::Diff(args) => auditor::diff::run(&args)
            .map(|c| c as u8)
            .map_err(Into::into),
        Command::Suggest(args) => auditor::suggest::run(&args)
            .map(|c| c as u8)
            .map_err(Into::into),
        Command::Report(args) => auditor::report::run(&args)
            .map(|c| c as u8)
            .map_err(Into::into),
        Command::Collect(args) => collect(&args),
        Command::Drill(args) => drill(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn collect(args: &auditor::collect::CollectArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(auditor::collect::run(args))? as u8)
}

fn drill(args: &auditor::drill::DrillArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(auditor::drill::run(args))?)
}

fn record(args: auditor::record::RecordArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(auditor::record::run(args))?;
    let lost: u64 = summary.lost_events.values().sum();
    eprintln!(
        "auditor: recorded {} flows ({} records) in {:.1}s; {} kernel drops, {} DNS answers; events {:?}; lost events {} {:?}; losses {:?}",
        summary.flows, summary.records_written, summary.duration_s, summary.drops, summary.dns_answers, summary.events, lost, summary.lost_events, summary.losses
    );
    for d in &summary.degraded {
        eprintln!("auditor: degraded: {d}");
    }
    Ok(0)
}
