//! `--summary --by container|pod`, the metrics' labels and the text line of a container's reset.

use rst_trace_tests::{Tracer, Value, container::DockerRun, scrape_until, spawn_attached};

use crate::{docker_bridge, received_by, sent_by};

/// `--summary --by container` and `--by pod` count the container's reset under its name and
/// pod, the host client's under `-`; the metrics label it; the text line shows
/// `comm[pid]@namespace/pod`.
#[test]
fn summary_metrics_and_text_by_container_and_pod() {
    let port = 23011;
    let p = port.to_string();
    let by_container = Tracer::start(&["--port", &p, "--quiet", "--summary", "--by", "container"]);
    let by_pod = Tracer::start(&["--port", &p, "--quiet", "--summary", "--by", "pod"]);
    let (text, _) = spawn_attached(&["--port", &p]);
    let metrics = Tracer::start(&["--port", &p, "--quiet", "--metrics", "127.0.0.1:0"]);
    let url = metrics.metrics_url();
    let (tracer, web, client) =
        docker_bridge(port, DockerRun::new("sum").k8s("sum-0", "shop", "api"));
    // The per-event tracer saw both resets, so the summaries must count them.
    sent_by(&tracer, web.pid);
    received_by(&tracer, client.pid());
    let c = summary_of(by_container);
    assert_eq!(
        rows(&c, "container"),
        [
            ("-".to_owned(), "peer_reset".to_owned(), 1),
            ("api".to_owned(), "close_with_unread_data".to_owned(), 1)
        ],
        "{c:#}"
    );
    let p = summary_of(by_pod);
    assert_eq!(
        rows(&p, "pod"),
        [
            ("-".to_owned(), "peer_reset".to_owned(), 1),
            (
                "shop/sum-0".to_owned(),
                "close_with_unread_data".to_owned(),
                1
            )
        ],
        "{p:#}"
    );
    // Metrics: the container and pod labels.
    let want = r#"rst_trace_resets_total{direction="sent",condition="close_with_unread_data",comm="rstt-web",container="api",pod="shop/sum-0"} 1"#;
    let body = scrape_until(&url, want);
    assert!(body.contains(want), "{want} not in:\n{body}");
    drop(metrics);
    // The text line: the container's process with its pod.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let out = text.wait_with_output().expect("rst-trace text output");
    let out = String::from_utf8_lossy(&out.stdout);
    let want = format!(" SENT rstt-web[{}]@shop/sum-0 ", web.pid);
    assert!(out.contains(&want), "{want:?} not in:\n{out}");
    drop(tracer);
}

/// Stops a `--summary` tracer and returns its summary record.
fn summary_of(t: Tracer) -> Value {
    let (status, events) = t.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
    events
        .into_iter()
        .find(|v| v["type"] == "summary")
        .expect("a summary record")
}

/// A summary's rows as (`key`'s value, condition, count), sorted.
fn rows(v: &Value, key: &str) -> Vec<(String, String, u64)> {
    let mut r: Vec<_> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[key].as_str().unwrap_or_default().to_owned(),
                r["condition"].as_str().unwrap_or_default().to_owned(),
                r["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    r.sort();
    r
}
