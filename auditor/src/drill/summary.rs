//! Drill results in `auditor report`: the JSON that `auditor drill -o json` wrote, read
//! back and shown per drill with its evidence (Markdown and HTML; report.json keeps them
//! as they were written).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::plan::{Direction, Outcome};
use super::DrillReport;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("--drill {path}: cannot read it")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--drill {path}: {what}; expected the JSON that `auditor drill -o json --output FILE` writes")]
    Invalid { path: PathBuf, what: String },
}

/// Reads one drill result; an empty file, another JSON document, or a drill that names no
/// target or rule is an error that names the file and the field.
pub fn read(path: &Path) -> Result<DrillReport, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |what: String| ReadError::Invalid {
        path: path.to_owned(),
        what,
    };
    if text.trim().is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    let r: DrillReport = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if r.targets.is_empty() {
        return Err(invalid(
            "field `targets` is empty: a drill always has a target".into(),
        ));
    }
    if r.rules.is_empty() {
        return Err(invalid(
            "field `rules` is empty: a drill always blocks something".into(),
        ));
    }
    Ok(r)
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Graceful => "graceful",
        Outcome::Failed => "failed",
        Outcome::Untested => "untested",
    }
}

/// "2 graceful, 1 failed" for the summary.
pub fn tally(drills: &[DrillReport]) -> String {
    let mut parts = Vec::new();
    for o in [Outcome::Graceful, Outcome::Failed, Outcome::Untested] {
        let n = drills.iter().filter(|d| d.outcome == o).count();
        if n > 0 {
            parts.push(format!("{n} {}", outcome_word(o)));
        }
    }
    parts.join(", ")
}

/// One drill's facts as short sentences, shared by both formats.
struct Facts {
    title: String,
    lines: Vec<String>,
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn facts(d: &DrillReport) -> Facts {
    let targets: Vec<&str> = d.targets.iter().map(|t| t.pod.as_str()).collect();
    let rules: Vec<&str> = d.rules.iter().map(|r| r.rule.as_str()).collect();
    let way = match d.direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both ways",
    };
    let title = format!(
        "{} blocked for {} ({way}) from {}",
        rules.join(", "),
        secs(d.duration_ms),
        targets.join(", ")
    );
    let t = &d.traffic;
    let mut lines = vec![
        format!(
            "before the block: {} packets to the peer in {}",
            t.before_packets,
            secs(d.baseline_ms)
        ),
        format!(
            "during it: {} packets dropped ({} bytes, {} TCP connection attempts){}",
            t.dropped_packets,
            t.dropped_bytes,
            t.dropped_connection_attempts,
            match (t.first_drop_ms, t.last_drop_ms) {
                (Some(a), Some(b)) =>
                    format!(", the first at {}, the last at {}", secs(a), secs(b)),
                _ => String::new(),
            }
        ),
        format!(
            "after the release: {} packets, {} new connections, {}",
            t.after_packets,
            t.connections_after,
            match t.resumed_after_release_ms {
                Some(ms) => format!("the first {} after it", secs(ms)),
                None => format!("none within {}", secs(d.observe_ms)),
            }
        ),
    ];
    // Other peers: in use already (first seen before the block), or new since it began,
    // where a pipeline falls back to.
    for p in &d.other_peers {
        lines.push(if p.first_ms < 0 {
            format!(
                "also sent to {}: {} packets (in use before the block, first seen {} before it)",
                p.peer,
                p.packets,
                secs(p.first_ms.unsigned_abs())
            )
        } else {
            format!(
                "also sent to {}: {} packets (new: first at {}, a fallback?)",
                p.peer,
                p.packets,
                secs(p.first_ms as u64)
            )
        });
    }
    if !d.processes.exited.is_empty() {
        lines.push(format!("exited: {}", d.processes.exited.join(", ")));
    }
    if !d.processes.new.is_empty() {
        lines.push(format!("started: {}", d.processes.new.join(", ")));
    }
    if d.interrupted {
        lines.push("interrupted before its end".into());
    }
    for p in &d.not_on_this_node {
        lines.push(format!("not on the drill's node: {p}"));
    }
    Facts { title, lines }
}

/// The Markdown section (empty without drills).
pub fn markdown(drills: &[DrillReport]) -> String {
    let mut out = String::new();
    if drills.is_empty() {
        return out;
    }
    out.push_str("\n## Failover drills\n");
    for d in drills {
        let f = facts(d);
        let _ = writeln!(
            out,
            "\n### {}: {}\n\n**{}**: {}\n",
            outcome_word(d.outcome).to_uppercase(),
            f.title,
            outcome_word(d.outcome),
            d.why
        );
        for l in &f.lines {
            let _ = writeln!(out, "- {l}");
        }
    }
    out
}

/// The HTML section (empty without drills); `esc` is the report's escaping.
pub fn html(drills: &[DrillReport], esc: fn(&str) -> String) -> String {
    let mut out = String::new();
    if drills.is_empty() {
        return out;
    }
    out.push_str("<h2>Failover drills</h2>\n");
    for d in drills {
        let f = facts(d);
        let class = match d.outcome {
            Outcome::Graceful => "ok",
            Outcome::Failed => "bad",
            Outcome::Untested => "",
        };
        let _ = write!(
            out,
            "<div class=\"drill\" data-outcome=\"{}\"><h3>{}</h3><p class=\"{class}\"><b>{}</b>: {}</p><ul>",
            outcome_word(d.outcome),
            esc(&f.title),
            outcome_word(d.outcome).to_uppercase(),
            esc(&d.why)
        );
        for l in &f.lines {
            let _ = write!(out, "<li>{}</li>", esc(l));
        }
        out.push_str("</ul></div>\n");
    }
    out
}
