//! The fleet's view: a real Prometheus (Debian's `prometheus`, which `./x test` installs) scrapes
//! two running rst-trace instances during a real reset storm, loads `deploy/prometheus-rules.yaml`,
//! and answers every query of `deploy/grafana-dashboard.json` and every alerting rule through its
//! HTTP API: each must return series, and the right ones.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use rst_trace_tests::{Netns, Peer, Tracer, Value, require_root, smallest_socket_map};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const PORT: u16 = 20099;
/// The crowd of idle connections (tests/scripts/crowd.py) that outgrows the small instance's
/// socket owner map.
const CROWD_PORT: u16 = 20098;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// `host:port` of `--metrics 127.0.0.1:0`, from the tracer's ready lines.
fn metrics_target(t: &Tracer) -> String {
    let url = t.metrics_url();
    url.strip_prefix("http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .expect("an http://ADDR/metrics URL")
        .to_owned()
}

/// A Prometheus scraping `targets` every second, with the rules loaded; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[String]) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} not found: install Debian's prometheus (`./x test` does)"
        );
        let dir = std::env::temp_dir().join(format!("rstt-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: rst-trace\n    static_configs:\n      - targets: [{}]\n",
            deploy("prometheus-rules.yaml").display(),
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let p = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(format!("{}/-/ready", p.url)).call().is_err() {
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query's result vector (asserting the query succeeded).
    fn query(&self, expr: &str) -> Vec<Value> {
        let body = ureq::get(format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call()
            .unwrap_or_else(|e| panic!("query {expr}: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every panel's query, from the dashboard shipped in deploy/.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(out.len() >= 8, "{out:?}");
    out
}

#[test]
fn dashboard_and_alerts_answer_from_a_real_prometheus() {
    require_root();
    let rules = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(deploy("prometheus-rules.yaml"))
        .output()
        .expect("running promtool (Debian's prometheus)");
    assert!(rules.status.success(), "promtool check rules: {rules:?}");
    let ns = Netns::new("prom");
    let port = PORT.to_string();
    let main = Tracer::start(&[
        "--port",
        &port,
        "--quiet",
        "--metrics",
        "127.0.0.1:0",
        "--self-cost",
    ]);
    // The smallest ring: in a storm it overflows, and the lost-events rule must fire. The
    // smallest socket owner map: a crowd of idle connections outgrows it, and the forgotten
    // owners rule must fire.
    let (max_sockets, usable) = smallest_socket_map();
    let small = Tracer::start(&[
        "--port",
        &port,
        "--quiet",
        "--metrics",
        "127.0.0.1:0",
        "--ring-size",
        "4096",
        "--max-sockets",
        &max_sockets.to_string(),
    ]);
    let (mut crowd, mut said) = start_crowd(&ns, usable);
    let targets = [metrics_target(&main), metrics_target(&small)];
    let prom = Prometheus::start(&targets);
    // A storm of refused connects for 15 s, several hundred a second.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let storm = Peer::spawn(&ns, "rstt-prom", &[&format!("storm=2000,127.0.0.1:{PORT}")]);
        storm.expect("stormed 2000");
    }
    // A few scrapes after the last resets.
    std::thread::sleep(Duration::from_secs(3));
    assert_dashboard(&prom);
    assert_alerts(&prom, &targets);
    // The TIME_WAIT map is watched too.
    let tw = prom.query("rst_trace_time_wait_map_capacity >= 16000");
    assert_eq!(tw.len(), 2, "{tw:?}");
    drop(crowd.stdin.take());
    std::io::copy(&mut said, &mut std::io::sink()).unwrap();
    assert!(crowd.wait().unwrap().success(), "crowd.py");
    assert_rules_healthy(&prom);
    let (s1, _) = main.stop();
    let (s2, _) = small.stop();
    assert!(s1.success() && s2.success());
}

/// tests/scripts/crowd.py in `ns`: `usable / 2 + 50` idle connections (two sockets each: more
/// than a socket map that keeps `usable` holds), until its stdin ends; its stdout, read past
/// its `ready`.
fn start_crowd(ns: &Netns, usable: u32) -> (Child, BufReader<ChildStdout>) {
    let mut crowd = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/crowd.py"))
        .args([CROWD_PORT.to_string(), (usable / 2 + 50).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting tests/scripts/crowd.py");
    // Read until it ends: at the end of its stdin it writes one more line.
    let mut said = BufReader::new(crowd.stdout.take().unwrap());
    let mut ready = String::new();
    said.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready", "crowd.py");
    (crowd, said)
}

/// Every dashboard panel returns series, and the right ones.
fn assert_dashboard(prom: &Prometheus) {
    for (title, expr) in dashboard_queries() {
        let result = prom.query(&expr);
        assert!(
            !result.is_empty(),
            "panel {title:?}: {expr} returned nothing"
        );
    }
    let by = |expr: &str, label: &str| -> Vec<String> {
        prom.query(expr)
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect()
    };
    let conditions = by(
        "sum by (condition, direction) (rate(rst_trace_resets_total[1m]))",
        "condition",
    );
    assert!(
        conditions.iter().any(|c| c == "connection_refused")
            && conditions.iter().any(|c| c == "port_not_listening"),
        "{conditions:?}"
    );
    let errnos = by(
        "sum by (errno) (rate(rst_trace_app_errors_total[1m]))",
        "errno",
    );
    assert!(errnos.iter().any(|e| e == "ECONNREFUSED"), "{errnos:?}");
}

/// Each alerting rule's expression, as the rules file has it: the storm on both instances,
/// the losses and the forgotten owners on the small instance (`targets[1]`).
fn assert_alerts(prom: &Prometheus, targets: &[String; 2]) {
    let text = std::fs::read_to_string(deploy("prometheus-rules.yaml")).unwrap();
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    assert_eq!(exprs.len(), 3, "{exprs:?}");
    let storm = prom.query(exprs[0]);
    assert!(
        storm
            .iter()
            .any(|s| s["metric"]["condition"] == "port_not_listening"),
        "reset storm rule: {storm:?}"
    );
    let lost = prom.query(exprs[1]);
    assert!(
        lost.iter()
            .any(|s| s["metric"]["instance"] == targets[1].as_str()),
        "lost events rule: {lost:?} (small ring at {})",
        targets[1]
    );
    let forgotten = prom.query(exprs[2]);
    let instances: Vec<&Value> = forgotten.iter().map(|s| &s["metric"]["instance"]).collect();
    assert!(
        instances.len() == 1 && instances[0] == targets[1].as_str(),
        "forgotten owners rule: {forgotten:?} (small map at {})",
        targets[1]
    );
}

/// Prometheus itself evaluates the rules without errors.
fn assert_rules_healthy(prom: &Prometheus) {
    let body = ureq::get(format!("{}/api/v1/rules", prom.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let rules = v["data"]["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 3, "{body}");
    assert!(rules.iter().all(|r| r["health"] == "ok"), "{body}");
}
