//! Drop alerts to an Alertmanager (API v2: `POST /api/v2/alerts`).
//!
//! - [`Target`]: `--alertmanager-url`, parsed and checked once at start (`http://` or
//!   `https://`, host or `[IPv6]`, optional port and path prefix).
//! - [`postable`]: one of our alerts as Alertmanager's `PostableAlert` JSON.
//! - [`Delivery`] (delivery.rs): a bounded queue of alerts (10,000 by default, the oldest
//!   dropped first) and one background task that POSTs them with hyper (hyper-util's
//!   pooled client, rustls with the system roots for `https://`), a 5 s timeout per
//!   request, and retries with exponential backoff and jitter on connection errors,
//!   timeouts, 5xx and 429. Other 4xx are not retried. [`Delivery::shutdown`] delivers
//!   what is left within a deadline. Every alert ends up either sent or dropped with a
//!   reason, and counted: `auditor_alerts_sent_total`, `auditor_alerts_dropped_total`,
//!   `auditor_alert_delivery_failures_total`, `auditor_alert_queue_alerts`
//!   (deploy/METRICS.md).

mod delivery;

use std::time::Duration;

use serde::Serialize;

use crate::alerts::Alert;

pub use delivery::{Delivery, DeliveryConfig, ShutdownReport};

const EXPECTED: &str = "expected http://host[:port][/path] or https://host[:port][/path], e.g. http://alertmanager.monitoring:9093";

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("--alertmanager-url {value}: {problem}")]
    Url { value: String, problem: String },
    #[error("--alertmanager-url {url}: cannot set up TLS (the agent reads the system's CA certificates; mount a bundle and point SSL_CERT_FILE at it)")]
    Tls {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alert delivery to {url} must be started inside the tokio runtime")]
    NoRuntime { url: String },
    #[error("POST {url}: {problem}")]
    Post { url: String, problem: String },
}

fn bad(url: &str, problem: impl Into<String>) -> AlertmanagerError {
    AlertmanagerError::Url {
        value: url.to_string(),
        problem: problem.into(),
    }
}

/// Where to send, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    // The parsed parts, checked by the tests; requests use `uri`.
    #[cfg_attr(not(test), allow(dead_code))]
    host: String,
    #[cfg_attr(not(test), allow(dead_code))]
    port: u16,
    #[cfg_attr(not(test), allow(dead_code))]
    path: String,
    https: bool,
    uri: http::Uri,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, AlertmanagerError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(bad(url, EXPECTED));
        };
        let (hostport, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if rest.contains(['?', '#']) {
            return Err(bad(
                url,
                format!("no query or fragment is allowed ({EXPECTED})"),
            ));
        }
        if hostport.contains('@') {
            return Err(bad(url, format!("no user info is allowed ({EXPECTED})")));
        }
        let default_port = if https { 443 } else { 80 };
        let port_of = |p: &str| -> Result<u16, AlertmanagerError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(
                    url,
                    format!("port {p:?}: expected a number from 1 to 65535"),
                )),
            }
        };
        let (host, port) =
            if let Some(v6) = hostport.strip_prefix('[') {
                let Some((h, after)) = v6.split_once(']') else {
                    return Err(bad(
                    url,
                    "unclosed '[': an IPv6 address is written [addr], e.g. http://[fd00::1]:9093",
                ));
                };
                let port = match after {
                    "" => default_port,
                    _ => match after.strip_prefix(':') {
                        Some(p) => port_of(p)?,
                        None => {
                            return Err(bad(
                                url,
                                format!("unexpected {after:?} after ']' (expected :port)"),
                            ))
                        }
                    },
                };
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad(
                        url,
                        format!("[{h}]: expected an IPv6 address in brackets"),
                    ));
                }
                (h.to_string(), port)
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, _)) if h.contains(':') => return Err(bad(
                        url,
                        "an IPv6 address must be written in brackets, e.g. http://[fd00::1]:9093",
                    )),
                    Some((h, p)) => (h.to_string(), port_of(p)?),
                    None => (hostport.to_string(), default_port),
                }
            };
        if host.is_empty() {
            return Err(bad(url, format!("no host ({EXPECTED})")));
        }
        let path = format!("{base}/api/v2/alerts");
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let uri = http::Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| bad(url, format!("{e} ({EXPECTED})")))?;
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            path,
            https,
            uri,
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
    if let Some(c) = &a.blocked_although_allowed {
        annotations.insert("blocked_although_allowed".into(), c.clone());
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
        let t = Target::parse("https://am.example:9443/x").unwrap();
        assert!(t.https);
        assert_eq!(t.uri.to_string(), "https://am.example:9443/x/api/v2/alerts");
        assert_eq!(Target::parse("https://am").unwrap().port, 443);
        assert!(Target::parse("http://:80").is_err());
        let t = Target::parse("http://[::1]:19093").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 19093));
        assert_eq!(t.uri.authority().unwrap().as_str(), "[::1]:19093");
        assert_eq!(Target::parse("http://[fd00::1]").unwrap().port, 80);
    }

    #[test]
    fn url_errors_name_the_flag_value_and_expectation() {
        for (url, needle) in [
            (
                "ftp://am:21",
                "expected http://host[:port][/path] or https://",
            ),
            ("am:9093", "expected http://host[:port][/path] or https://"),
            (
                "http://am:x",
                "port \"x\": expected a number from 1 to 65535",
            ),
            ("http://am:0", "expected a number from 1 to 65535"),
            ("http://am:70000", "expected a number from 1 to 65535"),
            (
                "http://::1:9093",
                "IPv6 address must be written in brackets",
            ),
            ("http://[::1:9093", "unclosed '['"),
            ("http://[::1]x", "expected :port"),
            ("http://[am]:80", "expected an IPv6 address"),
            ("http://:80", "no host"),
            ("http://am:9093/?a=b", "no query or fragment"),
            ("http://u:p@am:9093", "no user info"),
            ("http://a m:9093", "expected http://"),
        ] {
            let e = Target::parse(url).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--alertmanager-url {url}: ")),
                "{url}: {e}"
            );
            assert!(e.contains(needle), "{url}: {e}");
        }
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
            blocked_although_allowed: None,
            folded: None,
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
