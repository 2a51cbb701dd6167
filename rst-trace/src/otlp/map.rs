//! One JSON record (docs/output.md) as one OTLP log record: its time, severity, body and
//! attributes. The JSON is the one definition of a record's fields: what has an OpenTelemetry
//! semantic-convention name gets it, the rest keeps its JSON path under `rst_trace.` (the
//! table in docs/output.md, "OpenTelemetry").

use opentelemetry::logs::{AnyValue, Severity};
use serde_json::{Map, Value};

/// A record's `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Rst,
    AppError,
    NotNoticed,
    Lost,
    Unknown(String),
}

impl Kind {
    fn of(t: &str) -> Self {
        match t {
            "rst" => Self::Rst,
            "app_error" => Self::AppError,
            "not_noticed" => Self::NotNoticed,
            "lost" => Self::Lost,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// A reset is worth a look; a call that failed is an application error; a reset nobody
    /// noticed is information; lost records are a gap in what the tracer saw.
    pub fn severity(&self) -> (Severity, &'static str) {
        match self {
            Self::AppError => (Severity::Error, "ERROR"),
            Self::Rst | Self::Lost => (Severity::Warn, "WARN"),
            Self::NotNoticed | Self::Unknown(_) => (Severity::Info, "INFO"),
        }
    }

    /// The log record's event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::Rst => "rst_trace.rst",
            Self::AppError => "rst_trace.app_error",
            Self::NotNoticed => "rst_trace.not_noticed",
            Self::Lost => "rst_trace.lost",
            Self::Unknown(_) => "rst_trace.record",
        }
    }
}

/// A record ready to become an OTLP log record.
#[derive(Debug)]
pub struct Mapped {
    pub kind: Kind,
    /// The event's kernel monotonic time (`mono_ns`), for its wall-clock time.
    pub mono_ns: Option<u64>,
    pub body: String,
    pub attrs: Vec<(String, AnyValue)>,
}

/// Prefix of the attributes that keep their JSON path.
const OWN: &str = "rst_trace";

/// Maps one JSON record. `None` if it is not a JSON object with a `type`.
pub fn map(json: &str) -> Option<Mapped> {
    let Value::Object(mut obj) = serde_json::from_str::<Value>(json).ok()? else {
        return None;
    };
    let kind = Kind::of(obj.get("type")?.as_str()?);
    let mono_ns = obj.get("mono_ns").and_then(Value::as_u64);
    let body = match obj.remove("explanation") {
        Some(Value::String(s)) => s,
        _ => fallback_body(&kind, &obj),
    };
    // `time` is the record's timestamp; `type` and the rest keep their paths.
    obj.remove("time");
    let mut attrs = vec![("network.transport".to_owned(), AnyValue::from("tcp"))];
    if kind == Kind::Lost && !obj.contains_key("cause") {
        obj.insert("cause".into(), Value::from("ring_buffer"));
    }
    if let Some(errno) = failing_call_errno(&kind, &obj) {
        attrs.push(("error.type".to_owned(), AnyValue::from(errno)));
    }
    for (key, value) in obj {
        match (key.as_str(), value) {
            ("family", Value::String(f)) => attrs.push(("network.type".into(), f.into())),
            ("local", Value::Object(ep)) => endpoint(&mut attrs, "network.local", ep),
            ("remote", Value::Object(ep)) => endpoint(&mut attrs, "network.peer", ep),
            ("process", Value::Object(p)) => process(&mut attrs, p),
            ("container", Value::Object(c)) => container(&mut attrs, c),
            // The errno of a failing call is `error.type` (above).
            ("errno", _) if kind == Kind::AppError => {}
            (_, value) => flatten(&mut attrs, format!("{OWN}.{key}"), value),
        }
    }
    Some(Mapped {
        kind,
        mono_ns,
        body,
        attrs,
    })
}

/// The errno of the application's failing call: the `app_error` record's own, or that of the
/// call joined to a reset (its `app_error` object).
fn failing_call_errno(kind: &Kind, obj: &Map<String, Value>) -> Option<String> {
    let errno = match kind {
        Kind::AppError => obj.get("errno"),
        _ => obj.get("app_error")?.get("errno"),
    };
    errno?.as_str().map(str::to_owned)
}

/// A body for records that carry no `explanation` sentence (`lost`).
fn fallback_body(kind: &Kind, obj: &Map<String, Value>) -> String {
    let n = |k: &str| obj.get(k).and_then(Value::as_u64).unwrap_or(0);
    match (kind, obj.get("cause").and_then(Value::as_str)) {
        (Kind::Lost, Some("otlp_queue")) => format!(
            "{} records were not exported ({} in all): the export queue was full while the \
             collector was down or slow",
            n("count"),
            n("total")
        ),
        (Kind::Lost, _) => format!(
            "{} reset events lost ({} in all): the kernel-to-userspace ring buffer was full, or \
             the kernel skipped a reset program already running on that CPU",
            n("count"),
            n("total")
        ),
        _ => String::new(),
    }
}

fn endpoint(attrs: &mut Vec<(String, AnyValue)>, prefix: &str, ep: Map<String, Value>) {
    for (k, v) in ep {
        let name = match k.as_str() {
            "addr" => "address",
            "port" => "port",
            other => other,
        };
        flatten(attrs, format!("{prefix}.{name}"), v);
    }
}

/// The process a record belongs to: `process.*` and `thread.*`. A thread without a `thread`
/// field has the process's name.
fn process(attrs: &mut Vec<(String, AnyValue)>, mut p: Map<String, Value>) {
    if !p.contains_key("thread")
        && let Some(comm) = p.get("comm").cloned()
    {
        p.insert("thread".into(), comm);
    }
    for (k, v) in p {
        let name = match k.as_str() {
            "pid" => "process.pid".to_owned(),
            "tid" => "thread.id".to_owned(),
            "comm" => "process.executable.name".to_owned(),
            "thread" => "thread.name".to_owned(),
            "uid" => "process.user.id".to_owned(),
            other => format!("{OWN}.process.{other}"),
        };
        flatten(attrs, name, v);
    }
}

fn container(attrs: &mut Vec<(String, AnyValue)>, c: Map<String, Value>) {
    for (k, v) in c {
        let name = match k.as_str() {
            "id" => "container.id".to_owned(),
            "name" => "container.name".to_owned(),
            "runtime" => "container.runtime.name".to_owned(),
            "pod" => "k8s.pod.name".to_owned(),
            "namespace" => "k8s.namespace.name".to_owned(),
            other => format!("{OWN}.container.{other}"),
        };
        flatten(attrs, name, v);
    }
}

/// Objects become dotted keys; arrays stay arrays (of maps, for stack frames); `null` is left
/// out (OpenTelemetry has no null attribute).
fn flatten(attrs: &mut Vec<(String, AnyValue)>, key: String, value: Value) {
    match value {
        Value::Null => {}
        Value::Object(obj) => {
            for (k, v) in obj {
                flatten(attrs, format!("{key}.{k}"), v);
            }
        }
        other => {
            if let Some(v) = any(other) {
                attrs.push((key, v));
            }
        }
    }
}

fn any(value: Value) -> Option<AnyValue> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => AnyValue::Boolean(b),
        // OTLP integers are signed 64-bit: a larger one (a socket cookie can be) is a string.
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AnyValue::Int(i),
            (None, Some(_)) if n.is_u64() => AnyValue::from(n.to_string()),
            (None, Some(f)) => AnyValue::Double(f),
            (None, None) => AnyValue::from(n.to_string()),
        },
        Value::String(s) => AnyValue::from(s),
        Value::Array(a) => AnyValue::ListAny(Box::new(a.into_iter().filter_map(any).collect())),
        Value::Object(o) => AnyValue::Map(Box::new(
            o.into_iter()
                .filter_map(|(k, v)| Some((k.into(), any(v)?)))
                .collect(),
        )),
    })
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;
