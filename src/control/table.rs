//! `ambassador status` for a person: a block per node, every line at most [`WIDTH`] columns.

use super::{
    AnnounceStatus, CertificateStatus, ConnectStatus, InstanceStatus, NodeStatus, PeerStatus,
};
use crate::human;

/// The widest line, in characters.
pub const WIDTH: usize = 80;

/// Two spaces between columns.
const GAP: &str = "  ";

/// Every node's block, blank lines between them; `now_unix` dates the last errors.
pub fn render_table(all: &[NodeStatus], now_unix: u64) -> String {
    let mut lines = Vec::new();
    for (n, st) in all.iter().enumerate() {
        if n > 0 {
            lines.push(String::new());
        }
        node_block(&mut lines, st, now_unix);
    }
    let mut out = String::new();
    for line in &lines {
        out.push_str(&truncate(line, WIDTH));
        out.push('\n');
    }
    out
}

fn node_block(lines: &mut Vec<String>, st: &NodeStatus, now: u64) {
    header(lines, st);
    certificate(lines, &st.certificate);
    lines.push(format!("  congestion control: {}", st.congestion));
    if st.draining {
        lines.push("  DRAINING: new streams are refused, announcements withdrawn".to_string());
    }
    for c in &st.name_conflicts {
        wrap(lines, &format!("NAME CONFLICT: {c}"), "  ", "    ");
    }
    announced(lines, &st.announce);
    for c in &st.connect {
        consumed(lines, c, now);
    }
    peers(lines, &st.peers);
}

/// The characters of `text` (what a terminal shows, near enough).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `max` characters, its last one `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Node, mesh, QUIC address, uptime and pid on one line, or on two when that is too long.
fn header(lines: &mut Vec<String>, st: &NodeStatus) {
    let tail = format!("up {}  pid {}", human::duration(st.uptime_seconds), st.pid);
    let where_ = format!("mesh {}  quic {}", st.mesh, st.quic);
    let one = format!("node {}  {where_}  {tail}", st.node);
    if width(&one) <= WIDTH {
        lines.push(one);
        return;
    }
    let room = WIDTH.saturating_sub(width("node ") + GAP.len() + width(&tail));
    lines.push(format!("node {}{GAP}{tail}", truncate(&st.node, room)));
    lines.push(format!("{GAP}{where_}"));
}

/// The expiry line, and a warning when it comes soon.
fn certificate(lines: &mut Vec<String>, cert: &CertificateStatus) {
    lines.push(format!("  certificate expiry: {}", cert.expiry_text()));
    if let Some(w) = cert.warning() {
        lines.push(format!("  WARNING: {w}"));
    }
}

/// `text` word-wrapped to [`WIDTH`]: `first` starts its first line, `rest` the others.
fn wrap(lines: &mut Vec<String>, text: &str, first: &str, rest: &str) {
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && width(&line) + 1 + width(word) > WIDTH {
            lines.push(std::mem::replace(&mut line, rest.to_string()));
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    lines.push(line);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A table's columns (title, alignment) and which of them shrink to fit.
struct Layout<'a> {
    indent: usize,
    columns: &'a [(&'a str, Align)],
    flex: &'a [usize],
}

impl Layout<'_> {
    /// The title line and one line per row. Until the lines fit [`WIDTH`], the widest
    /// flexible column shrinks (its cells cut with `…`, never below its title); then width
    /// moves between flexible columns where that shows more cells whole.
    fn lines(&self, rows: &[Vec<String>]) -> Vec<String> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                let cells = rows.iter().filter_map(|r| r.get(i)).map(|c| width(c));
                cells.max().unwrap_or(0).max(width(title))
            })
            .collect();
        self.shrink(&mut widths);
        self.rebalance(&mut widths, rows);
        let titles: Vec<String> = self.columns.iter().map(|(t, _)| t.to_string()).collect();
        std::iter::once(&titles)
            .chain(rows)
            .map(|row| self.line(&widths, row))
            .collect()
    }

    /// The narrowest column `i` may get: its title, and at least 4.
    fn narrowest(&self, i: usize) -> usize {
        self.columns.get(i).map_or(0, |(t, _)| width(t).max(4))
    }

    fn shrink(&self, widths: &mut [usize]) {
        let gaps = GAP.len() * widths.len().saturating_sub(1);
        while self.indent + gaps + widths.iter().sum::<usize>() > WIDTH {
            let widest = self
                .flex
                .iter()
                .filter_map(|&i| Some((i, *widths.get(i)?)))
                .filter(|&(i, w)| w > self.narrowest(i))
                .max_by_key(|&(_, w)| w);
            match widest.and_then(|(i, _)| widths.get_mut(i)) {
                Some(w) => *w -= 1,
                None => return,
            }
        }
    }

    /// Moves width from flexible column `j` to `i` while that makes more cells of `i` whole
    /// than it cuts in `j` (say a node name already cut for an address that then fits).
    fn rebalance(&self, widths: &mut [usize], rows: &[Vec<String>]) {
        let whole = |i: usize, w: usize| {
            let fits = |r: &&Vec<String>| r.get(i).is_some_and(|c| width(c) <= w);
            rows.iter().filter(fits).count() as i64
        };
        loop {
            let mut best: Option<(i64, usize, usize, usize)> = None;
            let pairs = self
                .flex
                .iter()
                .flat_map(|&i| self.flex.iter().map(move |&j| (i, j)));
            for (i, j) in pairs.filter(|(i, j)| i != j) {
                let (Some(&wi), Some(&wj)) = (widths.get(i), widths.get(j)) else {
                    continue;
                };
                for k in 1..=wj.saturating_sub(self.narrowest(j)) {
                    let gain = whole(i, wi + k) - whole(i, wi) - (whole(j, wj) - whole(j, wj - k));
                    if gain > best.map_or(0, |b| b.0) {
                        best = Some((gain, i, j, k));
                    }
                }
            }
            let Some((_, i, j, k)) = best else { return };
            widths.get_mut(i).into_iter().for_each(|w| *w += k);
            widths.get_mut(j).into_iter().for_each(|w| *w -= k);
        }
    }

    fn line(&self, widths: &[usize], row: &[String]) -> String {
        let cells = self.columns.iter().zip(widths).zip(row);
        let cells: Vec<String> = cells
            .map(|(((_, align), &w), cell)| match align {
                Align::Left => format!("{:<w$}", truncate(cell, w)),
                Align::Right => format!("{:>w$}", truncate(cell, w)),
            })
            .collect();
        let line = format!("{:indent$}{}", "", cells.join(GAP), indent = self.indent);
        line.trim_end().to_string()
    }
}

fn announced(lines: &mut Vec<String>, all: &[AnnounceStatus]) {
    if all.is_empty() {
        return;
    }
    use Align::{Left, Right};
    let layout = Layout {
        indent: 2,
        columns: &[
            ("ANNOUNCED", Left),
            ("-> TARGET", Left),
            ("HEALTH", Left),
            ("OPEN", Right),
            ("ACC/REFUSED", Right),
            ("IN/OUT", Right),
        ],
        flex: &[0, 1],
    };
    let rows: Vec<Vec<String>> = all.iter().map(announce_row).collect();
    lines.extend(layout.lines(&rows));
}

fn announce_row(a: &AnnounceStatus) -> Vec<String> {
    vec![
        match &a.tag {
            Some(tag) => format!("{}:{}/{}", a.service, a.port, &tag[..tag.len().min(8)]),
            None => format!("{}:{}", a.service, a.port),
        },
        a.target.clone(),
        if a.target_up { "up" } else { "DOWN" }.to_string(),
        a.open_streams.to_string(),
        format!("{}/{}", a.accepted_streams, a.refused_streams),
        format!(
            "{}/{}",
            human::bytes(a.bytes_received),
            human::bytes(a.bytes_sent)
        ),
    ]
}

/// A reached service: its listen address and policy, then a line per instance (and one for
/// its last error).
fn consumed(lines: &mut Vec<String>, c: &ConnectStatus, now: u64) {
    let listen = c.listen.as_deref().unwrap_or("(waiting for the port)");
    let tail = format!(" on {listen}, policy {}", c.policy);
    let room = WIDTH.saturating_sub(width("  connect ") + width(&tail));
    lines.push(format!("  connect {}{tail}", truncate(&c.service, room)));
    if c.instances.is_empty() {
        lines.push("    no instance yet".to_string());
        return;
    }
    use Align::{Left, Right};
    let layout = Layout {
        indent: 4,
        columns: &[
            ("NODE", Left),
            ("ADDRESS", Left),
            ("HEALTH", Left),
            ("OPEN/TOTAL", Right),
            ("SENT/RECV", Right),
            ("LAST ERR", Right),
            ("RTT ms", Right),
        ],
        flex: &[0, 1],
    };
    let rows: Vec<Vec<String>> = c.instances.iter().map(|i| instance_row(i, now)).collect();
    let mut table = layout.lines(&rows).into_iter();
    lines.extend(table.next());
    for (line, i) in table.zip(&c.instances) {
        lines.push(line);
        if let Some(e) = &i.last_failure {
            lines.push(format!("      last error: {e}"));
        }
    }
}

fn instance_row(i: &InstanceStatus, now: u64) -> Vec<String> {
    vec![
        match (&i.node, &i.tag) {
            (Some(node), Some(tag)) => format!("{node}/{}", &tag[..tag.len().min(8)]),
            (Some(node), None) => node.clone(),
            (None, _) => i.instance.clone(),
        },
        i.address.clone().unwrap_or_else(|| "-".to_string()),
        i.health.clone(),
        format!("{}/{}", i.open, i.total),
        format!(
            "{}/{}",
            human::bytes(i.bytes_sent),
            human::bytes(i.bytes_received)
        ),
        match (&i.last_failure, i.last_failure_unix) {
            (_, Some(t)) => human::ago(t, now),
            (Some(_), None) => "yes".to_string(),
            (None, None) => "-".to_string(),
        },
        i.rtt_ms
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1}")),
    ]
}

fn peers(lines: &mut Vec<String>, all: &[PeerStatus]) {
    if all.is_empty() {
        return;
    }
    use Align::{Left, Right};
    let layout = Layout {
        indent: 2,
        columns: &[
            ("PEER", Left),
            ("ADDRESS", Left),
            ("DIR", Left),
            ("RTT ms", Right),
            ("CWND", Right),
            ("LOST/SENT", Right),
        ],
        flex: &[0, 1],
    };
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|p| {
            vec![
                p.node.clone().unwrap_or_else(|| "?".to_string()),
                p.address.clone(),
                p.direction.to_string(),
                format!("{:.1}", p.rtt_ms),
                human::bytes(p.cwnd_bytes),
                format!("{}/{}", p.lost_packets, p.sent_packets),
            ]
        })
        .collect();
    lines.extend(layout.lines(&rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::PeerDirection;

    const NOW: u64 = 1_777_636_800;

    fn instance(node: &str, address: &str, open: u64, total: u64) -> InstanceStatus {
        InstanceStatus {
            instance: format!("redis@{node}._ambassador._udp.local."),
            node: Some(node.to_string()),
            address: Some(address.to_string()),
            health: "healthy".to_string(),
            open,
            total,
            failures: 0,
            bytes_sent: 1234,
            bytes_received: 3_565_158,
            last_failure: None,
            last_failure_unix: None,
            rtt_ms: Some(0.42),
            tag: None,
        }
    }

    /// Long names everywhere, three instances (one ejected, with an error), a certificate
    /// three days from expiry.
    fn busy() -> NodeStatus {
        let long = "a-node-with-a-very-long-name-indeed-0123456789abcdef";
        let mut ejected = instance(long, "[fe80::1234:5678:9abc:def0%eth0]:41234", 0, 17);
        ejected.health = "ejected".to_string();
        ejected.failures = 3;
        ejected.last_failure = Some(format!(
            "refused by {long}: target down, and a long explanation of why that happened"
        ));
        ejected.last_failure_unix = Some(NOW - 12);
        let mut direct = instance("x", "10.0.0.9:6379", 1, 2);
        direct.node = None;
        NodeStatus {
            node: long.to_string(),
            mesh: "0123456789abcdef".to_string(),
            quic: "[2001:db8:1234:5678:9abc:def0:1234:5678]:41234".to_string(),
            congestion: "cubic".into(),
            pid: 4_194_304,
            version: "0.1.0".to_string(),
            started_unix: NOW - 273_600,
            uptime_seconds: 273_600,
            draining: true,
            certificate: CertificateStatus {
                fingerprint: "ab".repeat(32),
                not_after_unix: (NOW + 3 * 86_400) as i64,
                expires_in_seconds: 3 * 86_400,
            },
            announce: vec![AnnounceStatus {
                service: "a-service-with-a-really-long-name".to_string(),
                port: 6379,
                target: "[2001:db8:1234:5678:9abc:def0:1234:5678]:6379".to_string(),
                target_up: false,
                weight: 1,
                open_streams: 7,
                accepted_streams: 123_456,
                refused_streams: 89,
                bytes_sent: 6_012_954_214,
                bytes_received: 1234,
                tag: None,
            }],
            connect: vec![ConnectStatus {
                service: "a-service-with-a-really-long-name".to_string(),
                listen: Some("127.0.0.1:16379".to_string()),
                policy: "least-conn".to_string(),
                instances: vec![instance("p1", "10.0.0.2:41234", 2, 40), ejected, direct],
            }],
            peers: vec![PeerStatus {
                node: Some(long.to_string()),
                address: "[2001:db8:1234:5678:9abc:def0:1234:5678]:41234".to_string(),
                direction: PeerDirection::Out,
                rtt_ms: 0.42,
                cwnd_bytes: 12_000,
                sent_packets: 123_456,
                lost_packets: 3,
                mtu: 1452,
            }],
            name_conflicts: vec![format!(
                "{long} at 10.0.0.7:41234 announces redis, web and a-service-with-a-really-long-name"
            )],
        }
    }

    #[test]
    fn every_line_fits_80_columns() {
        let text = render_table(&[busy(), busy()], NOW);
        for line in text.lines() {
            assert!(
                width(line) <= WIDTH,
                "{} columns: {line}\n{text}",
                width(line)
            );
        }
        assert!(
            text.contains("WARNING: certificate expires in 3 days"),
            "{text}"
        );
        assert!(text.contains("DRAINING"), "{text}");
        assert!(text.contains("NAME CONFLICT: "), "{text}");
        for number in [
            "up 3d 4h",
            "pid 4194304",
            "2/40",
            "0/17",
            "1/2",
            "1.2K/3.4M",
            "0.4",
        ] {
            assert!(text.contains(number), "no {number:?} in\n{text}");
        }
        for number in [
            "7",
            "123456/89",
            "1.2K/5.6G",
            "DOWN",
            "12s ago",
            "12K",
            "3/123456",
        ] {
            assert!(text.contains(number), "no {number:?} in\n{text}");
        }
        assert!(
            text.contains("  redis@x."),
            "a node-less instance shows its key\n{text}"
        );
        assert!(
            text.contains("  10.0.0.2:41234  "),
            "short addresses are not cut\n{text}"
        );
        assert!(text.contains("policy least-conn\n"), "{text}");
        assert!(text.contains("last error: refused by"), "{text}");
        assert!(text.contains('…'), "long names are cut\n{text}");
    }

    #[test]
    fn a_short_header_is_one_line_and_a_mesh_key_never_warns() {
        let mut st = busy();
        st.node = "web-1".to_string();
        st.quic = "10.0.0.1:41234".to_string();
        st.certificate.not_after_unix = 67_090_118_400;
        st.certificate.expires_in_seconds = 67_090_118_400 - NOW as i64;
        let text = render_table(&[st], NOW);
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "node web-1  mesh 0123456789abcdef  quic 10.0.0.1:41234  up 3d 4h  pid 4194304"
        );
        assert!(
            text.contains("certificate expiry: never (mesh key, year 4096)"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
        assert!(text.contains("congestion control: cubic"), "{text}");
    }

    #[test]
    fn columns_line_up() {
        let layout = Layout {
            indent: 2,
            columns: &[("NAME", Align::Left), ("N", Align::Right)],
            flex: &[0],
        };
        let rows = vec![vec!["a".to_string(), "10".to_string()]];
        assert_eq!(layout.lines(&rows), ["  NAME   N", "  a     10"]);
        let rows = vec![vec!["x".repeat(100), "1".to_string()]];
        let lines = layout.lines(&rows);
        assert_eq!(width(&lines[1]), WIDTH);
        assert!(lines[1].ends_with("…  1"), "{lines:?}");
    }
}
