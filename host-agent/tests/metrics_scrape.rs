//! The metrics endpoint of a running `vmdedup serve`, scraped over HTTP and
//! read back by the strict OpenMetrics parser of Python's
//! `prometheus_client` (Debian's `python3-prometheus-client`, installed by
//! `scripts/setup`), then checked against what the guests did and what
//! `vmdedup status --json` says.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

mod common;
use common::agent::Guest;
use common::process::s;
use common::process::spawn_agent;
use common::TempDir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");
/// Debian's interpreter, where `python3-prometheus-client` installs.
const PYTHON: &str = "/usr/bin/python3";

/// GET /metrics with or without asking for OpenMetrics: (content type, body).
fn scrape(addr: &str, openmetrics: bool) -> (String, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "text/plain"
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap()
        .to_string();
    (ctype, body.to_string())
}

/// Parses `text` with prometheus_client's parser (`openmetrics`: the strict
/// OpenMetrics one, else the 0.0.4 text one) and returns its families as
/// JSON: `[{name, type, samples: [[name, {labels}, value]]}]`.
fn parse(text: &str, openmetrics: bool) -> Vec<Value> {
    let module = if openmetrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys, json\n\
         from {module} import text_string_to_metric_families as parse\n\
         out = [dict(name=f.name, type=f.type, samples=[[s.name, s.labels, s.value] for s in f.samples])\n\
                for f in parse(sys.stdin.read())]\n\
         print(json.dumps(out))\n"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (scripts/setup installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition (or python3-prometheus-client is missing: run scripts/setup):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Every `# TYPE` once, and each sample line under the family whose header
/// came last (so a family's samples are contiguous).
fn assert_grouped(text: &str) {
    let mut seen = BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap().to_string();
            assert!(seen.insert(current.clone()), "{current} twice:\n{text}");
        } else if !line.starts_with('#') {
            assert!(
                line.starts_with(&current),
                "{line} is not in family {current}:\n{text}"
            );
        }
    }
}

#[test]
fn a_running_agent_exports_strict_openmetrics() {
    let dir = TempDir::new("metrics-scrape");
    let d = &dir.0;
    std::fs::create_dir_all(d.join("tree")).unwrap();
    std::fs::write(d.join("tree/f"), vec![7u8; 3 * 4096]).unwrap();
    let file = d.join("agent.toml");
    let control = d.join("control.sock");
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\nworkers = 1\n\
             control_socket = \"{d}/control.sock\"\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{d}/tree\"\ndomains = [\"*\"]\n\
             [[vm]]\nname = \"vm1\"\n\
             [[vm]]\nname = \"vm2\"\ndomain = \"tenant-a\"\n",
            d = s(d)
        ),
    )
    .unwrap();
    // A free loopback port (bound and let go: the agent binds it next).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--config",
        s(&file),
        "--ring-size",
        "64K",
        "--metrics",
        &addr,
    ])
    .env("VMDEDUP_LOG", "warn");
    let _agent = spawn_agent(cmd, &control, "the agent exited");

    // vm1 asks 3 hints (a hit at the end), vm2 asks 2 for a missing file.
    let tree = d.join("tree/f");
    let mut vm1 = Guest::attach(&d.join("vmdedup-vm1.ring"));
    vm1.hit(1, "f", &tree, 3);
    while vm1.req < 3 {
        vm1.ask(1, "f", &tree, 3);
    }
    let mut vm2 = Guest::attach(&d.join("vmdedup-vm2.ring"));
    for _ in 0..2 {
        vm2.ask(1, "nope", &tree, 1);
    }
    let hints: BTreeMap<&str, u64> = [("vm1", vm1.req), ("vm2", 2)].into();

    let (ctype, om) = scrape(&addr, true);
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ctype}"
    );
    assert_grouped(&om);
    let fams = parse(&om, true);
    let mut names = BTreeSet::new();
    for f in &fams {
        let name = f["name"].as_str().unwrap();
        assert!(names.insert(name), "family {name} twice");
        if f["type"] != "counter" {
            assert!(!name.ends_with("_total"), "{name} is a {}", f["type"]);
        }
    }
    let family = |name: &str| {
        fams.iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    };
    let sample = |fam: &str, sample: &str, vm: &str| -> f64 {
        family(fam)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == sample && s[1]["vm"] == vm && s[1].get("le").is_none())
            .unwrap_or_else(|| panic!("no {sample} of {vm}"))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(family("vmdedup_hint_latency_seconds")["type"], "histogram");
    assert_eq!(family("vmdedup_hints")["type"], "counter");
    for (vm, n) in &hints {
        assert_eq!(
            sample("vmdedup_hints", "vmdedup_hints_total", vm),
            *n as f64
        );
        assert_eq!(
            sample(
                "vmdedup_hint_latency_seconds",
                "vmdedup_hint_latency_seconds_count",
                vm
            ),
            *n as f64,
            "{vm}: the histogram counts every hint answered"
        );
    }
    // Per-VM families are labelled with exactly the VM names and domains.
    for fam in [
        "vmdedup_hints",
        "vmdedup_cut_off",
        "vmdedup_maps_held",
        "vmdedup_hint_latency_seconds",
    ] {
        let labels: BTreeSet<(String, String)> = family(fam)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[1]["vm"].as_str().unwrap().to_string(),
                    s[1]["domain"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String)> = [
            ("vm1".to_string(), "default".to_string()),
            ("vm2".to_string(), "tenant-a".to_string()),
        ]
        .into();
        assert_eq!(labels, want, "{fam}");
    }
    // The same figures as the control socket's status.
    let status = Command::new(BIN)
        .args(["status", "--json", "--control", s(&control)])
        .output()
        .unwrap();
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    for v in status["vms"].as_array().unwrap() {
        let vm = v["name"].as_str().unwrap();
        assert_eq!(
            sample("vmdedup_maps_held", "vmdedup_maps_held", vm),
            v["maps_held"].as_f64().unwrap()
        );
        assert_eq!(sample("vmdedup_cut_off", "vmdedup_cut_off", vm), 0.0);
        assert_eq!(
            sample("vmdedup_hits", "vmdedup_hits_total", vm),
            v["hits"].as_f64().unwrap()
        );
    }
    assert_eq!(sample("vmdedup_maps_held", "vmdedup_maps_held", "vm1"), 1.0);
    for dom in status["domains"].as_array().unwrap() {
        let gen = family("vmdedup_pool_generation")["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[1]["domain"] == dom["name"])
            .unwrap()[2]
            .as_f64()
            .unwrap();
        assert_eq!(gen, dom["pool_generation"].as_f64().unwrap());
    }
    let info = &family("vmdedup_build_info")["samples"][0];
    assert_eq!(info[1]["version"], env!("CARGO_PKG_VERSION"));
    assert!(info[1]["git_commit"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    // The 0.0.4 text format for scrapers that do not ask for OpenMetrics.
    let (ctype, text) = scrape(&addr, false);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert_grouped(&text);
    let fams = parse(&text, false);
    assert!(fams
        .iter()
        .any(|f| f["name"] == "vmdedup_hint_latency_seconds" && f["type"] == "histogram"));
    assert!(!text.contains("# EOF"));
}
