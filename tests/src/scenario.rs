//! The set-up every end-to-end test spells out: its namespace(s), then an rst-trace watching its
//! ports.

use crate::{Netns, Topology, Tracer};

/// `Scenario::new(tag).port(p).tracer(&[...])`: a namespace named after `tag`, then a `--json`
/// tracer started with `--port p` (per `port`) followed by the extra arguments.
pub struct Scenario {
    tag: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Scenario {
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Watch `port` (`--port PORT`; repeatable).
    pub fn port(mut self, port: u16) -> Self {
        self.args.extend(["--port".to_owned(), port.to_string()]);
        self
    }

    /// An environment variable for rst-trace.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn start(&self, extra: &[&str]) -> Tracer {
        let args: Vec<&str> = self
            .args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Tracer::start_with_env(&args, &env)
    }

    /// One namespace, then the tracer (with `extra` arguments after the ports).
    pub fn tracer(self, extra: &[&str]) -> (Netns, Tracer) {
        let ns = Netns::new(&self.tag);
        let t = self.start(extra);
        (ns, t)
    }

    /// Client, router and server namespaces ([`Topology`]), then the tracer.
    pub fn topology_tracer(self, extra: &[&str]) -> (Topology, Tracer) {
        let topo = Topology::new(&self.tag);
        let t = self.start(extra);
        (topo, t)
    }
}
