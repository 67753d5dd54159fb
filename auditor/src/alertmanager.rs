//! Drop alerts to an Alertmanager (API v2: `POST /api/v2/alerts`).
//!
//! A deliberately small HTTP/1.1 client over a TCP stream: the in-cluster Alertmanager
//! Service is plain HTTP, and the agent should not carry a TLS stack for it. `https://`
//! URLs are refused at start with a message saying so.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alerts::Alert;

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("--alertmanager-url {0}: only http://host:port[/path] is supported (for TLS, put an in-cluster http Service or a proxy in front)")]
    Url(String),
    #[error("POST {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("POST {url}: {status}")]
    Status { url: String, status: String },
}

/// Where to send, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, AlertmanagerError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| AlertmanagerError::Url(url.to_string()))?;
        let (hostport, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse()
                    .map_err(|_| AlertmanagerError::Url(url.to_string()))?,
            ),
            _ => (
                hostport.trim_matches(|c| c == '[' || c == ']').to_string(),
                80,
            ),
        };
        if host.is_empty() {
            return Err(AlertmanagerError::Url(url.to_string()));
        }
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            path: format!("{base}/api/v2/alerts"),
        })
    }
}

#[derive(Serialize)]
struct PostableAlert {
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
}

/// Alertmanager's view of one of our alerts: labels identify the stream, annotations say
/// what happened. It resolves itself `resolve_after` after its last sighting.
pub fn postable(
    a: &Alert,
    node: Option<&str>,
    now: std::time::SystemTime,
    resolve_after: Duration,
) -> serde_json::Value {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        "alertname".into(),
        if a.kind == "drop" {
            "AuditorFlowDropped"
        } else {
            "AuditorConnectTimeouts"
        }
        .to_string(),
    );
    labels.insert("severity".into(), "warning".into());
    labels.insert("port".into(), a.port.to_string());
    labels.insert("protocol".into(), a.protocol.clone());
    labels.insert("peer".into(), a.peer.clone());
    labels.insert("reason".into(), a.reason.clone());
    for (k, v) in [
        ("namespace", &a.namespace),
        ("workload", &a.workload),
        ("pod", &a.pod),
        ("process", &a.process),
        ("peer_name", &a.peer_name),
    ] {
        if let Some(v) = v {
            labels.insert(k.into(), v.clone());
        }
    }
    if let Some(n) = node {
        labels.insert("node".into(), n.to_string());
    }
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert("summary".into(), a.sentence());
    annotations.insert("count".into(), a.count.to_string());
    if let Some(v) = &a.verdict {
        annotations.insert("verdict".into(), v.clone());
    }
    for (k, v) in [("first_seen", &a.first_seen), ("last_seen", &a.last_seen)] {
        if let Some(v) = v {
            annotations.insert(k.into(), v.clone());
        }
    }
    let starts = a
        .first_seen
        .clone()
        .unwrap_or_else(|| humantime::format_rfc3339_millis(now).to_string());
    let ends = humantime::format_rfc3339_millis(now + resolve_after).to_string();
    serde_json::to_value(PostableAlert {
        labels,
        annotations,
        starts_at: starts,
        ends_at: ends,
    })
    .unwrap_or_default()
}

/// POSTs alerts; returns an error naming the URL on failure (the caller logs and counts it).
pub async fn send(
    target: &Target,
    alerts: &[serde_json::Value],
    timeout: Duration,
) -> Result<(), AlertmanagerError> {
    let io = |source| AlertmanagerError::Io {
        url: target.url.clone(),
        source,
    };
    let body = serde_json::to_vec(alerts).unwrap_or_default();
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(io)?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: auditor/{}\r\n\r\n",
            target.path,
            target.host,
            target.port,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(&body).await.map_err(io)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(io)?;
        let status =
            String::from_utf8_lossy(resp.split(|b| *b == b'\n').next().unwrap_or_default())
                .trim()
                .to_string();
        if status
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
        {
            Ok(())
        } else {
            Err(AlertmanagerError::Status {
                url: target.url.clone(),
                status,
            })
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://alertmanager.monitoring:9093").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("alertmanager.monitoring", 9093, "/api/v2/alerts")
        );
        let t = Target::parse("http://127.0.0.1:19093/am/").unwrap();
        assert_eq!(t.path, "/am/api/v2/alerts");
        assert_eq!(Target::parse("http://am").unwrap().port, 80);
        assert!(Target::parse("https://am:9093")
            .unwrap_err()
            .to_string()
            .contains("only http://"));
        assert!(Target::parse("http://:80").is_err());
    }

    #[test]
    fn postable_alert_shape() {
        let a = Alert {
            kind: "drop",
            namespace: Some("transcode".into()),
            workload: Some("Deployment/transcoder".into()),
            pod: None,
            process: Some("ffmpeg".into()),
            pid: Some(1),
            direction: "egress".into(),
            peer: "10.96.2.40".into(),
            peer_name: None,
            peer_workload: None,
            port: 5001,
            protocol: "UDP".into(),
            reason: "NETFILTER_DROP".into(),
            count: 4,
            first_seen: Some("2026-11-28T10:00:00.000Z".into()),
            last_seen: None,
            verdict: Some("denied: x".into()),
        };
        let v = postable(
            &a,
            Some("node-1"),
            std::time::SystemTime::UNIX_EPOCH,
            Duration::from_secs(300),
        );
        assert_eq!(v["labels"]["alertname"], "AuditorFlowDropped");
        assert_eq!(v["labels"]["namespace"], "transcode");
        assert_eq!(v["labels"]["node"], "node-1");
        assert_eq!(v["annotations"]["verdict"], "denied: x");
        assert_eq!(v["startsAt"], "2026-11-28T10:00:00.000Z");
        assert_eq!(v["endsAt"], "1970-01-01T00:05:00.000Z");
    }
}
