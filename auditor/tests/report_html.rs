//! `auditor report` on the fixture: every file written, the HTML self-contained, and the
//! HTML opened in headless Chromium (Debian `chromium`; skipped with a reason if missing):
//! the DOM shows the workloads and verdicts, and the screenshot shows both verdict colours.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditor::report::{run, ReportArgs};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn report_dir(name: &str) -> PathBuf {
    report_dir_with(name, auditor::filter::FilterArgs::default())
}

fn report_dir_with(name: &str, filter: auditor::filter::FilterArgs) -> PathBuf {
    report_dir_full(name, filter, Default::default())
}

fn report_dir_full(
    name: &str,
    filter: auditor::filter::FilterArgs,
    what_if: auditor::whatif::WhatIfArgs,
) -> PathBuf {
    report_dir_extra(name, filter, what_if, "")
}

/// The fixture's report, its flow log with `extra_flows` (JSON lines) appended.
fn report_dir_extra(
    name: &str,
    filter: auditor::filter::FilterArgs,
    what_if: auditor::whatif::WhatIfArgs,
    extra_flows: &str,
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("auditor-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(
        &snapshot,
        format!(
            "{}---\n{}",
            std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap(),
            std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap()
        ),
    )
    .unwrap();
    let args = ReportArgs {
        source: auditor::cluster::ClusterSource::file(snapshot),
        flows: {
            let f = dir.join("flows.jsonl");
            let base = std::fs::read_to_string(Path::new(FIXTURES).join("flows.jsonl")).unwrap();
            std::fs::write(&f, format!("{base}{extra_flows}")).unwrap();
            f
        },
        output: dir.join("out"),
        select: None,
        comm: vec!["ffmpeg".into(), "ffprobe".into()],
        max_prefix: 32,
        skip_invalid: false,
        filter,
        drills: vec![],
        what_if,
        min_observation: auditor::coverage::DEFAULT_MIN_OBSERVATION,
    };
    assert_eq!(run(&args).map_err(|e| e.to_string()), Ok(0));
    dir.join("out")
}

#[test]
fn writes_every_file_with_the_sections() {
    let out = report_dir("files");
    for f in [
        "report.md",
        "report.html",
        "report.json",
        "allowlist.yaml",
        "fix.yaml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["summary"]["denied_flows"], 2);
    assert_eq!(
        json["summary"]["audited_workloads"][0],
        "media/Deployment/ffmpeg"
    );
    assert_eq!(json["workloads"][0]["workload"], "media/Deployment/ffmpeg");
    assert!(json["blocked"][0]["why"]
        .as_str()
        .unwrap()
        .contains("isolated by media/default-deny"));
    assert!(json["unused_rules"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    assert_eq!(json["suggestions"][0]["verified"], true);
    assert_eq!(json["suggestions"][1]["verified"], true);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "## Blocked flows",
        "### media/Deployment/ffmpeg (audited)",
        "## Installed rules no observed flow used",
        "## Suggested allowlist",
        "## Suggested fix",
        "```yaml",
    ] {
        assert!(md.contains(s), "{s} missing from report.md");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: nothing fetched from anywhere.
    for bad in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script src",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(bad), "external asset: {bad}");
    }
    assert!(html.contains("<svg") && html.contains("<style>"));
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn chromium_cmd(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn chromium_renders_workloads_and_verdicts() {
    let Some(bin) = chromium() else {
        eprintln!("SKIP: chromium not installed (apt-get install chromium; cargo xtask setup installs it)");
        return;
    };
    // One allowed flow the kernel dropped: the report's observed column and its
    // "blocked although every policy allows them" section must render.
    let out = report_dir_extra(
        "chromium",
        Default::default(),
        Default::default(),
        "{\"src_ip\":\"10.0.1.1\",\"dst_ip\":\"203.0.113.80\",\"dst_port\":443,\"protocol\":\"TCP\",\"direction\":\"egress\",\"state\":\"timed_out\",\"comm\":\"ffmpeg\",\"dns_name\":\"cdn.example.net\",\"count\":2,\"timed_out\":2,\"drops\":4,\"drop_reason\":\"NETFILTER_DROP\"}\n",
    );
    let url = format!("file://{}", out.join("report.html").display());
    let profile = out.join("profile");
    let dom = chromium_cmd(bin, &profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for want in [
        "media/Deployment/ffmpeg",
        "media/ffmpeg (Deployment)",
        "ingest.example.net (203.0.113.81)",
        "class=\"edge deny\"",
        "class=\"edge allow\"",
        "1935/TCP",
        "v-deny",
        "v-allow",
        "audited",
        "NETFILTER_DROP",
        "Blocked although every policy allows them",
    ] {
        assert!(dom.contains(want), "{want} missing from the rendered DOM");
    }
    let png = out.join("report.png");
    let status = chromium_cmd(bin, &profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .expect("run chromium");
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (w, h, pixels) = decode_png(&std::fs::read(&png).unwrap());
    assert_eq!((w, h), (1280, 1100));
    // The verdict colours are on screen: green (#2e7d32) allowed, red (#c62828) denied,
    // and the audited workload's blue border (#1565c0).
    let near = |c: [u8; 3], p: &[u8]| c.iter().zip(p).all(|(a, b)| a.abs_diff(*b) <= 24);
    let count = |c: [u8; 3]| {
        pixels
            .as_chunks::<3>()
            .0
            .iter()
            .filter(|p| near(c, &p[..]))
            .count()
    };
    let (green, red, blue) = (
        count([0x2e, 0x7d, 0x32]),
        count([0xc6, 0x28, 0x28]),
        count([0x15, 0x65, 0xc0]),
    );
    eprintln!(
        "screenshot {}: green {green}, red {red}, blue {blue} pixels",
        png.display()
    );
    assert!(
        green > 200 && red > 200 && blue > 200,
        "green {green}, red {red}, blue {blue}"
    );
    if std::env::var_os("AUDITOR_KEEP_REPORT").is_some() {
        eprintln!("kept {}", png.display());
    }
}

/// Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) to RGB.
fn decode_png(data: &[u8]) -> (u32, u32, Vec<u8>) {
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
    let mut pos = 8;
    let (mut w, mut h, mut channels) = (0u32, 0u32, 0usize);
    let mut idat = Vec::new();
    while pos + 8 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &data[pos + 4..pos + 8];
        let body = &data[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(body[0..4].try_into().unwrap());
                h = u32::from_be_bytes(body[4..8].try_into().unwrap());
                assert_eq!(body[8], 8, "bit depth");
                channels = match body[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
                assert_eq!(body[12], 0, "interlaced");
            }
            b"IDAT" => idat.extend_from_slice(body),
            _ => {}
        }
        pos += 12 + len;
    }
    let raw = inflate_zlib(&idat);
    let stride = w as usize * channels;
    let mut prev = vec![0u8; stride];
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for row in raw.chunks_exact(stride + 1) {
        let filter = row[0];
        let mut cur = row[1..].to_vec();
        for i in 0..stride {
            let a = if i >= channels {
                cur[i - channels] as i32
            } else {
                0
            };
            let b = prev[i] as i32;
            let c = if i >= channels {
                prev[i - channels] as i32
            } else {
                0
            };
            let add = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            cur[i] = cur[i].wrapping_add(add as u8);
        }
        for px in cur.chunks_exact(channels) {
            rgb.extend_from_slice(&px[..3]);
        }
        prev = cur;
    }
    (w, h, rgb)
}

/// A small inflate (RFC 1950/1951) for the screenshot; no dependency needed for a test.
fn inflate_zlib(data: &[u8]) -> Vec<u8> {
    struct Bits<'a> {
        d: &'a [u8],
        pos: usize,
        bit: u32,
    }
    impl Bits<'_> {
        fn get(&mut self, n: u32) -> u32 {
            let mut v = 0;
            for i in 0..n {
                let byte = self.d[self.pos];
                v |= (((byte >> self.bit) & 1) as u32) << i;
                self.bit += 1;
                if self.bit == 8 {
                    self.bit = 0;
                    self.pos += 1;
                }
            }
            v
        }
    }
    fn table(lengths: &[u8]) -> (Vec<u16>, Vec<u16>) {
        let mut counts = vec![0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offs = [0u16; 16];
        for i in 1..16 {
            offs[i] = offs[i - 1] + counts[i - 1];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        (counts, symbols)
    }
    fn decode(b: &mut Bits, t: &(Vec<u16>, Vec<u16>)) -> u16 {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= b.get(1) as i32;
            let count = t.0[len] as i32;
            if code - count < first {
                return t.1[(index + (code - first)) as usize];
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        panic!("bad code");
    }
    const LBASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const LEXT: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    const DBASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DEXT: [u8; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];
    let mut b = Bits {
        d: &data[2..],
        pos: 0,
        bit: 0,
    };
    let mut out: Vec<u8> = Vec::new();
    loop {
        let last = b.get(1);
        match b.get(2) {
            0 => {
                if b.bit != 0 {
                    b.bit = 0;
                    b.pos += 1;
                }
                let len = u16::from_le_bytes([b.d[b.pos], b.d[b.pos + 1]]) as usize;
                b.pos += 4;
                out.extend_from_slice(&b.d[b.pos..b.pos + len]);
                b.pos += len;
            }
            kind => {
                let (lit, dist) = if kind == 1 {
                    let mut l = [8u8; 288];
                    l[144..256].fill(9);
                    l[256..280].fill(7);
                    (table(&l), table(&[5u8; 30]))
                } else {
                    let hlit = b.get(5) as usize + 257;
                    let hdist = b.get(5) as usize + 1;
                    let hclen = b.get(4) as usize + 4;
                    const ORDER: [usize; 19] = [
                        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                    ];
                    let mut cl = [0u8; 19];
                    for &o in ORDER.iter().take(hclen) {
                        cl[o] = b.get(3) as u8;
                    }
                    let clt = table(&cl);
                    let mut lens = Vec::with_capacity(hlit + hdist);
                    while lens.len() < hlit + hdist {
                        match decode(&mut b, &clt) {
                            s @ 0..=15 => lens.push(s as u8),
                            16 => {
                                let prev = *lens.last().unwrap();
                                let n = 3 + b.get(2);
                                lens.extend(std::iter::repeat_n(prev, n as usize));
                            }
                            17 => {
                                let n = 3 + b.get(3);
                                lens.extend(std::iter::repeat_n(0, n as usize));
                            }
                            _ => {
                                let n = 11 + b.get(7);
                                lens.extend(std::iter::repeat_n(0, n as usize));
                            }
                        }
                    }
                    (table(&lens[..hlit]), table(&lens[hlit..]))
                };
                loop {
                    let sym = decode(&mut b, &lit);
                    if sym < 256 {
                        out.push(sym as u8);
                    } else if sym == 256 {
                        break;
                    } else {
                        let i = (sym - 257) as usize;
                        let len = LBASE[i] as usize + b.get(LEXT[i] as u32) as usize;
                        let d = decode(&mut b, &dist) as usize;
                        let dist = DBASE[d] as usize + b.get(DEXT[d] as u32) as usize;
                        let start = out.len() - dist;
                        for k in 0..len {
                            out.push(out[start + k]);
                        }
                    }
                }
            }
        }
        if last == 1 {
            break;
        }
    }
    out
}

/// `-n`, `-l`, `--verdict`: the flows shown as `diff` shows them, unused rules of `-n`'s
/// namespace, and (`-n`, `-l`) whose policies are suggested.
#[test]
fn kubectl_filters_choose_the_flows_and_the_suggestions() {
    let read = |out: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
    };
    let all = read(&report_dir("unfiltered"));
    let denied = read(&report_dir_with(
        "denied",
        auditor::filter::FilterArgs {
            namespace: Some("media".into()),
            verdict: Some(auditor::filter::VerdictFilter::Denied),
            ..Default::default()
        },
    ));
    assert_eq!(denied["summary"]["distinct_flows"], 2);
    assert_eq!(denied["summary"]["denied_flows"], 2);
    assert_eq!(denied["summary"]["allowed_flows"], 0);
    assert_eq!(denied["blocked"], all["blocked"]);
    for w in denied["workloads"].as_array().unwrap() {
        for f in w["flows"].as_array().unwrap() {
            assert_eq!(f["verdict"], "deny", "{f}");
        }
    }
    // --verdict does not change the suggestions.
    assert_eq!(denied["suggestions"], all["suggestions"]);
    let unused = denied["unused_rules"].as_array().unwrap();
    assert!(!unused.is_empty());
    assert!(
        unused
            .iter()
            .all(|r| r["policy"].as_str().unwrap().starts_with("media/")),
        "{unused:?}"
    );

    // -n cdn: only flows from or to cdn's pods, and no workload of cdn ran ffmpeg, so
    // nothing is audited and no fix concerns it.
    let cdn = read(&report_dir_with(
        "cdn",
        auditor::filter::FilterArgs {
            namespace: Some("cdn".into()),
            ..Default::default()
        },
    ));
    assert_eq!(cdn["summary"]["distinct_flows"], 1);
    assert_eq!(cdn["summary"]["audited_workloads"], serde_json::json!([]));
    assert_eq!(cdn["suggestions"][0]["policies"], 0);
    assert_eq!(cdn["suggestions"][1]["policies"], 0);
    assert_eq!(all["suggestions"][1]["policies"], 3);
}

/// `--policies`: the section on what the proposed policies would change, in every file,
/// and the summary line; without it, none of that.
#[test]
fn what_the_proposed_policies_would_change() {
    let what_if = auditor::whatif::WhatIfArgs {
        policies: vec![
            Path::new(FIXTURES).join("whatif-tighten.yaml"),
            Path::new(FIXTURES).join("whatif-unblock.yaml"),
        ],
        replace: false,
    };
    let out = report_dir_full("whatif", Default::default(), what_if);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["summary"]["would_break"], 1);
    assert_eq!(json["summary"]["would_unblock"], 1);
    let w = &json["what_if"];
    assert_eq!(w["mode"], "apply");
    assert_eq!(w["policies"]["proposed"], 2);
    assert_eq!(w["policies"]["replaced"], 1);
    assert_eq!(w["counts"]["checked"], 6);
    assert_eq!(w["broken"][0]["dst_ip"], "203.0.113.80");
    assert_eq!(w["broken"][0]["today"], "allow");
    assert_eq!(w["broken"][0]["proposed"], "deny");
    assert_eq!(w["unblocked"][0]["dst_ip"], "203.0.113.81");
    assert!(w["unblocked"][0]["why_proposed"]
        .as_str()
        .unwrap()
        .contains("media/ffmpeg-ingest egress[0]"));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(
            "- what if: **1 would break, 1 would be unblocked** by the proposed policies ("
        ),
        "{md}"
    );
    let i = md
        .find("## What the proposed policies would change")
        .expect("section");
    let section = &md[i..];
    let b = section
        .find("### Would break (allowed today, denied by the proposal)")
        .unwrap();
    let u = section
        .find("### Would unblock (denied today, allowed by the proposal)")
        .unwrap();
    assert!(b < u);
    assert!(section[b..u].contains("| media/ffmpeg-7c9d8b6f5-x2k4q | 203.0.113.80 (external) | 443/TCP | 1 | allow | deny | egress allowed by media/ffmpeg-egress egress[2]"), "{section}");
    assert!(
        section[u..].contains("| 203.0.113.81 (external) | 1935/TCP | 1 | deny | allow |"),
        "{section}"
    );

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<p id=\"what-if-summary\" class=\"bad\">What if: <b>1 would break, 1 would be unblocked</b>"), "summary line");
    let i = html
        .find("<h2 id=\"what-if\">What the proposed policies would change</h2>")
        .expect("html section");
    let section = &html[i..];
    assert!(section.contains("<td>203.0.113.80 (external)</td><td>443/TCP</td><td>1</td><td class=\"v-allow\">allow</td><td class=\"v-deny\">deny</td>"), "{section}");

    // --replace: the tightened policy alone; the probe's call to origin is let through.
    let replaced = report_dir_full(
        "whatif-replace",
        Default::default(),
        auditor::whatif::WhatIfArgs {
            policies: vec![Path::new(FIXTURES).join("whatif-tighten.yaml")],
            replace: true,
        },
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(replaced.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["what_if"]["mode"], "replace");
    assert_eq!(json["what_if"]["policies"]["in_effect"], 1);
    assert_eq!(json["what_if"]["unblocked"][0]["source"], "media/probe");
    let md = std::fs::read_to_string(replaced.join("report.md")).unwrap();
    assert!(md.contains("replacing all 3 installed NetworkPolicies: of 6 observed flows, 1 would break, 1 would be unblocked."), "{md}");

    // Without --policies: no section, no summary counts.
    let plain = report_dir("no-whatif");
    let md = std::fs::read_to_string(plain.join("report.md")).unwrap();
    assert!(!md.contains("What the proposed policies") && !md.contains("what if"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plain.join("report.json")).unwrap()).unwrap();
    assert!(json.get("what_if").is_none() && json["summary"].get("would_break").is_none());
}

/// Issue 15 point 3: the picture stays readable. An allowed and a denied edge between the
/// same two boxes are drawn apart, no two edge labels overlap, and the nodes (kubelet
/// probes in, the API server out) sit in the sources column, not among the audited.
#[test]
fn picture_edges_and_labels_do_not_cover_each_other() {
    let dir = std::env::temp_dir().join(format!("auditor-report-picture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(
        &snapshot,
        format!(
            "{}---\n{}---\n{}",
            std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap(),
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 10.0.0.10\n",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ffmpeg-egress\n  namespace: media\nspec:\n  podSelector:\n    matchLabels:\n      app: ffmpeg\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          app: origin\n    ports:\n    - port: 5000\n      protocol: UDP\n",
        ),
    )
    .unwrap();
    let flows = dir.join("flows.jsonl");
    let rec = |src: &str, dst: &str, port: u16, proto: &str, dir: &str| {
        format!("{{\"src_ip\":\"{src}\",\"dst_ip\":\"{dst}\",\"dst_port\":{port},\"protocol\":\"{proto}\",\"direction\":\"{dir}\",\"comm\":\"ffmpeg\",\"count\":3}}\n")
    };
    std::fs::write(
        &flows,
        [
            rec("10.0.1.1", "10.0.1.2", 5000, "UDP", "egress"),
            rec("10.0.1.1", "10.0.1.2", 5001, "UDP", "egress"),
            rec("10.0.0.10", "10.0.1.1", 8080, "TCP", "ingress"),
            rec("10.0.1.1", "10.0.0.10", 6443, "TCP", "egress"),
        ]
        .concat(),
    )
    .unwrap();
    let args = ReportArgs {
        source: auditor::cluster::ClusterSource::file(snapshot),
        flows,
        output: dir.join("out"),
        select: None,
        comm: vec!["ffmpeg".into()],
        max_prefix: 32,
        skip_invalid: false,
        filter: Default::default(),
        drills: vec![],
        what_if: Default::default(),
        min_observation: std::time::Duration::from_secs(24 * 3600),
    };
    run(&args).unwrap();
    let html = std::fs::read_to_string(dir.join("out/report.html")).unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    let attr = |s: &str, name: &str| -> f64 {
        let at = s.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        s[at..at + s[at..].find('"').unwrap()].parse().unwrap()
    };
    // Boxes: the node in the sources column (x = 20), the audited ffmpeg in the middle.
    let node_box = |name: &str| {
        let g = &svg[svg
            .find(&format!("data-name=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} in {svg}"))..];
        attr(&g[g.find("<rect").unwrap()..], "x")
    };
    assert_eq!(node_box("nodes (kubelet, host network)"), 20.0, "{svg}");
    assert_eq!(node_box("media/ffmpeg (Deployment)"), 410.0, "{svg}");
    // The two ffmpeg -> origin edges: different paths.
    let paths: Vec<&str> = svg
        .split("<g class=\"edge")
        .skip(1)
        .filter(|g| g.contains("media/ffmpeg (Deployment) -&gt; media/origin (StatefulSet)"))
        .map(|g| {
            let at = g.find(" d=\"").unwrap() + 4;
            &g[at..at + g[at..].find('"').unwrap()]
        })
        .collect();
    assert_eq!(paths.len(), 2, "an allowed and a denied edge: {svg}");
    assert_ne!(paths[0], paths[1], "drawn apart");
    // No two labels overlap (about 6.2 px a character at 11 px, 13 px a line).
    let labels: Vec<(f64, f64, f64, String)> = svg
        .split("<text ")
        .skip(1)
        .filter(|t| t.contains("font-size=\"11\""))
        .map(|t| {
            let text = t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].to_owned();
            (
                attr(t, "x"),
                attr(t, "y"),
                text.chars().count() as f64 * 3.1,
                text,
            )
        })
        .collect();
    assert!(labels.len() >= 4, "{labels:?}");
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            assert!(
                (a.0 - b.0).abs() >= a.2 + b.2 || (a.1 - b.1).abs() >= 13.0,
                "labels overlap: {a:?} and {b:?}"
            );
        }
    }
}
