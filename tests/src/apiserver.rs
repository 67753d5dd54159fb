//! The fake Kubernetes API server as a process (`fake-apiserver`, this crate's binary):
//! HTTPS on loopback, driven by JSON commands on its stdin. See
//! `auditor::kube::fake::server` for the commands.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

pub struct ApiServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub dir: PathBuf,
}

impl ApiServer {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_fake-apiserver")`); files in `dir`.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("api server dir");
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--ca-out"])
            .arg(dir.join("ca.crt"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fake-apiserver said {line:?}"))
            .to_owned();
        ApiServer {
            child,
            stdin,
            stdout,
            url,
            dir: dir.to_owned(),
        }
    }

    /// Sends one command; returns what follows `ok`. Panics on `error: ...`.
    pub fn cmd(&mut self, c: Value) -> String {
        writeln!(self.stdin, "{c}").expect("write a command");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the answer");
        let line = line.trim_end();
        match line.strip_prefix("ok") {
            Some(rest) => rest.trim().to_owned(),
            None => panic!("fake-apiserver: {c} -> {line:?}"),
        }
    }

    pub fn apply(&mut self, object: Value) {
        self.cmd(json!({ "apply": object }));
    }

    /// Applies a `kind: List` written as YAML (e.g. `Node::snapshot_yaml`).
    pub fn apply_yaml(&mut self, yaml: &str) {
        let v: Value = serde_yaml::from_str(yaml).expect("objects as YAML");
        self.apply(v);
    }

    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        self.cmd(json!({"delete": {"kind": kind, "namespace": namespace, "name": name}}));
    }

    /// Down: connections refused and open ones cut; up: listening again.
    pub fn set_down(&mut self, down: bool) {
        self.cmd(json!({ "down": down }));
    }

    pub fn token(&mut self, token: &str, user: &str) {
        self.cmd(
            json!({"token": {"token": token, "user": user, "groups": ["system:authenticated"]}}),
        );
    }

    pub fn grant(&mut self, user: &str, rule: &str) {
        self.cmd(json!({"grant": {"user": user, "rule": rule}}));
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&mut self) -> Vec<String> {
        let all: Value =
            serde_json::from_str(&self.cmd(json!({"requests": true}))).expect("requests as JSON");
        all.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect()
    }

    /// A kubeconfig for `user` with a bearer `token`, trusting the server's CA.
    pub fn kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{user}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {user}\n    namespace: default\ncurrent-context: fake\n",
                self.url,
                self.dir.join("ca.crt").display()
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
