//! Tests of the command line's parsing and validation.

use clap::CommandFactory;

use super::*;

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn repeatable_filters_and_bad_values() {
    let c = Cli::try_parse_from(["rst-trace", "-p", "1", "--pid", "2", "--port", "80"]).unwrap();
    assert_eq!(c.pids, vec![1, 2]);
    assert_eq!(c.ports, vec![80]);
    assert!(Cli::try_parse_from(["rst-trace", "--condition", "nope"]).is_err());
    assert!(Cli::try_parse_from(["rst-trace", "--port", "70000"]).is_err());
    // 0 is no process and no connection's port: a filter on it would show nothing, silently.
    for (flag, value) in [
        ("--pid", "0"),
        ("--port", "0"),
        ("--pid", "x"),
        ("--port", "-1"),
    ] {
        let e = Cli::try_parse_from(["rst-trace", flag, value]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{flag} {value}");
    }
    let e = Cli::try_parse_from(["rst-trace", "--pid", "0"]).unwrap_err();
    assert!(e.to_string().contains("0 is no process's id"), "{e}");
    let e = Cli::try_parse_from(["rst-trace", "--port", "0"]).unwrap_err();
    assert!(
        e.to_string().contains("port 0 is no connection's port"),
        "{e}"
    );
    assert!(Cli::try_parse_from(["rst-trace", "--interval", "5"]).is_err());
    assert!(Cli::try_parse_from(["rst-trace", "--ring-size", "5000"]).is_err());
    assert!(Cli::try_parse_from(["rst-trace", "--max-sockets", "1000"]).is_err());
    let c = Cli::try_parse_from(["rst-trace", "--max-sockets", "1048576"]).unwrap();
    assert_eq!(c.max_sockets, Some(1 << 20));
    assert!(Cli::try_parse_from(["rst-trace", "--comm", "a-very-long-process-name"]).is_err());
    assert!(Cli::try_parse_from(["rst-trace", "--comm", "nginx"]).is_ok());
    let e = Cli::try_parse_from(["rst-trace", "--bogus"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

fn settings(args: &[&str]) -> Result<Settings, String> {
    validate(Cli::try_parse_from([&["rst-trace"], args].concat()).unwrap())
}

#[test]
fn quiet_needs_summary_or_metrics() {
    let e = settings(&["--quiet"]).err().unwrap();
    assert_eq!(
        e,
        "--quiet hides every event: add --summary, --metrics or --otlp"
    );
    let s = settings(&["--quiet", "--summary", "--otlp", "http://c:4318"]).unwrap();
    assert!(!s.hooks.count_in_kernel);
    assert_eq!(s.words, Sentences::Write);
    assert!(Cli::try_parse_from(["rst-trace", "--otlp-interval", "5"]).is_err());
    assert!(Cli::try_parse_from(["rst-trace", "--otlp", "https://c"]).is_err());
    assert!(settings(&["--quiet", "--json"]).is_err());
    let s = settings(&["--quiet", "--summary"]).unwrap();
    assert!(s.hooks.count_in_kernel);
    assert_eq!(s.words, Sentences::Skip);
    let s = settings(&["--quiet", "--metrics", "9464"]).unwrap();
    assert!(!s.hooks.count_in_kernel);
    let s = settings(&["--quiet", "--summary", "--count", "3"]).unwrap();
    assert!(!s.hooks.count_in_kernel);
    let s = settings(&["--summary"]).unwrap();
    assert!(!s.hooks.count_in_kernel);
    let e = settings(&["--quiet", "--summary", "--stacks"])
        .err()
        .unwrap();
    assert!(e.starts_with("--stacks shows stacks on event lines"), "{e}");
    assert!(settings(&["--stacks"]).unwrap().hooks.stacks);
    assert!(!settings(&[]).unwrap().hooks.stacks);
    assert_eq!(s.words, Sentences::Write);
}

#[test]
fn too_many_filter_values_are_refused() {
    let max = rst_trace_common::FILTER_MAX_ENTRIES as usize;
    let many: Vec<String> = (1..=max + 1).map(|p| p.to_string()).collect();
    let mut args = Vec::new();
    for p in &many {
        args.extend(["--port", p.as_str()]);
    }
    let e = settings(&args).err().unwrap();
    assert!(e.contains("--port values: filter on fewer"), "{e}");
    assert!(settings(&args[2..]).is_ok());
    let hooks = settings(&["--no-ttl", "--no-firewall"]).unwrap().hooks;
    assert!(!hooks.ttl && !hooks.firewall);
}
