//! The Kubernetes manifests in deploy/ against the Kubernetes API's own schemas, offline, with
//! PyPI's `kubernetes-validate` (`./x test` installs it in a venv: [`VALIDATOR`]). Strict: a
//! misspelt field fails as a wrong type does. A broken copy must fail too, so that a validator
//! that passes everything cannot pass this test.
//!
//! deploy/prometheus-rules.yaml is a Prometheus rules file, not a Kubernetes object: promtool
//! checks it (tests/tests/prometheus.rs).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Where xtask/src/docker.rs installs it (Debian's pip refuses system-wide installs).
const VALIDATOR: &str = "/opt/rst-trace-kubernetes-validate/bin/kubernetes-validate";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn validate(file: &Path) -> Output {
    assert!(
        Path::new(VALIDATOR).exists(),
        "{VALIDATOR} not found: this test needs PyPI's kubernetes-validate in that venv \
         (`./x test` installs it; `./x docker` does too)"
    );
    Command::new(VALIDATOR)
        .arg("--strict")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {VALIDATOR}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every deploy/*.yaml that is a Kubernetes object (has an `apiVersion`) validates; the
/// DaemonSet is one of them.
#[test]
fn deploy_manifests_validate_against_the_kubernetes_schemas() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(deploy()).expect("deploy/") {
        let path = entry.expect("deploy/ entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let yaml = std::fs::read_to_string(&path).expect("manifest");
        if !yaml.lines().any(|l| l.starts_with("apiVersion:")) {
            continue;
        }
        let out = validate(&path);
        let said = text(&out);
        assert!(out.status.success(), "{}: {said}", path.display());
        // One `passed` line per object: a file it skipped would not be checked.
        let objects = yaml.lines().filter(|l| l.starts_with("kind:")).count();
        assert_eq!(said.matches(" passed ").count(), objects, "{said}");
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert!(
        checked.iter().any(|f| f == "daemonset.yaml"),
        "daemonset.yaml not validated: {checked:?}"
    );
}

/// The DaemonSet gives rst-trace its node's name (OTLP's `k8s.node.name`) through the downward
/// API, and shows `--otlp`.
#[test]
fn daemonset_has_the_node_name_and_an_otlp_example() {
    let yaml = std::fs::read_to_string(deploy().join("daemonset.yaml")).expect("daemonset.yaml");
    let env = "- name: K8S_NODE_NAME\n              valueFrom:\n                \
               fieldRef: {fieldPath: spec.nodeName}";
    assert!(
        yaml.contains(env),
        "no downward-API K8S_NODE_NAME in:\n{yaml}"
    );
    assert!(
        yaml.contains(r#""--otlp", "http://otel-collector.observability.svc:4318""#),
        "no --otlp example in:\n{yaml}"
    );
}

/// The validator rejects a DaemonSet with a misspelt field and one with a wrongly typed value.
#[test]
fn a_broken_daemonset_fails_validation() {
    let yaml = std::fs::read_to_string(deploy().join("daemonset.yaml")).expect("daemonset.yaml");
    let dir = std::env::temp_dir().join(format!("rstt-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (from, to, want) in [
        (
            "hostPID: true",
            "hostPIDs: true",
            "'hostPIDs' was unexpected",
        ),
        (
            "containerPort: 9464",
            "containerPort: \"metrics\"",
            "is not of type 'integer'",
        ),
    ] {
        assert!(yaml.contains(from), "{from:?} not in daemonset.yaml");
        let broken = dir.join("daemonset.yaml");
        std::fs::write(&broken, yaml.replace(from, to)).expect("broken copy");
        let out = validate(&broken);
        let said = text(&out);
        assert!(!out.status.success(), "{to:?} passed: {said}");
        assert!(said.contains(want), "{to:?}: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
