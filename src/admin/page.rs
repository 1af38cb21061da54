//! The admin endpoint's status page (`/`): server-rendered from a status snapshot, HTML5 with
//! inline CSS and no script; it refreshes itself every 5 s and its tables scroll sideways on a
//! narrow screen.
//!
//! Hooks for tools and browser tests (stable, like the status JSON: only ever added):
//! - `#node`, `#mesh`, `#quic`, `#version`, `#pid`: spans holding those values;
//!   `#uptime` (human, `3d 4h`) with `data-seconds`; `#certificate` with `data-not-after`
//!   (Unix seconds) and the class `warn` when it expires within a week.
//! - `#draining`: a banner, present only while the node drains; `#certificate-warning` only
//!   when the certificate expires soon; `#name-conflicts` (a `li` per conflict) only when
//!   another node uses this node's name.
//! - `tr.announce[data-service]`, one per announced service, with `td.port`, `td.target`,
//!   `td.target-health` (class `up` or `down`), `td.weight`, `td.open`, `td.accepted`,
//!   `td.refused`, `td.bytes-sent[data-bytes]`, `td.bytes-received[data-bytes]`.
//! - `table.instances[data-service]`, one per reached service, with `data-listen` and
//!   `data-policy`; in it `tr.instance[data-service][data-node][data-instance]`, one per
//!   instance (`data-node` is the instance key when no node is known), with `td.node`,
//!   `td.address`, `td.health` (class `ok` or `bad`), `td.open`, `td.total`,
//!   `td.bytes-sent[data-bytes]`, `td.bytes-received[data-bytes]`, `td.last-error` and
//!   `td.rtt`.
//! - `tr.peer[data-node][data-address]`, one per QUIC connection, with `td.direction`,
//!   `td.rtt`, `td.cwnd[data-bytes]`, `td.sent-packets`, `td.lost-packets`, `td.mtu`.
//!
//! Byte counts show in human units (`1.2K`) with the exact count in `data-bytes` and `title`.

use crate::control::{AnnounceStatus, ConnectStatus, InstanceStatus, NodeStatus, PeerStatus};
use crate::human;

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f23;--bg:#fff;--muted:#6a737d;--line:#d0d7de;\
--head:#f3f5f7;--ok:#1a7f37;--bad:#c62828;--warn-bg:#fff4ce;--warn-fg:#6b4e00}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#8b949e;\
--line:#30363d;--head:#161b22;--ok:#3fb950;--bad:#ff6b6b;--warn-bg:#3d2e00;--warn-fg:#f2cc60}}\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);\
background:var(--bg);margin:0 auto;padding:0 12px 24px;max-width:1200px}\
h1{font-size:1.4em;margin:12px 0 4px}h2{font-size:1.15em;margin:20px 0 6px}\
h3{font-size:1em;margin:14px 0 4px}h3 small{color:var(--muted);font-weight:normal}\
dl.facts{display:flex;flex-wrap:wrap;gap:4px 20px;margin:4px 0 8px}\
dl.facts div{display:flex;gap:6px}dt{color:var(--muted)}dd{margin:0}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}\
table{border-collapse:collapse;min-width:100%;white-space:nowrap}\
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left}\
th{background:var(--head);font-weight:600}td.num,th.num{text-align:right;\
font-variant-numeric:tabular-nums}\
.up,.ok{color:var(--ok)}.down,.bad{color:var(--bad);font-weight:700}\
.warn{background:var(--warn-bg);color:var(--warn-fg)}\
.banner{padding:8px 12px;margin:8px 0;border-radius:4px;font-weight:600}\
.banner.bad{background:var(--bad);color:#fff}.banner ul{margin:4px 0 0;font-weight:normal}\
td.last-error{max-width:28em;overflow:hidden;text-overflow:ellipsis}\
.muted,.empty{color:var(--muted)}footer{margin-top:24px;color:var(--muted);font-size:.9em}";

/// The page for `st`.
pub(super) fn render(st: &NodeStatus) -> String {
    let now = snapshot_time(st);
    let title = format!(
        "{}ambassador {}",
        if st.draining { "DRAINING · " } else { "" },
        st.node
    );
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"5\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    header(&mut out, st);
    banners(&mut out, st);
    announced(&mut out, &st.announce);
    consumed(&mut out, &st.connect, now);
    peers(&mut out, &st.peers);
    let at = human::utc(now as i64).map_or_else(String::new, |(t, _)| format!(" at {t}"));
    out.push_str(&format!(
        "<footer>Snapshot{at}; this page refreshes every 5 s. For tools: \
         <a href=\"status\">/status</a> (JSON), <a href=\"metrics\">/metrics</a> \
         (Prometheus), <a href=\"healthz\">/healthz</a>.</footer>\n</body>\n</html>\n"
    ));
    out
}

/// When the snapshot was taken (Unix seconds): its start plus its uptime, so the page's "ago"
/// agrees with its uptime.
fn snapshot_time(st: &NodeStatus) -> u64 {
    if st.started_unix > 0 {
        return st.started_unix.saturating_add(st.uptime_seconds);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One `<dt>`/`<dd>` pair of the facts list; `value` is HTML already.
fn fact(label: &str, value: &str) -> String {
    format!("<div><dt>{label}</dt><dd>{value}</dd></div>")
}

fn header(out: &mut String, st: &NodeStatus) {
    let cert = &st.certificate;
    let class = if cert.warns() { "cert warn" } else { "cert" };
    let facts = [
        fact(
            "mesh",
            &format!("<span id=\"mesh\">{}</span>", esc(&st.mesh)),
        ),
        fact(
            "QUIC",
            &format!("<span id=\"quic\">{}</span>", esc(&st.quic)),
        ),
        fact(
            "congestion control",
            &format!("<span id=\"congestion\">{}</span>", esc(&st.congestion)),
        ),
        fact(
            "version",
            &format!("<span id=\"version\">{}</span>", esc(&st.version)),
        ),
        fact("pid", &format!("<span id=\"pid\">{}</span>", st.pid)),
        fact(
            "uptime",
            &format!(
                "<span id=\"uptime\" data-seconds=\"{}\">{}</span>",
                st.uptime_seconds,
                human::duration(st.uptime_seconds)
            ),
        ),
        fact(
            "certificate expires",
            &format!(
                "<span id=\"certificate\" class=\"{class}\" data-not-after=\"{}\" \
                 title=\"SHA-256 fingerprint {}\">{}</span>",
                cert.not_after_unix,
                esc(&cert.fingerprint),
                esc(&cert.expiry_text())
            ),
        ),
    ];
    out.push_str(&format!(
        "<header>\n<h1>ambassador <span id=\"node\">{}</span></h1>\n<dl class=\"facts\">{}</dl>\n</header>\n",
        esc(&st.node),
        facts.concat()
    ));
}

fn banners(out: &mut String, st: &NodeStatus) {
    if st.draining {
        out.push_str(
            "<div id=\"draining\" class=\"banner bad\">DRAINING: new streams are refused and \
             announcements withdrawn; open connections finish.</div>\n",
        );
    }
    if let Some(w) = st.certificate.warning() {
        out.push_str(&format!(
            "<div id=\"certificate-warning\" class=\"banner warn\">Warning: {}. Issue a new \
             one and reload (SIGHUP).</div>\n",
            esc(&w)
        ));
    }
    if !st.name_conflicts.is_empty() {
        let items: String = st
            .name_conflicts
            .iter()
            .map(|c| format!("<li>{}</li>", esc(c)))
            .collect();
        out.push_str(&format!(
            "<div id=\"name-conflicts\" class=\"banner warn\">Name conflict: other nodes of \
             this mesh use this node's name.<ul>{items}</ul></div>\n"
        ));
    }
}

/// A cell of text.
fn td(class: &str, text: &str) -> String {
    format!("<td class=\"{class}\">{}</td>", esc(text))
}

/// A cell of a number, right-aligned.
fn td_num(class: &str, n: impl std::fmt::Display) -> String {
    format!("<td class=\"{class} num\">{n}</td>")
}

/// A cell of a byte count: human, with the exact count in `data-bytes` and `title`.
fn td_bytes(class: &str, n: u64) -> String {
    format!(
        "<td class=\"{class} num\" data-bytes=\"{n}\" title=\"{n} bytes\">{}</td>",
        human::bytes(n)
    )
}

/// A table's head row: `(title, numeric, tooltip)` per column.
fn thead(columns: &[(&str, bool, &str)]) -> String {
    let cells: String = columns
        .iter()
        .map(|(title, num, tip)| {
            let class = if *num { " class=\"num\"" } else { "" };
            let tip = if tip.is_empty() {
                String::new()
            } else {
                format!(" title=\"{tip}\"")
            };
            format!("<th{class}{tip}>{title}</th>")
        })
        .collect();
    format!("<thead><tr>{cells}</tr></thead>")
}

/// A section with a heading and `table` in a scrolling wrapper, or `empty` without one.
fn section(out: &mut String, id: &str, heading: &str, table: Option<String>, empty: &str) {
    out.push_str(&format!("<section id=\"{id}\">\n<h2>{heading}</h2>\n"));
    match table {
        Some(t) => out.push_str(&format!("<div class=\"scroll\">{t}</div>\n")),
        None => out.push_str(&format!("<p class=\"empty\">{empty}</p>\n")),
    }
    out.push_str("</section>\n");
}

fn announced(out: &mut String, all: &[AnnounceStatus]) {
    let table = (!all.is_empty()).then(|| {
        let head = thead(&[
            ("service", false, ""),
            ("port", true, "advertised port"),
            ("target", false, ""),
            ("target health", false, "TCP health check of the target"),
            ("weight", true, "balancing weight"),
            ("open", true, "streams open now"),
            ("accepted", true, "streams accepted since start"),
            ("refused", true, "streams refused since start"),
            ("sent", true, "bytes from the target to consumers"),
            ("received", true, "bytes from consumers to the target"),
        ]);
        let rows: String = all.iter().map(announce_row).collect();
        format!("<table class=\"announced\">{head}<tbody>\n{rows}</tbody></table>")
    });
    section(
        out,
        "announce",
        "Announced services",
        table,
        "This node announces no service.",
    );
}

fn announce_row(a: &AnnounceStatus) -> String {
    let (class, text) = if a.target_up {
        ("up", "up")
    } else {
        ("down", "DOWN")
    };
    [
        format!(
            "<tr class=\"announce\" data-service=\"{}\">",
            esc(&a.service)
        ),
        td("service", &a.service),
        td_num("port", a.port),
        td("target", &a.target),
        td(&format!("target-health {class}"), text),
        td_num("weight", a.weight),
        td_num("open", a.open_streams),
        td_num("accepted", a.accepted_streams),
        td_num("refused", a.refused_streams),
        td_bytes("bytes-sent", a.bytes_sent),
        td_bytes("bytes-received", a.bytes_received),
        "</tr>\n".to_string(),
    ]
    .concat()
}

fn consumed(out: &mut String, all: &[ConnectStatus], now: u64) {
    out.push_str("<section id=\"connect\">\n<h2>Consumed services</h2>\n");
    if all.is_empty() {
        out.push_str("<p class=\"empty\">This node reaches no service.</p>\n");
    }
    for c in all {
        consumed_service(out, c, now);
    }
    out.push_str("</section>\n");
}

fn consumed_service(out: &mut String, c: &ConnectStatus, now: u64) {
    let listen = c.listen.as_deref().unwrap_or("");
    let shown = c.listen.as_deref().unwrap_or("waiting for the port");
    out.push_str(&format!(
        "<h3>{} <small>on {}, policy {}</small></h3>\n",
        esc(&c.service),
        esc(shown),
        esc(&c.policy)
    ));
    if c.instances.is_empty() {
        out.push_str("<p class=\"empty\">No instance yet.</p>\n");
        return;
    }
    let head = thead(&[
        ("node", false, "the node announcing it, or the instance key"),
        ("address", false, ""),
        ("health", false, "healthy, or ejected after failures"),
        ("open", true, "connections open now"),
        ("total", true, "connections carried since start"),
        ("sent", true, "bytes from clients to it"),
        ("received", true, "bytes from it to clients"),
        ("last error", false, ""),
        ("RTT ms", true, "round-trip time of the QUIC connection"),
    ]);
    let rows: String = c
        .instances
        .iter()
        .map(|i| instance_row(&c.service, i, now))
        .collect();
    out.push_str(&format!(
        "<div class=\"scroll\"><table class=\"instances\" data-service=\"{}\" data-listen=\"{}\" \
         data-policy=\"{}\">{head}<tbody>\n{rows}</tbody></table></div>\n",
        esc(&c.service),
        esc(listen),
        esc(&c.policy)
    ));
}

fn instance_row(service: &str, i: &InstanceStatus, now: u64) -> String {
    let node = i.node.as_deref().unwrap_or(&i.instance);
    let health = if i.health == "healthy" { "ok" } else { "bad" };
    let rtt = i
        .rtt_ms
        .map_or_else(|| "–".to_string(), |r| format!("{r:.1}"));
    [
        format!(
            "<tr class=\"instance\" data-service=\"{}\" data-node=\"{}\" data-instance=\"{}\">",
            esc(service),
            esc(node),
            esc(&i.instance)
        ),
        format!(
            "<td class=\"node\" title=\"{}\">{}</td>",
            esc(&i.instance),
            esc(node)
        ),
        td("address", i.address.as_deref().unwrap_or("–")),
        td(&format!("health {health}"), &i.health),
        td_num("open", i.open),
        td_num("total", i.total),
        td_bytes("bytes-sent", i.bytes_sent),
        td_bytes("bytes-received", i.bytes_received),
        last_error(i, now),
        td_num("rtt", rtt),
        "</tr>\n".to_string(),
    ]
    .concat()
}

/// The last error and how long ago it was, or a dash.
fn last_error(i: &InstanceStatus, now: u64) -> String {
    let Some(e) = &i.last_failure else {
        return "<td class=\"last-error muted\">–</td>".to_string();
    };
    let ago = i
        .last_failure_unix
        .map(|t| format!(" <span class=\"ago muted\">({})</span>", human::ago(t, now)))
        .unwrap_or_default();
    format!(
        "<td class=\"last-error bad\" title=\"{}\">{}{ago}</td>",
        esc(e),
        esc(e)
    )
}

fn peers(out: &mut String, all: &[PeerStatus]) {
    let table = (!all.is_empty()).then(|| {
        let head = thead(&[
            ("node", false, "from its verified certificate"),
            ("address", false, ""),
            (
                "direction",
                false,
                "out: this node dialled; in: the peer did",
            ),
            ("RTT ms", true, ""),
            ("cwnd", true, "congestion window"),
            ("sent packets", true, ""),
            ("lost packets", true, ""),
            ("MTU", true, "largest UDP payload the path carries"),
        ]);
        let rows: String = all.iter().map(peer_row).collect();
        format!("<table class=\"peers\">{head}<tbody>\n{rows}</tbody></table>")
    });
    section(
        out,
        "peers",
        "QUIC peers",
        table,
        "No QUIC connection is open.",
    );
}

fn peer_row(p: &PeerStatus) -> String {
    let node = p.node.as_deref().unwrap_or("?");
    [
        format!(
            "<tr class=\"peer\" data-node=\"{}\" data-address=\"{}\">",
            esc(node),
            esc(&p.address)
        ),
        td("node", node),
        td("address", &p.address),
        td("direction", &p.direction.to_string()),
        td_num("rtt", format!("{:.1}", p.rtt_ms)),
        td_bytes("cwnd", p.cwnd_bytes),
        td_num("sent-packets", p.sent_packets),
        td_num("lost-packets", p.lost_packets),
        td_num("mtu", p.mtu),
        "</tr>\n".to_string(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CertificateStatus, PeerDirection};

    const NOW: u64 = 1_777_636_800;

    fn instance(node: &str, open: u64, total: u64, sent: u64, received: u64) -> InstanceStatus {
        InstanceStatus {
            instance: format!("redis@{node}._ambassador._udp.local."),
            node: Some(node.to_string()),
            address: Some("10.0.0.2:41234".to_string()),
            health: "healthy".to_string(),
            open,
            total,
            failures: 0,
            bytes_sent: sent,
            bytes_received: received,
            last_failure: None,
            last_failure_unix: None,
            rtt_ms: Some(0.42),
            tag: None,
        }
    }

    /// A node that reaches `redis` on two instances and announces `web`, its certificate a
    /// mesh key's (year 4096).
    fn status() -> NodeStatus {
        let mut p2 = instance("p2", 0, 9, 0, 0);
        p2.health = "ejected".to_string();
        p2.last_failure = Some("target refused".to_string());
        p2.last_failure_unix = Some(NOW - 12);
        NodeStatus {
            node: "web-1".to_string(),
            mesh: "0123456789abcdef".to_string(),
            quic: "10.0.0.1:41234".to_string(),
            congestion: "cubic".into(),
            pid: 4321,
            version: "0.1.0".to_string(),
            started_unix: NOW - 312,
            uptime_seconds: 312,
            draining: false,
            certificate: CertificateStatus {
                fingerprint: "ab".repeat(32),
                not_after_unix: 67_090_118_400,
                expires_in_seconds: 67_090_118_400 - NOW as i64,
            },
            announce: vec![AnnounceStatus {
                service: "web".to_string(),
                port: 8080,
                target: "127.0.0.1:8080".to_string(),
                target_up: false,
                weight: 1,
                open_streams: 2,
                accepted_streams: 57,
                refused_streams: 3,
                bytes_sent: 6_012_954_214,
                bytes_received: 1234,
                tag: None,
            }],
            connect: vec![ConnectStatus {
                service: "redis".to_string(),
                listen: Some("127.0.0.1:6379".to_string()),
                policy: "least-conn".to_string(),
                instances: vec![instance("p1", 3, 41, 1234, 3_565_158), p2],
            }],
            peers: vec![PeerStatus {
                node: Some("p1".to_string()),
                address: "10.0.0.2:41234".to_string(),
                direction: PeerDirection::Out,
                rtt_ms: 0.42,
                cwnd_bytes: 12_000,
                sent_packets: 500,
                lost_packets: 2,
                mtu: 1452,
            }],
            name_conflicts: Vec::new(),
        }
    }

    /// The `<tr ...>` row that starts with `start`, up to its `</tr>`.
    fn row<'a>(page: &'a str, start: &str) -> &'a str {
        let from = page
            .find(start)
            .unwrap_or_else(|| panic!("no {start} in\n{page}"));
        let rest = &page[from..];
        &rest[..rest.find("</tr>").unwrap_or(rest.len())]
    }

    #[test]
    fn both_instances_show_their_numbers() {
        let page = render(&status());
        let p1 = row(
            &page,
            r#"<tr class="instance" data-service="redis" data-node="p1""#,
        );
        for cell in [
            r#"<td class="open num">3</td>"#,
            r#"<td class="total num">41</td>"#,
            r#"<td class="bytes-sent num" data-bytes="1234" title="1234 bytes">1.2K</td>"#,
            r#"<td class="bytes-received num" data-bytes="3565158""#,
            r#"<td class="health ok">healthy</td>"#,
            r#"<td class="rtt num">0.4</td>"#,
        ] {
            assert!(p1.contains(cell), "no {cell} in {p1}");
        }
        let p2 = row(
            &page,
            r#"<tr class="instance" data-service="redis" data-node="p2""#,
        );
        for cell in [
            r#"<td class="open num">0</td>"#,
            r#"<td class="total num">9</td>"#,
            r#"<td class="health bad">ejected</td>"#,
            "target refused <span class=\"ago muted\">(12s ago)</span>",
        ] {
            assert!(p2.contains(cell), "no {cell} in {p2}");
        }
        let web = row(&page, r#"<tr class="announce" data-service="web">"#);
        assert!(
            web.contains(r#"<td class="target-health down">DOWN</td>"#),
            "{web}"
        );
        assert!(web.contains(r#"<td class="accepted num">57</td>"#), "{web}");
        assert!(web.contains(r#"data-bytes="6012954214" title="6012954214 bytes">5.6G"#));
        let peer = row(&page, r#"<tr class="peer" data-node="p1""#);
        assert!(
            peer.contains(r#"<td class="lost-packets num">2</td>"#),
            "{peer}"
        );
        assert!(page.contains(r#"<span id="node">web-1</span>"#));
        assert!(page.contains(r#"<span id="mesh">0123456789abcdef</span>"#));
        assert!(page.contains(r#"<span id="uptime" data-seconds="312">5m 12s</span>"#));
        assert!(page.contains(r#"<meta http-equiv="refresh" content="5">"#));
        assert!(page.contains("never (mesh key, year 4096)"), "{page}");
        assert!(!page.contains("id=\"draining\""), "not draining: {page}");
        assert!(!page.contains("certificate-warning") && !page.contains("cert warn"));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let mut st = status();
        st.node = "<script>alert(1)</script>".to_string();
        st.connect[0].service = "<script>x</script>".to_string();
        st.connect[0].instances[0].node = Some("\"><img src=x onerror=alert(1)>".to_string());
        st.announce[0].service = "<b>web</b>".to_string();
        st.name_conflicts = vec!["<script>y</script> at 10.0.0.9".to_string()];
        let page = render(&st);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains(r#"<span id="node">&lt;script&gt;alert(1)&lt;/script&gt;</span>"#));
        assert!(page.contains(r#"data-node="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;""#));
        assert!(page.contains("<li>&lt;script&gt;y&lt;/script&gt; at 10.0.0.9</li>"));
    }

    #[test]
    fn a_draining_node_shows_the_banner() {
        let mut st = status();
        st.draining = true;
        let page = render(&st);
        assert!(
            page.contains(r#"<div id="draining" class="banner bad">DRAINING"#),
            "{page}"
        );
        assert!(
            page.contains("<title>DRAINING · ambassador web-1</title>"),
            "{page}"
        );
    }

    #[test]
    fn a_certificate_three_days_from_expiry_warns() {
        let mut st = status();
        st.certificate.not_after_unix = (NOW + 3 * 86_400) as i64;
        st.certificate.expires_in_seconds = 3 * 86_400;
        let page = render(&st);
        assert!(
            page.contains(r#"<span id="certificate" class="cert warn""#),
            "{page}"
        );
        assert!(
            page.contains("2026-05-04 12:00 UTC (3 days left)"),
            "{page}"
        );
        assert!(
            page.contains(r#"<div id="certificate-warning" class="banner warn">Warning: certificate expires in 3 days."#),
            "{page}"
        );
    }

    #[test]
    fn empty_sections_say_so() {
        let mut st = status();
        st.announce.clear();
        st.connect.clear();
        st.peers.clear();
        st.certificate = CertificateStatus::default();
        let page = render(&st);
        assert!(page.contains("This node announces no service."));
        assert!(page.contains("This node reaches no service."));
        assert!(page.contains("No QUIC connection is open."));
        assert!(
            page.contains(">unknown</span>") && !page.contains("cert warn"),
            "{page}"
        );
    }
}
