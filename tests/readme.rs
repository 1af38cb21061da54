//! The README documents what operators rely on: every metric `/metrics` exposes, and every
//! field of the status JSON.

use std::sync::Arc;

use ambassador::control::{
    AnnounceStatus, CertificateStatus, ConnectStatus, InstanceStatus, NodeStatus, PeerDirection,
    PeerStatus,
};
use ambassador::metrics::{InstanceLabels, Metrics, ServiceLabels};

/// A status with one of everything (every optional field set).
fn status() -> NodeStatus {
    NodeStatus {
        node: "n".into(),
        mesh: "m".into(),
        quic: "10.0.0.1:1".into(),
        congestion: "cubic".into(),
        pid: 1,
        version: "0.1.0".into(),
        started_unix: 1,
        uptime_seconds: 1,
        draining: false,
        certificate: CertificateStatus::default(),
        announce: vec![AnnounceStatus {
            service: "s".into(),
            port: 1,
            target: "127.0.0.1:1".into(),
            target_up: true,
            weight: 1,
            open_streams: 0,
            accepted_streams: 0,
            refused_streams: 0,
            bytes_sent: 0,
            bytes_received: 0,
            tag: Some("t".into()),
        }],
        connect: vec![ConnectStatus {
            service: "s".into(),
            listen: Some("127.0.0.1:1".into()),
            policy: "least-conn".into(),
            instances: vec![InstanceStatus {
                instance: "i".into(),
                node: Some("p".into()),
                address: Some("10.0.0.2:1".into()),
                health: "healthy".into(),
                open: 0,
                total: 0,
                failures: 0,
                bytes_sent: 0,
                bytes_received: 0,
                last_failure: Some("e".into()),
                last_failure_unix: Some(1),
                rtt_ms: Some(1.0),
                tag: Some("t".into()),
            }],
        }],
        peers: vec![PeerStatus {
            node: Some("p".into()),
            address: "10.0.0.2:1".into(),
            direction: PeerDirection::Out,
            rtt_ms: 1.0,
            cwnd_bytes: 1,
            sent_packets: 1,
            lost_packets: 0,
            mtu: 1200,
        }],
        name_conflicts: vec!["c".into()],
    }
}

/// Every family of `metrics`, given one series each.
fn touch_all(m: &Metrics) {
    let inst = InstanceLabels {
        service: "s".into(),
        instance: "i".into(),
    };
    let svc = ServiceLabels {
        service: "s".into(),
    };
    let c = &m.consumer;
    for f in [
        &c.opened,
        &c.failed,
        &c.sent,
        &c.received,
        &c.ejections,
        &c.readmissions,
    ] {
        f.get_or_create(&inst).inc();
    }
    for f in [&c.dropped, &c.retries, &c.hedges] {
        f.get_or_create(&svc).inc();
    }
    c.active.get_or_create(&inst).inc();
    c.duration.get_or_create(&inst).observe(0.1);
    c.setup.get_or_create(&inst).observe(0.1);
    m.provider.stream("s", "accepted");
    m.provider.active.get_or_create(&svc).inc();
    m.provider.sent.get_or_create(&svc).inc();
    m.provider.received.get_or_create(&svc).inc();
    m.discovery("mdns").count("added", 1);
    m.http
        .answered("s", "i", 200, std::time::Duration::from_millis(1));
}

/// Each family's name, type and label names, from a Prometheus text exposition.
fn families(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
        let sample = text
            .lines()
            .find(|l| !l.starts_with('#') && l.starts_with(name))
            .unwrap_or_else(|| panic!("no sample of {name}"));
        let labels = sample
            .split_once('{')
            .and_then(|(_, l)| l.split_once('}'))
            .map(|(l, _)| l.split(',').filter_map(|kv| kv.split_once('=')))
            .into_iter()
            .flatten()
            .map(|(k, _)| k.to_string())
            .filter(|k| k != "le")
            .collect();
        out.push((name.to_string(), kind.to_string(), labels));
    }
    out
}

/// The README's section `heading`, up to the next one.
fn section(heading: &str) -> &'static str {
    let readme = include_str!("../README.md");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?} in the README"));
    let rest = &readme[start + 1..];
    &rest[..rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3)]
}

/// The first cells (between backquotes) of a section's table rows.
fn documented(section: &str) -> Vec<&str> {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn every_metric_is_in_the_readme_with_its_type_and_labels() {
    let m = Metrics::new();
    touch_all(&m);
    m.set_snapshot(Arc::new(status));
    let doc = section("Admin endpoint and metrics");
    let families = families(&m.encode());
    assert!(families.len() >= 27, "{families:?}");
    for (name, kind, labels) in &families {
        let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{} ", labels.join(", "))
        };
        let row = format!("| `{name}` | {kind} | {labels}|");
        assert!(doc.contains(&row), "the README lacks the row\n{row}");
    }
    for name in documented(doc)
        .into_iter()
        .filter(|n| n.starts_with("ambassador_"))
    {
        assert!(
            families.iter().any(|(n, ..)| n == name),
            "the README documents {name}, which /metrics does not expose"
        );
    }
}

/// The paths of a JSON value's leaves, and of its arrays of objects (as `name[]`).
fn paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    let Some(object) = value.as_object() else {
        return;
    };
    for (key, v) in object {
        match v {
            serde_json::Value::Object(_) => paths(v, &join(key), out),
            serde_json::Value::Array(items) if items.iter().all(|i| i.is_object()) => {
                let path = format!("{}[]", join(key));
                out.push(path.clone());
                items.iter().for_each(|i| paths(i, &path, out));
            }
            _ => out.push(join(key)),
        }
    }
}

#[test]
fn every_status_field_is_in_the_readme() {
    let json = serde_json::to_value(status()).unwrap_or_default();
    let mut all = Vec::new();
    paths(&json, "", &mut all);
    assert!(all.len() >= 49, "{all:?}");
    let doc = documented(section("Status JSON"));
    for path in &all {
        assert!(
            doc.contains(&path.as_str()),
            "the README's Status JSON lacks `{path}`"
        );
    }
    for path in &doc {
        assert!(
            all.iter().any(|p| p == path),
            "the README documents `{path}`, not in the JSON"
        );
    }
}
