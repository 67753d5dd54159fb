//! `auditor suggest` on files: DNS, kubelet probes, Jobs, Services, endPort ranges,
//! external names, bad input, the cilium flavor, and schema validation of every YAML
//! written (kubernetes-validate from /opt/auditor-venv, skipped with a reason if missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use auditor::suggest::{run, Flavor, Mode, SuggestArgs};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const KUBERNETES_VALIDATE: &str = "/opt/auditor-venv/bin/kubernetes-validate";

/// A media namespace with a Deployment (ffmpeg, with probes), a CronJob's Jobs, an origin
/// StatefulSet behind a Service, cluster DNS behind kube-dns, two nodes.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: media}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 192.168.0.12}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: ffmpeg-7c9d8b6f5-x2k4q
  namespace: media
  labels: {app: ffmpeg, pod-template-hash: 7c9d8b6f5}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: ffmpeg-7c9d8b6f5, uid: u1, controller: true}]
spec:
  nodeName: node-a
  containers:
  - name: ffmpeg
    image: ffmpeg
    ports: [{name: metrics, containerPort: 9100}]
    readinessProbe: {httpGet: {path: /ready, port: metrics}}
    livenessProbe: {tcpSocket: {port: 9101}}
  - name: envoy
    image: envoy
status: {phase: Running, podIP: 10.0.1.1, podIPs: [{ip: 10.0.1.1}], hostIP: 192.168.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: nightly-29123450-abcde
  namespace: media
  labels: {app: transcode, job-name: nightly-29123450, controller-uid: c1, batch.kubernetes.io/job-name: nightly-29123450, batch.kubernetes.io/controller-uid: c1}
  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: nightly-29123450, uid: j1, controller: true}]
spec: {nodeName: node-b, containers: [{name: ffmpeg, image: ffmpeg}]}
status: {phase: Running, podIP: 10.0.1.5, podIPs: [{ip: 10.0.1.5}], hostIP: 192.168.0.12}
---
apiVersion: v1
kind: Pod
metadata:
  name: nightly-29123510-fghij
  namespace: media
  labels: {app: transcode, job-name: nightly-29123510, controller-uid: c2, batch.kubernetes.io/job-name: nightly-29123510, batch.kubernetes.io/controller-uid: c2}
  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: nightly-29123510, uid: j2, controller: true}]
spec: {nodeName: node-b, containers: [{name: ffmpeg, image: ffmpeg}]}
status: {phase: Running, podIP: 10.0.1.6, podIPs: [{ip: 10.0.1.6}], hostIP: 192.168.0.12}
---
apiVersion: v1
kind: Pod
metadata:
  name: origin-0
  namespace: media
  labels: {app: origin, controller-revision-hash: origin-5f7b9c, statefulset.kubernetes.io/pod-name: origin-0}
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: origin, uid: s1, controller: true}]
spec:
  nodeName: node-b
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.0.1.2, podIPs: [{ip: 10.0.1.2}], hostIP: 192.168.0.12}
---
apiVersion: v1
kind: Service
metadata: {name: origin, namespace: media}
spec:
  clusterIP: 10.96.0.80
  selector: {app: origin}
  ports: [{name: web, port: 80, targetPort: http}]
"#;

const DNS: &str = r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: coredns-55cb58b774-9xq2w
  namespace: kube-system
  labels: {k8s-app: kube-dns, pod-template-hash: 55cb58b774}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: coredns-55cb58b774, uid: d1, controller: true}]
spec:
  nodeName: node-a
  containers: [{name: coredns, image: coredns, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]
status: {phase: Running, podIP: 10.0.0.53, podIPs: [{ip: 10.0.0.53}], hostIP: 192.168.0.11}
"#;

const KUBE_DNS_SERVICE: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}, {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}]
"#;

const FLOWS: &str = r#"{"src_ip":"10.0.1.1","dst_ip":"10.96.0.10","dst_port":53,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":4}
{"src_ip":"10.0.1.1","dst_ip":"169.254.20.10","dst_port":53,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":1}
{"src_ip":"10.0.1.1","dst_ip":"10.96.0.80","dst_port":80,"protocol":"TCP","direction":"egress","comm":"ffmpeg","count":1}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.80","dst_port":443,"protocol":"TCP","direction":"egress","comm":"ffmpeg","dns_name":"cdn.example.net","count":3}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.81","dst_port":443,"protocol":"TCP","direction":"egress","comm":"ffmpeg","dns_name":"cdn.example.net","count":1}
{"src_ip":"10.0.1.1","dst_ip":"198.51.100.7","dst_port":5000,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":9}
{"src_ip":"10.0.1.1","dst_ip":"198.51.100.7","dst_port":5001,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":9}
{"src_ip":"10.0.1.1","dst_ip":"198.51.100.7","dst_port":5002,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":9}
{"src_ip":"10.0.1.1","dst_ip":"198.51.100.7","dst_port":5002,"protocol":"UDP","direction":"egress","comm":"ffmpeg","count":4}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.200","dst_port":9000,"protocol":"TCP","direction":"egress","comm":"envoy","count":1}
{"src_ip":"192.168.0.11","dst_ip":"10.0.1.1","dst_port":9100,"protocol":"TCP","direction":"ingress","comm":"ffmpeg","state":"accepted","count":6}
{"src_ip":"10.0.1.5","dst_ip":"10.0.1.2","dst_port":8080,"protocol":"TCP","direction":"egress","comm":"ffmpeg","count":1}
{"src_ip":"10.0.1.6","dst_ip":"10.0.1.2","dst_port":8080,"protocol":"TCP","direction":"egress","comm":"ffmpeg","count":1}
"#;

struct Out {
    code: Result<i32, String>,
    yaml: String,
    path: PathBuf,
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-suggest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn suggest_files(name: &str, cluster: &str, flows: &str, f: impl FnOnce(&mut SuggestArgs)) -> Out {
    let dir = temp_dir(name);
    std::fs::write(dir.join("cluster.yaml"), cluster).unwrap();
    std::fs::write(dir.join("flows.jsonl"), flows).unwrap();
    let mut args = SuggestArgs {
        source: auditor::cluster::ClusterSource::file(dir.join("cluster.yaml")),
        flows: dir.join("flows.jsonl"),
        mode: Mode::Allowlist,
        select: None,
        comm: vec!["ffmpeg".into(), "ffprobe".into()],
        flavor: Flavor::Kubernetes,
        max_prefix: 32,
        max_prefix_v6: 128,
        skip_invalid: false,
        output: dir.join("out"),
        filter: Default::default(),
        min_observation: auditor::coverage::DEFAULT_MIN_OBSERVATION,
    };
    f(&mut args);
    let code = run(&args).map_err(|e| e.to_string());
    let ext = if args.flavor == Flavor::Cilium {
        "cilium.yaml"
    } else {
        "yaml"
    };
    let path = args.output.join(format!("{}.{ext}", args.mode.as_str()));
    let yaml = std::fs::read_to_string(&path).unwrap_or_default();
    Out { code, yaml, path }
}

fn full_cluster() -> String {
    format!("{CLUSTER}{DNS}{KUBE_DNS_SERVICE}")
}

/// The documents of a multi-document YAML, parsed.
fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn policy<'a>(docs: &'a [serde_yaml::Value], name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| {
            panic!(
                "no policy {name} in {:?}",
                docs.iter()
                    .map(|d| d["metadata"]["name"].clone())
                    .collect::<Vec<_>>()
            )
        })
}

fn validate(path: &Path) {
    if !Path::new(KUBERNETES_VALIDATE).exists() {
        eprintln!("SKIP schema validation: {KUBERNETES_VALIDATE} missing (cargo xtask setup creates the venv)");
        return;
    }
    let out = Command::new(KUBERNETES_VALIDATE)
        .arg("--strict")
        .arg(path)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "kubernetes-validate failed on {}:\n{text}",
        path.display()
    );
    assert!(text.contains("passed"), "{text}");
    assert!(
        !text.contains("ERROR") && !text.contains("failed"),
        "{text}"
    );
}

#[test]
fn allowlist_dns_probes_jobs_services_ranges_names() {
    let out = suggest_files("allowlist", &full_cluster(), FLOWS, |_| {});
    assert_eq!(out.code, Ok(0), "{}", out.yaml);
    let d = docs(&out.yaml);
    let names: Vec<&str> = d
        .iter()
        .filter_map(|x| x["metadata"]["name"].as_str())
        .collect();
    // Sorted; one policy per workload, CronJob Jobs grouped; probes separate.
    assert_eq!(
        names,
        [
            "ffmpeg-allowlist",
            "ffmpeg-kubelet-probes",
            "nightly-allowlist"
        ],
        "{}",
        out.yaml
    );

    let ff = policy(&d, "ffmpeg-allowlist");
    assert_eq!(
        serde_yaml::to_string(&ff["spec"]["podSelector"])
            .unwrap()
            .trim(),
        "matchLabels:\n  app: ffmpeg"
    );
    assert_eq!(
        serde_yaml::to_string(&ff["spec"]["policyTypes"])
            .unwrap()
            .trim(),
        "- Ingress\n- Egress"
    );
    let egress = ff["spec"]["egress"].as_sequence().unwrap();
    // DNS: the kube-dns pods by namespace and stable labels, UDP and TCP 53.
    let dns = &egress[0];
    assert_eq!(
        dns["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("kube-system")
    );
    assert_eq!(
        serde_yaml::to_string(&dns["to"][0]["podSelector"])
            .unwrap()
            .trim(),
        "matchLabels:\n  k8s-app: kube-dns"
    );
    assert_eq!(
        serde_yaml::to_string(&dns["ports"]).unwrap().trim(),
        "- protocol: TCP\n  port: 53\n- protocol: UDP\n  port: 53"
    );
    // NodeLocal DNS.
    assert!(
        egress.iter().any(
            |r| r["to"][0]["ipBlock"]["cidr"].as_str() == Some("169.254.20.10/32")
                && r["ports"].as_sequence().unwrap().len() == 2
        ),
        "{}",
        out.yaml
    );
    // The Service as its backends, the named target port.
    let svc = egress
        .iter()
        .find(|r| r["to"][0]["podSelector"]["matchLabels"]["app"].as_str() == Some("origin"))
        .expect("rule to origin");
    assert!(
        svc["to"][0].get("namespaceSelector").is_none(),
        "same namespace: no namespaceSelector"
    );
    assert_eq!(svc["ports"][0]["port"].as_str(), Some("http"));
    // UDP 5000-5002 as one endPort range.
    let udp = egress
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"].as_str() == Some("198.51.100.7/32"))
        .unwrap();
    assert_eq!(
        serde_yaml::to_string(&udp["ports"]).unwrap().trim(),
        "- protocol: UDP\n  port: 5000\n  endPort: 5002"
    );
    // Two addresses of one name, same ports: merged losslessly, names annotated, change warned.
    let cdn = egress
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"].as_str() == Some("203.0.113.80/31"))
        .expect("203.0.113.80/31");
    assert_eq!(cdn["ports"][0]["port"].as_i64(), Some(443));
    assert!(ff["metadata"]["annotations"]["auditor.dev/dns-names"]
        .as_str()
        .unwrap()
        .contains("203.0.113.80/31=cdn.example.net"));
    assert!(
        out.yaml
            .contains("WARNING: cdn.example.net resolved to 2 addresses"),
        "{}",
        out.yaml
    );
    // The sidecar's flow is in the pod's allowlist, and the comment names its process.
    assert!(out.yaml.contains("of process(es) envoy:"), "{}", out.yaml);
    assert!(
        out.yaml.contains("-> 203.0.113.200:9000/TCP [envoy]"),
        "{}",
        out.yaml
    );
    // Probe traffic is not in the application allowlist.
    assert!(ff["spec"]["ingress"].is_null(), "{}", out.yaml);

    // Kubelet probes: every node address, the ports the spec names for probes.
    let probes = policy(&d, "ffmpeg-kubelet-probes");
    assert_eq!(
        serde_yaml::to_string(&probes["spec"]["policyTypes"])
            .unwrap()
            .trim(),
        "- Ingress"
    );
    let rule = &probes["spec"]["ingress"][0];
    let cidrs: Vec<&str> = rule["from"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["ipBlock"]["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["192.168.0.11/32", "192.168.0.12/32"]);
    assert_eq!(
        serde_yaml::to_string(&rule["ports"]).unwrap().trim(),
        "- protocol: TCP\n  port: 9101\n- protocol: TCP\n  port: metrics"
    );

    // Jobs of one CronJob: one policy, selector without job-name / controller-uid.
    let job = policy(&d, "nightly-allowlist");
    assert_eq!(
        serde_yaml::to_string(&job["spec"]["podSelector"])
            .unwrap()
            .trim(),
        "matchLabels:\n  app: transcode"
    );
    assert!(out.yaml.contains("Workload media/CronJob/nightly."));
    validate(&out.path);

    // Deterministic: the same input gives the same bytes.
    let again = suggest_files("allowlist-again", &full_cluster(), FLOWS, |_| {});
    assert_eq!(out.yaml, again.yaml);
}

#[test]
fn max_prefix_widens_only_as_far_as_allowed() {
    let flows = r#"{"src_ip":"10.0.1.1","dst_ip":"203.0.113.1","dst_port":443,"protocol":"TCP","comm":"ffmpeg"}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.77","dst_port":443,"protocol":"TCP","comm":"ffmpeg"}
{"src_ip":"10.0.1.1","dst_ip":"203.0.114.9","dst_port":443,"protocol":"TCP","comm":"ffmpeg"}
"#;
    let exact = suggest_files("prefix32", &full_cluster(), flows, |_| {});
    assert!(
        exact.yaml.contains("203.0.113.1/32") && exact.yaml.contains("203.0.113.77/32"),
        "{}",
        exact.yaml
    );
    let wide = suggest_files("prefix24", &full_cluster(), flows, |a| a.max_prefix = 24);
    assert_eq!(wide.code, Ok(0));
    assert!(
        wide.yaml.contains("\"203.0.113.0/25\"") && wide.yaml.contains("\"203.0.114.9/32\""),
        "{}",
        wide.yaml
    );
    assert!(
        wide.yaml.contains("aggregated from 2 observed address(es)"),
        "{}",
        wide.yaml
    );
}

#[test]
fn fix_mode_on_the_fixture_validates() {
    let cluster = format!(
        "{}---\n{}",
        std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap(),
        std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap()
    );
    let flows = std::fs::read_to_string(Path::new(FIXTURES).join("flows.jsonl")).unwrap();
    let out = suggest_files("fix", &cluster, &flows, |a| a.mode = Mode::Fix);
    assert_eq!(out.code, Ok(0), "{}", out.yaml);
    let d = docs(&out.yaml);
    assert!(!d.is_empty());
    for p in &d {
        // Additions only isolate in the direction they add to.
        assert_eq!(
            p["spec"]["policyTypes"].as_sequence().unwrap().len(),
            1,
            "{}",
            out.yaml
        );
    }
    validate(&out.path);
    let allow = suggest_files("fixture-allowlist", &cluster, &flows, |_| {});
    assert_eq!(allow.code, Ok(0), "{}", allow.yaml);
    validate(&allow.path);
}

#[test]
fn no_dns_pods_is_a_stated_gap() {
    // kube-dns Service without any DNS pod behind it.
    let out = suggest_files(
        "nodns",
        &format!("{CLUSTER}{KUBE_DNS_SERVICE}"),
        FLOWS,
        |_| {},
    );
    assert_eq!(out.code, Ok(1));
    assert!(
        out.yaml.contains("# GAP: no DNS pods in the snapshot"),
        "{}",
        out.yaml
    );
    // Still written, and still allowing the observed DNS address.
    assert!(out.yaml.contains("10.96.0.10/32"), "{}", out.yaml);
    validate(&out.path);
}

#[test]
fn missing_pods_and_no_audited_workload_are_stated() {
    let flows = r#"{"src_ip":"10.9.9.9","dst_ip":"203.0.113.80","dst_port":443,"protocol":"TCP","comm":"ffmpeg"}
"#;
    let out = suggest_files("missing", &full_cluster(), flows, |_| {});
    assert_eq!(out.code, Ok(1));
    assert!(
        out.yaml.contains(
            "# GAP: ffmpeg at 10.9.9.9 (first at flow line 1) ran in no pod of the snapshot"
        ),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml.contains("# GAP: no audited workload found"),
        "{}",
        out.yaml
    );
    assert!(out.yaml.contains("No policy to write."));
}

#[test]
fn select_audits_by_label() {
    let out = suggest_files("select", &full_cluster(), FLOWS, |a| {
        a.select = Some("app=origin".into())
    });
    assert_eq!(out.code, Ok(0), "{}", out.yaml);
    let d = docs(&out.yaml);
    let origin = policy(&d, "origin-allowlist");
    let from: Vec<String> = origin["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            r["from"][0]["podSelector"]["matchLabels"]["app"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(from, ["ffmpeg", "transcode"], "{}", out.yaml);
    assert!(origin["spec"]["egress"].is_null());
    let bad = suggest_files("select-bad", &full_cluster(), FLOWS, |a| {
        a.select = Some("app in origin".into())
    });
    assert!(bad.code.unwrap_err().contains("--select \"app in origin\""));
}

#[test]
fn cilium_flavor_uses_fqdns_and_dns_visibility() {
    let out = suggest_files("cilium", &full_cluster(), FLOWS, |a| {
        a.flavor = Flavor::Cilium
    });
    assert_eq!(out.code, Ok(0), "{}", out.yaml);
    let d = docs(&out.yaml);
    let ff = policy(&d, "ffmpeg-allowlist");
    assert_eq!(ff["apiVersion"].as_str(), Some("cilium.io/v2"));
    assert_eq!(ff["kind"].as_str(), Some("CiliumNetworkPolicy"));
    let egress = ff["spec"]["egress"].as_sequence().unwrap();
    assert!(
        egress
            .iter()
            .any(|r| r["toFQDNs"][0]["matchName"].as_str() == Some("cdn.example.net")),
        "{}",
        out.yaml
    );
    let dns = egress
        .iter()
        .find(|r| !r["toPorts"][0]["rules"]["dns"].is_null())
        .expect("DNS rule with visibility");
    assert_eq!(
        dns["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"].as_str(),
        Some("kube-system")
    );
    // Addresses without a name stay CIDRs.
    assert!(
        egress
            .iter()
            .any(|r| r["toCIDR"][0].as_str() == Some("203.0.113.200/32")),
        "{}",
        out.yaml
    );
    let probes = policy(&d, "ffmpeg-kubelet-probes");
    assert_eq!(
        probes["spec"]["ingress"][0]["fromEntities"][0].as_str(),
        Some("host")
    );
}

#[test]
fn the_snapshots_notes_are_printed_as_diff_lists_them() {
    let dir = std::env::temp_dir().join(format!("auditor-suggest-notes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("cluster.yaml");
    let mut text = std::fs::read_to_string(format!("{FIXTURES}/cluster.yaml")).unwrap();
    text.push_str("\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: transcoder, namespace: media}\n");
    std::fs::write(&snap, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["suggest", "--cluster"])
        .arg(&snap)
        .arg("--flows")
        .arg(format!("{FIXTURES}/flows.jsonl"))
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auditor suggest: note: skipped Deployment media/transcoder (apps/v1): not used by the policy engine"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_address_keeps_its_own_dns_names() {
    // Two external names on the same port, not aggregated: one ipBlock each, and the
    // annotation says which address had which name.
    let flows = format!(
        "{FLOWS}{}\n{}\n",
        r#"{"src_ip":"10.0.1.1","dst_ip":"192.0.2.30","dst_port":443,"protocol":"TCP","direction":"egress","comm":"ffmpeg","dns_name":"origin-a.example.org","count":1}"#,
        r#"{"src_ip":"10.0.1.1","dst_ip":"198.51.100.20","dst_port":443,"protocol":"TCP","direction":"egress","comm":"ffmpeg","dns_name":"origin-b.example.org","count":1}"#,
    );
    let out = suggest_files("dns-per-net", &full_cluster(), &flows, |_| {});
    let d = docs(&out.yaml);
    let ann = policy(&d, "ffmpeg-allowlist")["metadata"]["annotations"]["auditor.dev/dns-names"]
        .as_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = ann.split("; ").collect();
    assert!(
        parts.contains(&"192.0.2.30/32=origin-a.example.org"),
        "{ann}"
    );
    assert!(
        parts.contains(&"198.51.100.20/32=origin-b.example.org"),
        "{ann}"
    );
    assert!(parts.contains(&"203.0.113.80/31=cdn.example.net"), "{ann}");
}

/// `-n`/`-l` choose whose policies are suggested (the audited workloads; in fix mode the
/// denied flows from or to their pods); `--verdict` is refused with the reason.
#[test]
fn namespace_and_selector_choose_whose_policies() {
    let cluster = format!(
        "{}---\n{}",
        std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap(),
        std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap()
    );
    let flows = std::fs::read_to_string(Path::new(FIXTURES).join("flows.jsonl")).unwrap();
    let names = |yaml: &str| -> Vec<String> {
        yaml.lines()
            .filter_map(|l| l.strip_prefix("  name: "))
            .map(|n| n.trim_matches('"').to_owned())
            .collect()
    };
    let run_with =
        |name: &str, f: &dyn Fn(&mut SuggestArgs)| suggest_files(name, &cluster, &flows, |a| f(a));

    let out = run_with("ns-all", &|a| a.mode = Mode::Fix);
    assert_eq!(out.code, Ok(0));
    assert_eq!(
        names(&out.yaml),
        [
            "ffmpeg-fix-egress",
            "origin-fix-ingress",
            "probe-fix-egress"
        ]
    );
    // Only the denied flows of app=ffmpeg's pods are fixed.
    let out = run_with("ns-l", &|a| {
        a.mode = Mode::Fix;
        a.filter.selector = Some("app=ffmpeg".into());
    });
    assert_eq!(out.code, Ok(0));
    assert_eq!(names(&out.yaml), ["ffmpeg-fix-egress"]);
    // cdn's pods have no denied flow.
    let out = run_with("ns-cdn-fix", &|a| {
        a.mode = Mode::Fix;
        a.filter.namespace = Some("cdn".into());
    });
    assert_eq!(out.code, Ok(0));
    assert!(names(&out.yaml).is_empty(), "{}", out.yaml);

    let out = run_with("ns-media", &|a| a.filter.namespace = Some("media".into()));
    assert_eq!(out.code, Ok(0));
    assert_eq!(names(&out.yaml), ["ffmpeg-allowlist"]);
    // No ffmpeg ran in cdn: nothing audited there, said as a gap (exit 1).
    let out = run_with("ns-cdn", &|a| a.filter.namespace = Some("cdn".into()));
    assert_eq!(out.code, Ok(1));
    assert!(
        out.yaml.contains("no audited workload found: no flow with comm ffmpeg/ffprobe from or to a pod of the snapshot that -n/-l keep"),
        "{}",
        out.yaml
    );

    let out = run_with("ns-bad", &|a| a.filter.namespace = Some("nosuch".into()));
    let err = out.code.unwrap_err();
    assert!(
        err.contains("-n nosuch: the cluster has no namespace \"nosuch\" (namespaces of its objects: cdn, kube-system, media, monitoring)"),
        "{err}"
    );
    let out = run_with("ns-verdict", &|a| {
        a.filter.verdict = Some(auditor::filter::VerdictFilter::Denied)
    });
    let err = out.code.unwrap_err();
    assert!(
        err.starts_with("--verdict denied: suggest does not filter by verdict"),
        "{err}"
    );
}

/// An AdminNetworkPolicy Deny over an observed flow: no NetworkPolicy can allow it, so
/// neither mode writes one for it, and the gap names the rule to change.
#[test]
fn admin_network_policy_deny_is_a_gap_not_a_useless_allow() {
    let fixture = |f: &str| std::fs::read_to_string(Path::new(FIXTURES).join(f)).unwrap();
    let cluster = format!(
        "{}---\n{}",
        fixture("cluster.yaml"),
        fixture("policies.yaml")
    );
    let with_admin = format!("{cluster}---\n{}", fixture("admin-policies.yaml"));
    let flows = fixture("flows.jsonl");
    let want = "denied on egress by AdminNetworkPolicy deny-egress-cdn rule block-cdn (priority 10): an AdminNetworkPolicy Deny comes before every NetworkPolicy, so a NetworkPolicy allow cannot help and none is written; change that rule";
    for mode in [Mode::Allowlist, Mode::Fix] {
        let plain = suggest_files(
            &format!("anp-plain-{}", mode.as_str()),
            &cluster,
            &flows,
            |a| a.mode = mode,
        );
        assert_eq!(plain.code, Ok(0), "{}", plain.yaml);
        let out = suggest_files(
            &format!("anp-{}", mode.as_str()),
            &with_admin,
            &flows,
            |a| a.mode = mode,
        );
        // A flow left uncovered is a gap: exit 1, after the round trip passed.
        assert_eq!(out.code, Ok(1), "{}", out.yaml);
        assert!(out.yaml.contains(want), "{}:\n{}", mode.as_str(), out.yaml);
        assert!(
            out.yaml.contains("priority number is below 10"),
            "{}",
            out.yaml
        );
        // The 443 rule for 203.0.113.80 only exists without the ANP (allowlist: it is an
        // observed flow; fix: it is not denied today, so neither writes it there).
        let rules_for = |yaml: &str| {
            docs(yaml)
                .iter()
                .map(|d| serde_yaml::to_string(&d["spec"]).unwrap())
                .filter(|s| s.contains("203.0.113.80"))
                .count()
        };
        if mode == Mode::Allowlist {
            assert!(rules_for(&plain.yaml) > 0, "{}", plain.yaml);
        }
        assert_eq!(rules_for(&out.yaml), 0, "{}", out.yaml);
        validate(&out.path);
    }
}

/// The CNAME chain a name went through (issue 15 point 1) is in the rule's comment, and
/// the annotation and the Cilium matchName keep the name the process asked for.
#[test]
fn cname_chain_is_in_the_comment_and_the_asked_name_in_the_rule() {
    let flows = format!(
        "{FLOWS}{}\n",
        r#"{"src_ip":"10.0.1.1","dst_ip":"192.0.2.30","dst_port":443,"protocol":"TCP","direction":"egress","comm":"ffmpeg","dns_name":"origin.media.example","dns_cnames":["media.cdn-provider.example","edge7.cdn-provider.example"],"count":1}"#,
    );
    let out = suggest_files("cname", &full_cluster(), &flows, |_| {});
    assert_eq!(out.code, Ok(0), "{}", out.yaml);
    assert!(
        out.yaml.contains(
            "192.0.2.30/32: origin.media.example (CNAME media.cdn-provider.example -> edge7.cdn-provider.example)"
        ),
        "{}",
        out.yaml
    );
    let d = docs(&out.yaml);
    let ann = policy(&d, "ffmpeg-allowlist")["metadata"]["annotations"]["auditor.dev/dns-names"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        ann.split("; ")
            .any(|p| p == "192.0.2.30/32=origin.media.example"),
        "{ann}"
    );
    let cil = suggest_files("cname-cilium", &full_cluster(), &flows, |a| {
        a.flavor = Flavor::Cilium
    });
    let d = docs(&cil.yaml);
    let egress = policy(&d, "ffmpeg-allowlist")["spec"]["egress"]
        .as_sequence()
        .unwrap()
        .clone();
    assert!(
        egress
            .iter()
            .any(|r| r["toFQDNs"].as_sequence().is_some_and(|f| f
                .iter()
                .any(|m| m["matchName"].as_str() == Some("origin.media.example")))),
        "{}",
        cil.yaml
    );
}
