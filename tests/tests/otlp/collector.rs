//! A real OTLP/HTTP receiver: an HTTP server (tiny_http) that takes `POST /v1/logs` and
//! `POST /v1/metrics` with protobuf bodies, decodes them with the OpenTelemetry project's
//! message definitions (`opentelemetry-proto`) and keeps what it got, flattened for assertions.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    metrics::v1::{metric::Data, number_data_point::Value as Number},
};
use prost::Message as _;
use serde_json::{Value, json};

/// One log record as received, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct Log {
    pub time_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: String,
    pub event_name: String,
    pub body: Value,
    pub attrs: BTreeMap<String, Value>,
    pub resource: BTreeMap<String, Value>,
}

/// One data point of a Sum or a Gauge, as received.
#[derive(Clone, Debug)]
pub struct Point {
    pub metric: String,
    pub monotonic: bool,
    /// 2: cumulative.
    pub temporality: i32,
    pub value: f64,
    pub attrs: BTreeMap<String, Value>,
}

#[derive(Default)]
struct Got {
    logs: Vec<Log>,
    points: Vec<Point>,
    /// Each request's `authorization` header.
    auth: Vec<String>,
}

pub struct Collector {
    pub url: String,
    got: Arc<Mutex<Got>>,
    server: Arc<tiny_http::Server>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn any(v: Option<AnyValue>) -> Value {
    match v.and_then(|v| v.value) {
        None => Value::Null,
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::BytesValue(b)) => json!(b),
        Some(Any::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(|v| any(Some(v))).collect())
        }
        Some(Any::KvlistValue(kv)) => Value::Object(attrs(kv.values).into_iter().collect()),
        Some(_) => json!("?"),
    }
}

fn attrs(kvs: Vec<KeyValue>) -> BTreeMap<String, Value> {
    kvs.into_iter().map(|kv| (kv.key, any(kv.value))).collect()
}

fn take_logs(body: &[u8], got: &mut Got) {
    let req = ExportLogsServiceRequest::decode(body).expect("a protobuf ExportLogsServiceRequest");
    for rl in req.resource_logs {
        let resource = attrs(rl.resource.map(|r| r.attributes).unwrap_or_default());
        for sl in rl.scope_logs {
            for r in sl.log_records {
                got.logs.push(Log {
                    time_unix_nano: r.time_unix_nano,
                    severity_number: r.severity_number,
                    severity_text: r.severity_text,
                    event_name: r.event_name,
                    body: any(r.body),
                    attrs: attrs(r.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
}

fn take_metrics(body: &[u8], got: &mut Got) {
    let req =
        ExportMetricsServiceRequest::decode(body).expect("a protobuf ExportMetricsServiceRequest");
    for rm in req.resource_metrics {
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                // A Sum's points, or a Gauge's (not monotonic, temporality 0).
                let (points, monotonic, temporality) = match m.data {
                    Some(Data::Sum(sum)) => (
                        sum.data_points,
                        sum.is_monotonic,
                        sum.aggregation_temporality,
                    ),
                    Some(Data::Gauge(gauge)) => (gauge.data_points, false, 0),
                    _ => continue,
                };
                for p in points {
                    got.points.push(Point {
                        metric: m.name.clone(),
                        monotonic,
                        temporality,
                        value: match p.value {
                            Some(Number::AsInt(i)) => i as f64,
                            Some(Number::AsDouble(d)) => d,
                            None => f64::NAN,
                        },
                        attrs: attrs(p.attributes),
                    });
                }
            }
        }
    }
}

impl Collector {
    /// Listens on `port` (0: any free one) of 127.0.0.1.
    pub fn start(port: u16) -> Self {
        let server = Arc::new(
            tiny_http::Server::http(("127.0.0.1", port)).expect("the OTLP receiver's port"),
        );
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let got = Arc::new(Mutex::new(Got::default()));
        let (s, g) = (server.clone(), got.clone());
        std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let mut got = g.lock().unwrap();
                if let Some(h) = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("authorization"))
                {
                    got.auth.push(h.value.to_string());
                }
                let path = req.url().to_owned();
                match path.as_str() {
                    "/v1/logs" => take_logs(&body, &mut got),
                    "/v1/metrics" => take_metrics(&body, &mut got),
                    other => panic!("OTLP request to an unexpected path {other}"),
                }
                drop(got);
                // An empty protobuf Export*ServiceResponse: full success.
                let resp = tiny_http::Response::from_data(Vec::new()).with_header(
                    "Content-Type: application/x-protobuf"
                        .parse::<tiny_http::Header>()
                        .unwrap(),
                );
                let _ = req.respond(resp);
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            got,
            server,
        }
    }

    pub fn logs(&self) -> Vec<Log> {
        self.got.lock().unwrap().logs.clone()
    }

    pub fn points(&self) -> Vec<Point> {
        self.got.lock().unwrap().points.clone()
    }

    pub fn auth(&self) -> Vec<String> {
        self.got.lock().unwrap().auth.clone()
    }

    /// Waits up to `secs` for a log record matching `pred`.
    pub fn wait_log(&self, what: &str, secs: u64, pred: impl Fn(&Log) -> bool) -> Log {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "the collector got no log record for {what} within {secs} s; got: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `secs` for a data point matching `pred` (the latest one that does).
    pub fn wait_point(&self, what: &str, secs: u64, pred: impl Fn(&Point) -> bool) -> Point {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(p) = self.points().into_iter().rev().find(|p| pred(p)) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "the collector got no metric point for {what} within {secs} s; got: {:#?}",
                self.points()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
