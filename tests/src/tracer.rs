//! A running rst-trace under test: `--json` events collected as they arrive, or the bare child.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::{Value, require_root, rst_trace_bin};

/// Starts rst-trace with exactly `args`, stdout piped for the caller, and waits for the
/// readiness line. Returns the child and the rest of its stderr.
pub fn spawn_attached(
    args: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    require_root();
    let mut t = Command::new(rst_trace_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rst-trace");
    let mut errs = BufReader::new(t.stderr.take().expect("stderr")).lines();
    // Notes first (a fallback on an older kernel, named with its reason), then readiness.
    loop {
        let line = errs
            .next()
            .expect("rst-trace printed no readiness line")
            .expect("stderr");
        if line.starts_with("rst-trace: tracing TCP resets") {
            break;
        }
        assert!(line.starts_with("rst-trace: note: "), "{line}");
    }
    (t, errs)
}

/// A running rst-trace with `--json`, its events collected as they arrive.
pub struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Starts rst-trace and waits for its readiness line on stderr.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Tracer::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut child = Command::new(rst_trace_bin())
            .envs(env.iter().copied())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning rst-trace");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("rst-trace printed a non-JSON line {line:?}: {e}"));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let se = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let ready = line.starts_with("rst-trace: tracing TCP resets");
                se.lock().unwrap().push(line);
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let mut t = Self {
            child,
            events,
            stderr,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = t.child.kill();
            panic!(
                "rst-trace did not print its readiness line; stderr: {:?}",
                t.stderr.lock().unwrap()
            );
        }
        t
    }

    /// rst-trace's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The readiness line (`rst-trace: tracing TCP resets (...)`).
    pub fn ready_line(&self) -> String {
        self.stderr()
            .into_iter()
            .find(|l| l.starts_with("rst-trace: tracing TCP resets"))
            .expect("readiness line")
    }

    /// The page `--metrics 127.0.0.1:0` serves (`http://ADDR/metrics`), from the ready lines.
    pub fn metrics_url(&self) -> String {
        self.stderr()
            .iter()
            .find_map(|l| l.strip_prefix("rst-trace: metrics at ").map(str::to_owned))
            .expect("metrics address line")
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `secs` seconds for a line on stderr matching `pred`.
    pub fn wait_for_stderr(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.stderr().iter().any(|l| pred(l)) {
            assert!(
                Instant::now() < deadline,
                "rst-trace said nothing of {what} within {secs} s; stderr: {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 10 s for an event matching `pred`, and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, 10, pred)
    }

    /// [`Tracer::wait_for`] with a deadline of `secs` seconds.
    pub fn wait_for_within(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event for {what} within {secs} s; events seen: {:#?}; stderr: {:?}",
                    self.events(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Tracer::stop`], with everything it wrote on stderr (also what it said at exit).
    pub fn stop_with_stderr(self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        let stderr = self.stderr.clone();
        let (status, events) = self.stop();
        let lines = stderr.lock().unwrap().clone();
        (status, events, lines)
    }

    /// Sends SIGINT and waits for the exit status.
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait rst-trace");
        // Give the reader thread a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        (status, self.events())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scrapes the `--metrics` page at `url` until it contains `want` (the counters lag the resets,
/// the gauges are read once a second), for up to 10 s; returns the last page.
pub fn scrape_until(url: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = ureq::get(url)
            .call()
            .expect("scrape")
            .body_mut()
            .read_to_string()
            .unwrap();
        if body.contains(want) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
