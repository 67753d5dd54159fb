//! A real Prometheus (Debian's `prometheus`) on loopback that scrapes the recorder and
//! evaluates the PrometheusRule shipped in deploy/, for the end-to-end test and the demo.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{sh, spawn, Bg};

pub struct Prometheus {
    _proc: Bg,
    pub dir: PathBuf,
    pub url: String,
}

/// The `spec` of deploy/prometheusrule.yaml as a Prometheus rule file.
pub fn rule_file_from_deploy(out: &Path) -> std::io::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheusrule.yaml");
    let text = std::fs::read_to_string(&src)?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(std::io::Error::other)?;
    let spec = doc
        .get("spec")
        .cloned()
        .ok_or_else(|| std::io::Error::other(format!("{}: no spec", src.display())))?;
    std::fs::write(
        out,
        serde_yaml::to_string(&spec).map_err(std::io::Error::other)?,
    )
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second as job `auditor`,
    /// with the shipped alert rules; None (with a printed reason) when it is not installed.
    pub fn start(dir: &Path, port: u16, target: &str) -> Option<Self> {
        if sh("command -v prometheus").stdout.is_empty() {
            eprintln!("SKIPPED Prometheus: not installed (cargo xtask setup installs Debian's prometheus)");
            return None;
        }
        std::fs::create_dir_all(dir.join("data")).ok()?;
        rule_file_from_deploy(&dir.join("rules.yml")).ok()?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\nscrape_configs:\n- job_name: auditor\n  honor_labels: true\n  static_configs:\n  - targets: ['{target}']\n    labels:\n      node: demo-node\n",
                dir.join("rules.yml").display()
            ),
        )
        .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        let p = spawn(&format!(
            "prometheus --config.file={} --storage.tsdb.path={} --web.listen-address=127.0.0.1:{port} --log.level=warn",
            dir.join("prometheus.yml").display(),
            dir.join("data").display()
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sh(&format!("curl -sf {url}/-/ready")).status.success() {
            if Instant::now() > deadline {
                eprintln!("Prometheus did not become ready");
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self {
            _proc: p,
            dir: dir.to_owned(),
            url,
        })
    }

    /// Firing alerts (Prometheus's own view, `/api/v1/alerts`).
    pub fn firing(&self) -> Vec<Value> {
        let out = sh(&format!("curl -sf {}/api/v1/alerts", self.url));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect()
    }

    /// Waits up to `limit` for an alert named `name` to fire; returns the firing ones.
    pub fn wait_for(&self, name: &str, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let f: Vec<Value> = self
                .firing()
                .into_iter()
                .filter(|a| a["labels"]["alertname"] == name)
                .collect();
            if !f.is_empty() || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether the scrape of the recorder succeeded.
    pub fn target_up(&self) -> bool {
        let out = sh(&format!(
            "curl -sf '{}/api/v1/query?query=up%7Bjob%3D%22auditor%22%7D'",
            self.url
        ));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["value"][1] == "1"))
    }
}
