//! `auditor record` against real traffic between network namespaces.
//!
//! Each test makes its own namespaces and cgroup, starts the recorder scoped to
//! that cgroup, drives traffic with real tools, stops the recorder with SIGINT
//! and checks the flow log. Run as root with one test thread (`cargo xtask test`).

use std::io::Write as _;

use integration_tests::*;
use serde_json::{json, Value};

fn tcp_connect_script(addr: &str, port: u16, timeout: f64) -> String {
    format!(
        r#"import socket, errno
fam = socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout({timeout})
try:
    s.connect(('{addr}', {port}))
    s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    s.recv(100)
    print('established')
except ConnectionRefusedError:
    print('refused')
except (socket.timeout, TimeoutError):
    print('timeout')
except OSError as e:
    print('error', e.errno)
s.close()
"#
    )
}

fn start_http(net: &NetPair, ns: &str, addr: &str, port: u16, dir: &str) -> Bg {
    let bg = spawn(&format!(
        "ip netns exec {ns} python3 -m http.server {port} --bind {addr} --directory {dir}"
    ));
    wait_tcp(if ns == net.a { &net.b } else { &net.a }, addr, port);
    bg
}

#[test]
fn tcp_established_refused_and_timed_out_behind_nftables_drop() {
    let Some(()) = privileged("tcp outcomes") else {
        return;
    };
    tcp_outcomes("t", &[]);
}

/// The same outcomes through the fallback TCP hooks (host-wide tracepoints, as on a
/// kernel where cgroup sock_ops cannot attach).
#[test]
fn tcp_outcomes_through_the_tracepoint_fallback() {
    let Some(()) = privileged("tcp outcomes, tracepoints") else {
        return;
    };
    tcp_outcomes("tt", &["--tcp-tracepoints"]);
}

fn tcp_outcomes(tag: &str, extra: &[&str]) {
    let net = NetPair::new(tag);
    let cg = Cgroup::new(&format!("tcp{tag}"));
    let _http = start_http(&net, &net.b.clone(), &net.b4.clone(), 8080, "/tmp");
    // Port 9 on b: packets silently dropped by nftables in b's input hook.
    net.nft(&net.b, "table inet audtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 9 drop\n  }\n}\n");
    let mut args = vec!["--cgroup", cg.path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let rec = Recorder::start(&args);

    assert_eq!(
        py(&cg, &net.a, &tcp_connect_script(&net.b4, 8080, 5.0)).trim(),
        "established"
    );
    // The same connect from outside the audited cgroup is not recorded (sock_ops runs
    // only for the cgroup's sockets; the tracepoint checks the task's cgroup ancestry).
    let f = std::env::temp_dir().join(format!("aud-out-{}.py", std::process::id()));
    std::fs::write(&f, tcp_connect_script(&net.b4, 8080, 5.0)).unwrap();
    assert_eq!(
        must(&format!("ip netns exec {} python3 {}", net.a, f.display())).trim(),
        "established"
    );
    assert_eq!(
        py(&cg, &net.a, &tcp_connect_script(&net.b4, 7, 5.0)).trim(),
        "refused"
    );
    // tcp_syn_retries=1: one retransmit after 1 s, ETIMEDOUT after ~3 s.
    let r = py(&cg, &net.a, &tcp_connect_script(&net.b4, 9, 10.0));
    assert!(
        r.trim() == "error 110" || r.trim() == "timeout",
        "expected a timed out connect, got {r}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (flows, summary) = rec.stop();
    eprintln!("flows: {flows:#?}\nsummary: {summary}");

    let b4 = json!(net.b4);
    let est = find(
        &flows,
        &[
            ("dst_ip", b4.clone()),
            ("dst_port", json!(8080)),
            ("protocol", json!("TCP")),
        ],
    );
    assert!(!est.is_empty(), "established connect recorded");
    assert_eq!(sum(&est, "established"), 1);
    assert_eq!(est[0]["direction"], "egress");
    assert_eq!(est[0]["src_ip"], json!(net.a4));
    assert_eq!(est[0]["comm"], "python3");
    assert_eq!(est[0]["cgroup_id"], json!(cg.id()));
    assert!(est[0]["cgroup"]
        .as_str()
        .unwrap()
        .ends_with(cg.path.file_name().unwrap().to_str().unwrap()));
    assert!(est[0]["pid"].as_u64().unwrap() > 0);
    assert!(est[0]["first_seen"].as_str().unwrap().starts_with("20"));

    let refused = find(&flows, &[("dst_ip", b4.clone()), ("dst_port", json!(7))]);
    assert_eq!(sum(&refused, "refused"), 1, "refused: {refused:?}");
    assert!(refused.iter().any(|r| r["state"] == "refused"));

    let dropped = find(&flows, &[("dst_ip", b4.clone()), ("dst_port", json!(9))]);
    assert_eq!(sum(&dropped, "timed_out"), 1, "timed out: {dropped:?}");
    assert!(
        sum(&dropped, "syn_retransmits") >= 1,
        "SYN retransmits counted: {dropped:?}"
    );
    assert!(
        sum(&dropped, "drops") >= 2,
        "the SYN and its retransmit were dropped: {dropped:?}"
    );
    assert!(
        dropped.iter().any(|r| r["drop_reason"] == "NETFILTER_DROP"),
        "drop reason: {dropped:?}"
    );
    assert!(dropped.iter().any(|r| r["state"] == "timed_out"));
}

#[test]
fn inbound_accept_by_listener_in_audited_cgroup() {
    let Some(()) = privileged("inbound accept") else {
        return;
    };
    let net = NetPair::new("i");
    let cg = Cgroup::new("acc");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    // Listener in a, inside the audited cgroup; client in b, outside it.
    let server = format!(
        "{} python3 -c \"import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('{}',8443));s.listen();c,_=s.accept();c.recv(10);c.close()\"",
        cg.exec_in(&net.a),
        net.a4
    );
    let _srv = spawn(&server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    must(&format!(
        "ip netns exec {} python3 -c \"import socket,time;s=socket.create_connection(('{}',8443),timeout=5);s.send(b'hi');time.sleep(0.2);s.close()\"",
        net.b, net.a4
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (flows, _summary) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let acc = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("dst_ip", json!(net.a4)),
            ("dst_port", json!(8443)),
        ],
    );
    assert_eq!(acc.len(), 1, "one accept recorded: {flows:?}");
    assert_eq!(acc[0]["src_ip"], json!(net.b4));
    assert_eq!(acc[0]["state"], "accepted");
    assert_eq!(acc[0]["count"], 1);
    assert_eq!(acc[0]["comm"], "python3", "the listener's process");
    assert_eq!(acc[0]["cgroup_id"], json!(cg.id()));
}

#[test]
fn udp_to_high_port_connected_and_not() {
    let Some(()) = privileged("udp") else { return };
    let net = NetPair::new("u");
    let cg = Cgroup::new("udp");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    py(
        &cg,
        &net.a,
        &format!(
            r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    s.sendto(b'x' * 1316, ('{b}', 40000))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(('{b}', 50999))
for i in range(3):
    try:
        c.send(b'y')
    except ConnectionRefusedError:
        pass  # ICMP port unreachable from the previous datagram: nobody listens
"#,
            b = net.b4
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (flows, _) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let unconnected = find(
        &flows,
        &[
            ("dst_ip", json!(net.b4)),
            ("dst_port", json!(40000)),
            ("protocol", json!("UDP")),
        ],
    );
    assert_eq!(
        sum(&unconnected, "count"),
        5,
        "five datagrams: {unconnected:?}"
    );
    assert_eq!(unconnected[0]["state"], "sent");
    assert_eq!(unconnected[0]["comm"], "python3");
    let connected = find(
        &flows,
        &[
            ("dst_ip", json!(net.b4)),
            ("dst_port", json!(50999)),
            ("protocol", json!("UDP")),
        ],
    );
    assert_eq!(
        connected.len(),
        1,
        "connected UDP socket recorded at connect: {flows:?}"
    );
}

#[test]
fn ipv6_tcp_and_udp() {
    let Some(()) = privileged("ipv6") else { return };
    let net = NetPair::new("6");
    let cg = Cgroup::new("v6");
    let _http = spawn(&format!(
        "ip netns exec {} python3 -m http.server 8080 --bind {} --directory /tmp",
        net.b, net.b6
    ));
    wait_tcp(&net.a, &net.b6, 8080);
    // UDP to port 45001 of b is dropped by nftables there: an IPv6 kernel drop.
    net.nft(&net.b, "table inet audtest6 {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    udp dport 45001 drop\n  }\n}\n");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    assert_eq!(
        py(&cg, &net.a, &tcp_connect_script(&net.b6, 8080, 5.0)).trim(),
        "established"
    );
    py(&cg, &net.a, &format!("import socket\ns=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.sendto(b'z', ('{}', 45000))\ns.sendto(b'y', ('{}', 45001))\n", net.b6, net.b6));
    // An IPv6 accept: listener in a inside the audited cgroup, client in b outside it.
    let _srv = spawn(&format!(
        "{} python3 -c \"import socket;s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('{}',8443));s.listen();c,_=s.accept();c.recv(10);c.close()\"",
        cg.exec_in(&net.a),
        net.a6
    ));
    wait_tcp(&net.b, &net.a6, 8443);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (flows, _) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let t = find(
        &flows,
        &[
            ("dst_ip", json!(net.b6)),
            ("dst_port", json!(8080)),
            ("protocol", json!("TCP")),
        ],
    );
    assert_eq!(sum(&t, "established"), 1, "{flows:?}");
    assert_eq!(t[0]["src_ip"], json!(net.a6));
    let u = find(
        &flows,
        &[
            ("dst_ip", json!(net.b6)),
            ("dst_port", json!(45000)),
            ("protocol", json!("UDP")),
        ],
    );
    assert_eq!(sum(&u, "count"), 1, "{flows:?}");
    let d = find(
        &flows,
        &[("dst_ip", json!(net.b6)), ("dst_port", json!(45001))],
    );
    assert!(
        sum(&d, "drops") >= 1 && d.iter().any(|r| r["drop_reason"] == "NETFILTER_DROP"),
        "IPv6 drop with its 5-tuple: {flows:?}"
    );
    let acc = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("dst_ip", json!(net.a6)),
            ("dst_port", json!(8443)),
        ],
    );
    assert_eq!(sum(&acc, "count"), 1, "one IPv6 accept: {flows:?}");
    assert_eq!(acc[0]["src_ip"], json!(net.b6));
    assert_eq!(acc[0]["comm"], "python3", "the listener's process");
}

#[test]
fn dns_answer_names_the_connection_that_followed() {
    let Some(()) = privileged("dns") else { return };
    let net = NetPair::new("d");
    let cg = Cgroup::new("dns");
    let _dns = spawn(&format!(
        "ip netns exec {} dnsmasq --no-daemon --no-resolv --no-hosts --port 53 --listen-address {} --bind-interfaces --address=/origin.media.test/{} --local-ttl=30",
        net.b, net.b4, net.b4
    ));
    let _http = start_http(&net, &net.b.clone(), &net.b4.clone(), 8080, "/tmp");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let script = dns_then_connect(&net.b4, 8080);
    assert_eq!(py(&cg, &net.a, &script).trim(), net.b4);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (flows, summary) = rec.stop();
    eprintln!("flows: {flows:#?}\nsummary: {summary}");
    assert!(summary["dns_answers"].as_u64().unwrap() >= 1);
    let conn = find(
        &flows,
        &[
            ("dst_ip", json!(net.b4)),
            ("dst_port", json!(8080)),
            ("protocol", json!("TCP")),
        ],
    );
    // One flow; its late NO_SOCKET drops may land in a record of a later flush.
    assert_eq!(sum(&conn, "established"), 1, "{flows:?}");
    assert!(
        conn.iter().all(|r| r["dns_name"] == "origin.media.test"),
        "{flows:?}"
    );
    let q = find(
        &flows,
        &[("dst_port", json!(53)), ("protocol", json!("UDP"))],
    );
    assert!(!q.is_empty(), "the DNS query itself is a flow: {flows:?}");
}

/// Issue 15 point 1: the CNAME chain of an answer is kept with the name that was asked.
#[test]
fn dns_cname_chain_is_kept_with_the_name_that_was_asked() {
    let Some(()) = privileged("dns cname") else {
        return;
    };
    let net = NetPair::new("dc");
    let cg = Cgroup::new("dnsc");
    let _dns = spawn(&format!(
        "ip netns exec {} dnsmasq --no-daemon --no-resolv --no-hosts --port 53 --listen-address {} --bind-interfaces --host-record=edge7.cdn-provider.test,{} --cname=cdn.media.test,media.cdn-provider.test --cname=media.cdn-provider.test,edge7.cdn-provider.test --local-ttl=30",
        net.b, net.b4, net.b4
    ));
    let _http = start_http(&net, &net.b.clone(), &net.b4.clone(), 8080, "/tmp");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let script = dns_name_then_connect(&net.b4, "cdn.media.test", 8080);
    assert_eq!(py(&cg, &net.a, &script).trim(), net.b4);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (flows, _) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let conn = find(
        &flows,
        &[
            ("dst_ip", json!(net.b4)),
            ("dst_port", json!(8080)),
            ("protocol", json!("TCP")),
        ],
    );
    assert_eq!(conn.len(), 1, "{flows:?}");
    assert_eq!(
        conn[0]["dns_name"], "cdn.media.test",
        "the name the process asked for"
    );
    assert_eq!(
        conn[0]["dns_cnames"],
        json!(["media.cdn-provider.test", "edge7.cdn-provider.test"]),
        "the chain, in order, to the name that holds the address"
    );
}

#[test]
fn comm_filter_keeps_real_ffmpeg_and_leaves_out_curl_in_the_same_cgroup() {
    let Some(()) = privileged("ffmpeg comm filter") else {
        return;
    };
    let net = NetPair::new("f");
    let cg = Cgroup::new("ff");
    let media = std::env::temp_dir().join(format!("aud-media-{}", std::process::id()));
    std::fs::create_dir_all(&media).unwrap();
    must(&format!(
        "ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=duration=2:size=160x120:rate=25 -c:v mpeg2video -f mpegts {}/clip.ts",
        media.display()
    ));
    let _http = start_http(
        &net,
        &net.b.clone(),
        &net.b4.clone(),
        8000,
        media.to_str().unwrap(),
    );
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap(), "--comm", "ffmpeg"]);
    must(&format!(
        "{} ffmpeg -hide_banner -loglevel error -i http://{}:8000/clip.ts -f null -",
        cg.exec_in(&net.a),
        net.b4
    ));
    must(&format!(
        "{} curl -sf -o /dev/null http://{}:8000/clip.ts",
        cg.exec_in(&net.a),
        net.b4
    ));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (flows, _) = rec.stop();
    let _ = std::fs::remove_dir_all(&media);
    eprintln!("flows: {flows:#?}");
    let ff = find(
        &flows,
        &[("dst_ip", json!(net.b4)), ("dst_port", json!(8000))],
    );
    assert!(!ff.is_empty(), "ffmpeg's connection recorded");
    assert!(
        ff.iter().all(|r| r["comm"] == "ffmpeg"),
        "only ffmpeg: {ff:?}"
    );
    assert!(sum(&ff, "established") >= 1);
    assert!(ff[0]["exe"].as_str().unwrap_or("").ends_with("/ffmpeg"));
    assert!(
        flows.iter().all(|r| r["comm"] != "curl"),
        "curl left out: {flows:?}"
    );
}

#[test]
fn traffic_is_unaffected_by_the_auditor() {
    let Some(()) = privileged("traffic unaffected") else {
        return;
    };
    let net = NetPair::new("n");
    let cg = Cgroup::new("pass");
    let data = std::env::temp_dir().join(format!("aud-blob-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    must(&format!(
        "head -c 8388608 /dev/urandom > {}/blob",
        data.display()
    ));
    let want = must(&format!(
        "sha256sum {}/blob | cut -d' ' -f1",
        data.display()
    ));
    let _http = start_http(
        &net,
        &net.b.clone(),
        &net.b4.clone(),
        8081,
        data.to_str().unwrap(),
    );
    // Receiver for UDP in b; counts datagrams for 2 s.
    let udp_count = data.join("udp-count");
    let _udp = spawn(&format!(
        "ip netns exec {} python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('{}',46000));s.recv(2000);n=1;s.settimeout(2)\ntry:\n  while True: s.recv(2000); n+=1\nexcept Exception: pass\nopen('{}','w').write(str(n))\"",
        net.b, net.b4, udp_count.display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    for _ in 0..20 {
        let got = must(&format!(
            "{} sh -c 'curl -sf http://{}:8081/blob | sha256sum | cut -d\" \" -f1'",
            cg.exec_in(&net.a),
            net.b4
        ));
        assert_eq!(got, want, "payload intact through the auditor");
    }
    py(&cg, &net.a, &format!("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(200):\n    s.sendto(b'm'*1316,('{}',46000))\n    time.sleep(0.001)\n", net.b4));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (flows, summary) = rec.stop();
    let received: u64 = std::fs::read_to_string(&udp_count)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&data);
    assert_eq!(received, 200, "every datagram arrived");
    let http = find(
        &flows,
        &[("dst_ip", json!(net.b4)), ("dst_port", json!(8081))],
    );
    assert_eq!(sum(&http, "established"), 20);
    assert_eq!(
        sum(&http, "drops"),
        0,
        "no drops caused: {http:?} {summary}"
    );
}

#[test]
fn overflowed_ring_buffer_is_reported_with_exact_lost_counts() {
    let Some(()) = privileged("ring buffer overflow") else {
        return;
    };
    let net = NetPair::new("o");
    let cg = Cgroup::new("ovf");
    // Scoped to the test's cgroup (cgroup programs attached there, tracepoints filtered in
    // the kernel by cgroup ancestry): every new-flow event is one of our flows and every
    // flow in the kernel map reaches the log, so received + lost must equal the flows in
    // the log exactly, whatever else the machine is doing.
    let rec = Recorder::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--ring-buffer-bytes",
        "4096",
        "--stall-reader",
        "3s",
        "--no-drops",
        "--no-dns",
    ]);
    py(&cg, &net.a, &format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in range(41000, 41300):\n    s.sendto(b'o',('{}',p))\n", net.b4));
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let (flows, summary) = rec.stop();
    let ours: Vec<&Value> = flows
        .iter()
        .filter(|r| {
            r["dst_ip"] == json!(net.b4) && r["protocol"] == "UDP" && r["direction"] == "egress"
        })
        .collect();
    let mut ports: Vec<u64> = ours
        .iter()
        .map(|r| r["dst_port"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        300,
        "every flow reached the log from the kernel map even though its event was lost"
    );
    let received = summary["events"]["new_flow"].as_u64().unwrap_or(0);
    let lost = summary["lost_events"]["new_flow"].as_u64().unwrap_or(0);
    assert!(
        lost > 0,
        "a 4 KiB ring buffer cannot hold 300 events: {summary}"
    );
    let mut keys: Vec<String> = flows
        .iter()
        .filter(|r| r.get("direction").is_some())
        .map(|r| {
            format!(
                "{}|{}|{}|{}|{}|{}|{}",
                r["cgroup_id"],
                r["pid"],
                r["protocol"],
                r["direction"],
                r["src_ip"],
                r["dst_ip"],
                r["dst_port"]
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        received + lost,
        keys.len() as u64,
        "received {received} + lost {lost} == flows {}: {summary}",
        keys.len()
    );
    eprintln!("ring buffer of 4096 bytes, reader stalled 3 s: {received} new-flow events received, {lost} lost, {} flows in the log", keys.len());
}

#[test]
fn second_instance_is_refused_with_a_clear_message() {
    let Some(()) = privileged("second instance") else {
        return;
    };
    let rec = Recorder::start(&[]);
    let out = std::process::Command::new(auditor_bin())
        .args(["record", "--duration", "1s", "--output", "-", "--lock-file"])
        .arg(rec.dir.join("lock"))
        .output()
        .expect("run second auditor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another auditor is recording"), "{err}");
    drop(rec);
}

#[test]
fn killed_run_leaves_whole_lines_and_no_programs_behind() {
    let Some(()) = privileged("killed run") else {
        return;
    };
    let net = NetPair::new("k");
    let cg = Cgroup::new("kill");
    let mut rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    py(&cg, &net.a, &format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in range(42000,42050):\n    s.sendto(b'k',('{}',p))\n", net.b4));
    std::thread::sleep(std::time::Duration::from_millis(600));
    let log = rec.log.clone();
    // SIGKILL: no flush, no summary, no clean detach.
    rec.kill();
    let before = std::fs::read(&log).expect("flow log written by the periodic flush");
    assert!(before.ends_with(b"\n"), "only whole lines on disk");
    let lines = read_jsonl(&log);
    assert_eq!(
        lines
            .iter()
            .filter(|r| r["dst_ip"] == json!(net.b4))
            .count(),
        50,
        "flushed flows kept"
    );
    // The kernel dropped the programs with the process: nothing stays attached to the cgroup.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let attached = must(&format!("bpftool cgroup show {}", cg.path.display()));
    assert!(
        attached.trim().is_empty(),
        "programs still attached after SIGKILL: {attached}"
    );
    // A partial line (as a kill in the middle of a write would leave) is cut by the next run.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"src_ip\":\"10.")
        .unwrap();
    let out = std::process::Command::new(auditor_bin())
        .args(["record", "--duration", "300ms", "--lock-file"])
        .arg(rec.dir.join("lock2"))
        .arg("--output")
        .arg(&log)
        .output()
        .expect("second run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partial line"),
        "the repair is reported"
    );
    let after = std::fs::read(&log).unwrap();
    assert!(
        after.ends_with(b"\n") && after.starts_with(&before),
        "earlier lines kept, partial line gone"
    );
    assert!(read_jsonl(&log).len() >= lines.len());
}

#[test]
fn degrades_without_tracefs_or_btf_and_says_what_is_missing() {
    let Some(()) = privileged("degradation") else {
        return;
    };
    if sh("command -v unshare").stdout.is_empty() {
        eprintln!("SKIPPED degradation: no unshare");
        return;
    }
    let net = NetPair::new("g");
    let cg = Cgroup::new("deg");
    let dir = std::env::temp_dir().join(format!("aud-deg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("flows.jsonl");
    let summary = dir.join("summary.json");
    let ready = dir.join("ready");
    // A private mount namespace where tracefs is unmounted and BTF is an empty file.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
         mount --bind /dev/null /sys/kernel/btf/vmlinux; \
         exec {} record --cgroup {} --output {} --summary {} --ready-file {} --lock-file {} --flush-interval 200ms --duration 4s",
        auditor_bin().display(),
        cg.path.display(),
        log.display(),
        summary.display(),
        ready.display(),
        dir.join("lock").display()
    );
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    py(&cg, &net.a, &format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'd',('{}',43000))\n", net.b4));
    // Refused, but through cgroup sock_ops (no tracefs needed) the connect is recorded.
    assert_eq!(
        py(&cg, &net.a, &tcp_connect_script(&net.b4, 7, 5.0)).trim(),
        "refused"
    );
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "still records: {err}");
    assert!(
        err.contains("tracefs is not mounted") && err.contains("mount -t tracefs"),
        "names what is missing and the fix: {err}"
    );
    assert!(
        err.contains("kernel drops are not recorded")
            && err.contains("refused connects are reported as errors"),
        "says which outputs are missing: {err}"
    );
    let flows = read_jsonl(&log);
    assert!(
        flows.iter().any(|r| r["dst_port"] == 43000),
        "UDP still recorded without tracefs: {flows:?}"
    );
    let tcp = find(
        &flows,
        &[("dst_port", json!(7)), ("protocol", json!("TCP"))],
    );
    assert!(
        !tcp.is_empty() && tcp[0]["comm"] == "python3",
        "TCP still recorded through sock_ops without tracefs: {flows:?}"
    );
    assert!(
        sum(&tcp, "refused") == 0 && tcp.iter().any(|r| r["state"] == "error"),
        "without the reset tracepoint a refusal is an error: {tcp:?}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(s["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d.as_str().unwrap().contains("tracefs")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_capabilities_it_says_which_are_missing() {
    let Some(()) = privileged("capabilities") else {
        return;
    };
    if sh("command -v setpriv").stdout.is_empty() {
        eprintln!("SKIPPED capabilities: no setpriv");
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(auditor_bin())
        .args([
            "record",
            "--duration",
            "1s",
            "--output",
            "-",
            "--lock-file",
            "/tmp/auditor-nocaps.lock",
        ])
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("run as root"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn udp_replies_are_not_flows_of_their_own() {
    let Some(()) = privileged("udp replies") else {
        return;
    };
    let net = NetPair::new("r");
    let cg = Cgroup::new("rep");
    let echo = |addr: &str, port: u16| {
        format!("python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('{addr}',{port}))\nwhile True:\n  d,a=s.recvfrom(2000); s.sendto(d,a)\"")
    };
    // An audited UDP server in a, and an unaudited one in b.
    let _srv_a = spawn(&format!("{} {}", cg.exec_in(&net.a), echo(&net.a4, 47000)));
    let _srv_b = spawn(&format!("ip netns exec {} {}", net.b, echo(&net.b4, 47001)));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let client = |to: &str, port: u16| {
        format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\nfor i in range(3):\n    s.sendto(b'q',('{to}',{port}))\n    s.recvfrom(100)\n")
    };
    // Unaudited client in b -> audited server in a; audited client in a -> unaudited server in b.
    let f = std::env::temp_dir().join(format!("aud-udpc-{}.py", std::process::id()));
    std::fs::write(&f, client(&net.a4, 47000)).unwrap();
    must(&format!("ip netns exec {} python3 {}", net.b, f.display()));
    py(&cg, &net.a, &client(&net.b4, 47001));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let (flows, _) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let inbound = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("dst_port", json!(47000)),
            ("protocol", json!("UDP")),
        ],
    );
    assert_eq!(
        sum(&inbound, "count"),
        3,
        "the audited server's inbound flow: {flows:?}"
    );
    assert_eq!(
        inbound[0]["comm"], "python3",
        "the receiving process, found in /proc although it started before the recorder"
    );
    let outbound = find(
        &flows,
        &[
            ("direction", json!("egress")),
            ("dst_port", json!(47001)),
            ("protocol", json!("UDP")),
        ],
    );
    assert_eq!(
        sum(&outbound, "count"),
        3,
        "the audited client's flow: {flows:?}"
    );
    let udp: Vec<&Value> = flows.iter().filter(|r| r["protocol"] == "UDP").collect();
    assert_eq!(
        udp.iter()
            .map(|r| format!("{}:{}", r["direction"], r["dst_port"]))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "no flows for the replies (to ephemeral ports): {udp:?}"
    );
}

/// Issue 15 point 1: an ffmpeg SRT listener on `[::]` (a dual-stack socket) fed over IPv4
/// by an ffmpeg caller outside the audited cgroup, and a dual-stack TCP listener accepting
/// an IPv4 client. The inbound flows are IPv4 flows from the caller, and the listener's
/// replies to the caller's ephemeral port are not flows of their own.
#[test]
fn dual_stack_listeners_fed_over_ipv4_are_inbound_ipv4_flows() {
    let Some(()) = privileged("dual-stack listeners") else {
        return;
    };
    let net = NetPair::new("ds");
    let cg = Cgroup::new("ds");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let _srt = spawn(&format!(
        "{} ffmpeg -hide_banner -loglevel error -i srt://[::]:9000?mode=listener -f null -",
        cg.exec_in(&net.a)
    ));
    let _tcp = spawn(&format!(
        "{} python3 -c \"import socket;s=socket.socket(socket.AF_INET6);s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('::',8443));s.listen();c,_=s.accept();c.recv(10);c.close()\"",
        cg.exec_in(&net.a)
    ));
    wait_tcp(&net.b, &net.a4, 8443);
    must(&format!(
        "ip netns exec {} ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc=duration=3:size=160x120:rate=25 -c:v mpeg2video -f mpegts srt://{}:9000?mode=caller",
        net.b, net.a4
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (flows, _) = rec.stop();
    eprintln!("flows: {flows:#?}");
    let srt = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("protocol", json!("UDP")),
            ("dst_port", json!(9000)),
        ],
    );
    assert!(sum(&srt, "count") > 10, "the stream's datagrams: {flows:?}");
    for r in &srt {
        // One flow, written once per flush with the datagrams since the last one.
        assert_eq!(
            r["src_ip"],
            json!(net.b4),
            "an IPv4 caller, not a v4-mapped or garbled address: {r}"
        );
        assert_eq!(r["dst_ip"], json!(net.a4));
        assert_eq!(r["comm"], "ffmpeg");
        assert_eq!(r["src_port"], srt[0]["src_port"], "one caller");
    }
    let acc = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("protocol", json!("TCP")),
            ("dst_port", json!(8443)),
        ],
    );
    assert_eq!(
        sum(&acc, "count"),
        1,
        "one accept on the dual-stack listener: {flows:?}"
    );
    assert_eq!(acc[0]["src_ip"], json!(net.b4));
    assert_eq!(acc[0]["dst_ip"], json!(net.a4));
    assert_eq!(acc[0]["comm"], "python3", "the listener's process");
    let egress_udp: Vec<&Value> = flows
        .iter()
        .filter(|r| r["protocol"] == "UDP" && r["direction"] == "egress")
        .collect();
    assert!(
        egress_udp.is_empty(),
        "the listener's replies to the caller's ephemeral port are not egress flows: {egress_udp:?}"
    );
    for r in &flows {
        let (s, d) = (
            r["src_ip"].as_str().unwrap_or(""),
            r["dst_ip"].as_str().unwrap_or(""),
        );
        assert!(
            !s.starts_with("::ffff:") && !d.starts_with("::ffff:"),
            "v4-mapped address in {r}"
        );
    }
}

/// Issue 15 point 1: `ffmpeg -listen 1` started before the recorder closes its listening
/// socket right after the accept; the accept is still attributed to ffmpeg (its socket is
/// found by its 4-tuple), so `--comm ffmpeg` keeps it.
#[test]
fn accept_of_an_ffmpeg_listener_older_than_the_recorder_is_attributed() {
    let Some(()) = privileged("listener before recorder") else {
        return;
    };
    let net = NetPair::new("pl");
    let cg = Cgroup::new("pl");
    let _ff = spawn(&format!(
        "{} ffmpeg -hide_banner -loglevel error -f mpegts -i tcp://{}:9100?listen=1 -f null -",
        cg.exec_in(&net.a),
        net.a4
    ));
    // The listener is up before the recorder starts (ss in the namespace, no connection).
    let mut up = false;
    for _ in 0..100 {
        if must(&format!("ip netns exec {} ss -Hltn sport = :9100", net.a)).contains("9100") {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "ffmpeg listens on 9100");
    let rec = Recorder::start(&["--cgroup", cg.path.to_str().unwrap(), "--comm", "ffmpeg"]);
    must(&format!(
        "ip netns exec {} ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc=duration=2:size=160x120:rate=25 -c:v mpeg2video -f mpegts tcp://{}:9100",
        net.b, net.a4
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (flows, summary) = rec.stop();
    eprintln!("flows: {flows:#?}\nsummary: {summary}");
    let acc = find(
        &flows,
        &[
            ("direction", json!("ingress")),
            ("protocol", json!("TCP")),
            ("dst_port", json!(9100)),
        ],
    );
    assert_eq!(
        sum(&acc, "count"),
        1,
        "the accept, kept by --comm ffmpeg: {flows:?}"
    );
    assert_eq!(acc[0]["comm"], "ffmpeg");
    assert!(
        acc[0]["pid"].as_u64().is_some_and(|p| p > 0),
        "with its pid: {:?}",
        acc[0]
    );
    assert_eq!(acc[0]["src_ip"], json!(net.b4));
}

/// Issue 15 point 6: `--comm ffmpeg` chooses which pods are audited; every flow of such a
/// pod is recorded with its process, the sidecar's included (also one made before ffmpeg
/// started), while a pod without ffmpeg is left out.
#[test]
fn comm_audits_the_pod_so_its_sidecars_flows_are_kept_with_their_process() {
    use integration_tests::node::{cleanup_stale, Node};
    let Some(()) = privileged("pods, not processes") else {
        return;
    };
    let tag = "pc1";
    cleanup_stale(tag);
    let mut node = Node::new(tag);
    let packager = node.add_pod("media", "packager", 10, &[("app", "packager")], &[], None);
    let tool = node.add_pod("media", "tool", 11, &[("app", "tool")], &[], None);
    let origin = node.add_external("origin.example.test", "198.51.100.7");
    let media = std::env::temp_dir().join(format!("aud-podcomm-{}", std::process::id()));
    std::fs::create_dir_all(&media).unwrap();
    must(&format!(
        "ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=duration=10:size=160x120:rate=25 -c:v mpeg2video -f mpegts {}/clip.ts",
        media.display()
    ));
    for port in [8000, 8001, 8002] {
        node.spawn_in_external(
            &origin,
            &format!(
                "python3 -m http.server {port} --directory {}",
                media.display()
            ),
            None,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !node
            .run_on_node(&format!(
                "curl -s -o /dev/null -m 1 http://{}:{port}/",
                origin.ip
            ))
            .0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "origin :{port} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // The packager pod's second container: a curl sidecar.
    let sidecar = packager
        .cgroup
        .parent()
        .unwrap()
        .join(format!("cri-containerd-{}.scope", "5".repeat(64)));
    std::fs::create_dir_all(&sidecar).unwrap();
    let in_sidecar = format!(
        "sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"' sh",
        sidecar.display(),
        packager.netns
    );
    let rec = Recorder::start(&[
        "--cgroup",
        node.cgroup_root.to_str().unwrap(),
        "--comm",
        "ffmpeg",
    ]);
    // Before ffmpeg runs: the sidecar's first request, and the tool pod's.
    must(&format!(
        "{in_sidecar} curl -sf -o /dev/null http://{}:8001/",
        origin.ip
    ));
    assert!(
        node.run_in(
            &tool,
            &format!("curl -sf -o /dev/null http://{}:8002/", origin.ip)
        )
        .0
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // ffmpeg in the main container, then the sidecar again while ffmpeg runs.
    node.spawn_in(
        &packager,
        &format!(
            "ffmpeg -hide_banner -loglevel error -re -i http://{}:8000/clip.ts -f null -",
            origin.ip
        ),
        None,
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    must(&format!(
        "{in_sidecar} curl -sf -o /dev/null http://{}:8002/",
        origin.ip
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (flows, summary) = rec.stop();
    let _ = std::fs::remove_dir_all(&media);
    eprintln!("flows: {flows:#?}\nsummary: {summary}");
    let of = |src: &str, port: u16| {
        find(
            &flows,
            &[
                ("src_ip", json!(src)),
                ("dst_ip", json!(origin.ip)),
                ("dst_port", json!(port)),
            ],
        )
    };
    let ff = of(&packager.ip, 8000);
    assert!(sum(&ff, "established") >= 1, "ffmpeg's stream: {flows:?}");
    assert!(ff.iter().all(|r| r["comm"] == "ffmpeg"));
    let early = of(&packager.ip, 8001);
    assert_eq!(
        sum(&early, "established"),
        1,
        "the sidecar's request before ffmpeg started: {flows:?}"
    );
    assert_eq!(early[0]["comm"], "curl", "tagged with its process");
    let late = of(&packager.ip, 8002);
    assert_eq!(
        sum(&late, "established"),
        1,
        "the sidecar's request while ffmpeg runs: {flows:?}"
    );
    assert_eq!(late[0]["comm"], "curl");
    assert!(
        of(&tool.ip, 8002).is_empty(),
        "the pod without ffmpeg is not audited: {flows:?}"
    );
}
