use super::*;

#[test]
fn labels_are_escaped_and_comms_bounded() {
    let mut m = Metrics::default();
    let mut r = crate::filter::tests_support::report(
        Some(1),
        "a\"b",
        1,
        2,
        crate::explain::Direction::Sent,
    );
    m.record(&r);
    let out = m.render();
    assert!(out.contains(r#"comm="a\"b""#), "{out}");
    for i in 0..(MAX_COMMS + 10) {
        r = crate::filter::tests_support::report(
            Some(1),
            &format!("c{i}"),
            1,
            2,
            crate::explain::Direction::Sent,
        );
        m.record(&r);
    }
    let out = m.render();
    let comms = out
        .lines()
        .filter(|l| l.starts_with("rst_trace_resets_total{"))
        .count();
    assert_eq!(comms, MAX_COMMS + 1, "{out}");
    assert!(
        out.contains(r#"comm="other",container="-",pod="-"} 11"#),
        "{out}"
    );
    assert!(out.contains("rst_trace_lost_events_total 0"));
    assert!(out.contains("process_resident_memory_bytes"));
}

/// A container's resets carry its name and pod; containers are bounded like comms.
#[test]
fn container_and_pod_labels() {
    use crate::identity::{Container, Identity, Runtime};

    let mut m = Metrics::default();
    for i in 0..(MAX_COMMS + 5) {
        let mut r = crate::filter::tests_support::report(
            Some(1),
            "nginx",
            1,
            2,
            crate::explain::Direction::Sent,
        );
        let mut c = Container {
            id: format!("{i:064x}"),
            runtime: Runtime::Containerd,
            name: None,
            pod: Some(format!("web-{i}")),
            namespace: Some("shop".into()),
            container_name: Some("web".into()),
            pod_uid: None,
        };
        if i > 0 {
            c.container_name = Some(format!("c{i}"));
        }
        r.process.as_mut().unwrap().identity = Some(Arc::new(Identity {
            container: Some(c),
            ..Identity::default()
        }));
        m.record(&r);
    }
    let out = m.render();
    assert!(
        out.contains(r#"comm="nginx",container="web",pod="shop/web-0"} 1"#),
        "{out}"
    );
    assert!(out.contains(r#"container="other",pod="other"} 5"#), "{out}");
}

#[test]
fn address_forms() {
    assert_eq!(
        parse_addr("9464").unwrap(),
        "127.0.0.1:9464".parse().unwrap()
    );
    assert_eq!(
        parse_addr("[::1]:9464").unwrap(),
        "[::1]:9464".parse().unwrap()
    );
    assert!(parse_addr("localhost").is_err());
}

#[test]
fn socket_maps_against_the_host() {
    let mut m = Metrics::default();
    assert!(!m.render().contains("rst_trace_host_tcp_sockets"));
    m.set_maps(MapUse {
        tcp_sockets: 700,
        owner_capacity: 640,
        time_wait: (20_000, 16_000),
    });
    let out = m.render();
    assert!(out.contains("\nrst_trace_host_tcp_sockets 700\n"), "{out}");
    assert!(
        out.contains("\nrst_trace_socket_owner_map_capacity 640\n"),
        "{out}"
    );
    let out = m.render();
    assert!(
        out.contains("\nrst_trace_host_time_wait_sockets 20000\n"),
        "{out}"
    );
    assert!(
        out.contains("\nrst_trace_time_wait_map_capacity 16000\n"),
        "{out}"
    );
    assert_eq!(
        m.snapshot().maps.map(|u| u.time_wait),
        Some((20_000, 16_000))
    );
}
