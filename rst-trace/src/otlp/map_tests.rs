use opentelemetry::logs::{AnyValue, Severity};

use super::{Kind, map};

fn attr<'a>(m: &'a super::Mapped, key: &str) -> Option<&'a AnyValue> {
    m.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn s(v: &str) -> AnyValue {
    AnyValue::from(v.to_owned())
}

const RST: &str = r#"{"type":"rst","time":"2026-11-24T12:00:01.123456789Z","mono_ns":81234567890123,"direction":"sent","origin":"tcp","condition":"close_with_unread_data","explanation":"server[1234] closed the socket","kernel_reason":"TCP_ABORT_ON_CLOSE","state":"ESTABLISHED","family":"ipv4","local":{"addr":"127.0.0.1","port":8888},"remote":{"addr":"127.0.0.1","port":43210},"process":{"pid":1234,"tid":1240,"comm":"server","thread":"conn-worker-7","uid":0},"cgroup":{"id":7421,"path":"/docker/3f1c","unit":null},"container":{"id":"3f1c","runtime":"docker","name":"web","pod":"web-0","namespace":"shop"},"attribution":"socket_owner","netns":4026531840,"socket_cookie":18446744073709551615,"detail":{"unread_bytes":128},"inferred":false,"app_error":{"call":"read","fd":3,"errno":"ECONNRESET"},"stacks":{"user":[{"addr":"0x1","function":"main"}]}}"#;

#[test]
fn a_reset_gets_semantic_convention_names_and_keeps_the_rest_under_rst_trace() {
    let m = map(RST).unwrap();
    assert_eq!(m.kind, Kind::Rst);
    assert_eq!(m.kind.severity().0, Severity::Warn);
    assert_eq!(m.mono_ns, Some(81234567890123));
    assert_eq!(m.body, "server[1234] closed the socket");
    for (k, v) in [
        ("network.transport", s("tcp")),
        ("network.type", s("ipv4")),
        ("network.local.address", s("127.0.0.1")),
        ("network.local.port", AnyValue::Int(8888)),
        ("network.peer.address", s("127.0.0.1")),
        ("network.peer.port", AnyValue::Int(43210)),
        ("process.pid", AnyValue::Int(1234)),
        ("thread.id", AnyValue::Int(1240)),
        ("process.executable.name", s("server")),
        ("thread.name", s("conn-worker-7")),
        ("process.user.id", AnyValue::Int(0)),
        ("container.id", s("3f1c")),
        ("container.name", s("web")),
        ("container.runtime.name", s("docker")),
        ("k8s.pod.name", s("web-0")),
        ("k8s.namespace.name", s("shop")),
        ("error.type", s("ECONNRESET")),
        ("rst_trace.type", s("rst")),
        ("rst_trace.direction", s("sent")),
        ("rst_trace.origin", s("tcp")),
        ("rst_trace.condition", s("close_with_unread_data")),
        ("rst_trace.kernel_reason", s("TCP_ABORT_ON_CLOSE")),
        ("rst_trace.state", s("ESTABLISHED")),
        ("rst_trace.cgroup.id", AnyValue::Int(7421)),
        ("rst_trace.detail.unread_bytes", AnyValue::Int(128)),
        ("rst_trace.inferred", AnyValue::Boolean(false)),
        ("rst_trace.app_error.errno", s("ECONNRESET")),
        ("rst_trace.mono_ns", AnyValue::Int(81234567890123)),
        // Over i64: a string, not a wrapped number.
        ("rst_trace.socket_cookie", s("18446744073709551615")),
    ] {
        assert_eq!(attr(&m, k), Some(&v), "{k}");
    }
    // Null is absent; the time is the timestamp, the sentence the body.
    for k in [
        "rst_trace.cgroup.unit",
        "rst_trace.time",
        "rst_trace.explanation",
    ] {
        assert_eq!(attr(&m, k), None, "{k}");
    }
    let Some(AnyValue::ListAny(frames)) = attr(&m, "rst_trace.stacks.user") else {
        panic!("stack frames as a list");
    };
    assert!(matches!(&frames[0], AnyValue::Map(f) if f.len() == 2));
}

#[test]
fn an_app_error_is_an_error_with_its_errno_as_error_type() {
    let m = map(r#"{"type":"app_error","call":"recvfrom","fd":4,"errno":"ECONNRESET","process":{"pid":7,"tid":8,"comm":"py","uid":0},"time":"x","mono_ns":5,"family":"ipv6","reset":{"mono_ns":4,"condition":"peer_reset","direction":"received"},"delay_ns":1,"explanation":"py[7] noticed"}"#).unwrap();
    assert_eq!(m.kind.severity(), (Severity::Error, "ERROR"));
    assert_eq!(attr(&m, "error.type"), Some(&s("ECONNRESET")));
    assert_eq!(attr(&m, "rst_trace.errno"), None);
    assert_eq!(attr(&m, "rst_trace.call"), Some(&s("recvfrom")));
    assert_eq!(
        attr(&m, "rst_trace.reset.condition"),
        Some(&s("peer_reset"))
    );
    // No `thread` field: the thread has the process's name.
    assert_eq!(attr(&m, "thread.name"), Some(&s("py")));
    assert_eq!(attr(&m, "network.type"), Some(&s("ipv6")));
}

#[test]
fn lost_records_say_what_was_lost_and_why() {
    let m = map(r#"{"type":"lost","count":3,"total":9,"time":"x","mono_ns":1}"#).unwrap();
    assert_eq!(m.kind, Kind::Lost);
    assert!(
        m.body.starts_with("3 reset events lost (9 in all)"),
        "{}",
        m.body
    );
    assert_eq!(attr(&m, "rst_trace.cause"), Some(&s("ring_buffer")));
    let m = map(r#"{"type":"lost","cause":"otlp_queue","count":2,"total":2,"mono_ns":1}"#).unwrap();
    assert!(
        m.body.starts_with("2 records were not exported"),
        "{}",
        m.body
    );
    assert_eq!(attr(&m, "rst_trace.cause"), Some(&s("otlp_queue")));
    assert_eq!(attr(&m, "rst_trace.count"), Some(&AnyValue::Int(2)));
}

#[test]
fn not_json_objects_are_refused() {
    assert!(map("[1]").is_none());
    assert!(map("{\"no_type\":1}").is_none());
    assert!(map("not json").is_none());
    assert_eq!(
        map(r#"{"type":"summary"}"#).unwrap().kind,
        Kind::Unknown("summary".into())
    );
}
