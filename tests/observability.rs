//! What an operator sees of a running mesh, black-box: one provider and one consumer of a real
//! `redis-server`, each with an admin endpoint. The counters of `/metrics` (scraped with
//! `curl`), `ambassador status` and the admin page (in a real browser, when one is installed)
//! must agree with the traffic the test sent; a target that goes down is counted by reason;
//! `/healthz` turns 503 while a node drains.
//!
//! One set-up serves every assertion (they run in order: traffic first, then the target goes
//! down, then the consumer drains). A failed check is recorded and the next ones still run, so
//! one report lists everything that is off.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::{Redis, poll, redis_cli};
use common::{Mesh, Proc, READY, client, command, free_tcp_port, read_to_end, run, status, unique};
use serde_json::Value;

/// Client connections the test makes through the consumer.
const CONNECTIONS: u64 = 5;

/// The provider's target health check period: short, so that a stopped Redis is seen at once.
const HEALTH_INTERVAL: &str = "200ms";

/// Deadline for a state the nodes reach in milliseconds (counters settling, health flips).
const SETTLE: Duration = Duration::from_secs(5);

// ----- checks that do not stop the test -----

/// Failed checks, reported together at the end.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("CHECK FAILED: {what}");
            self.0.push(what);
        }
    }

    fn equal<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        self.check(got == want, || {
            format!("{what}: got {got:?}, want {want:?}")
        });
    }

    /// Fails the test with every failed check.
    fn report(self) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A Redis command in RESP, exactly as a client writes it.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ----- HTTP with curl, and the Prometheus text format -----

/// `curl` GET of `http://127.0.0.1:PORT/PATH`: the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "curl {path} on port {port} failed: {out:?}");
    let (body, code) = out.stdout.rsplit_once('\n').expect("curl printed a code");
    (code.parse().expect("an HTTP status code"), body.to_string())
}

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (comments skipped, label values unescaped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            let end = loop {
                let (i, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unclosed {{ in {line}"));
                match c {
                    '}' => break i,
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, c)| c) {
                                Some('"') => break,
                                Some('\\') => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("bad escape in {line}"),
                                },
                                Some(c) => value.push(c),
                                None => panic!("unclosed label value in {line}"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            };
            rest = &inner[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// One scrape of a node's `/metrics`.
struct Scrape(Vec<Sample>);

impl Scrape {
    fn of(admin: u16) -> Scrape {
        let (code, body) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        Scrape(parse_metrics(&body))
    }

    /// The samples named `name` whose labels include `labels`.
    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over those samples (0 when there is none yet: a counter not yet created).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).map(|s| s.value).sum()
    }

    /// The same, for a counter.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels) as u64
    }

    /// The value of the only sample that matches, if exactly one does.
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let all: Vec<&Sample> = self.series(name, labels).collect();
        match all[..] {
            [s] => Some(s.value),
            _ => None,
        }
    }
}

// ----- the set-up -----

/// A node with its admin endpoint.
struct Node {
    proc: Proc,
    name: String,
    admin: u16,
}

/// A real Redis, a provider of it and a consumer, in one fresh mesh.
struct Setup {
    // Dropped in this order: nodes first, then Redis, then the directory.
    consumer: Node,
    provider: Node,
    /// Where clients connect (the consumer's listener).
    listen: SocketAddr,
    redis: Redis,
    mesh: Mesh,
}

impl Setup {
    fn start() -> Setup {
        let mesh = Mesh::new();
        let redis = Redis::start(mesh.dir.path());
        let prov = unique("prov");
        let prov_admin = free_tcp_port();
        let spec = format!("redis:{0}=127.0.0.1:{0}", redis.port);
        let provider = mesh.announce(
            &prov,
            &[spec],
            &[
                "--admin",
                &prov_admin.to_string(),
                "--health-interval",
                HEALTH_INTERVAL,
            ],
        );
        let cons = unique("cons");
        let cons_admin = free_tcp_port();
        let (consumer, listen) = mesh.connect(
            &cons,
            "redis",
            &[
                "--admin",
                &cons_admin.to_string(),
                "--drain-timeout",
                "20s",
                "--wait",
                "1s",
            ],
        );
        let s = Setup {
            consumer: Node {
                proc: consumer,
                name: cons,
                admin: cons_admin,
            },
            provider: Node {
                proc: provider,
                name: prov,
                admin: prov_admin,
            },
            listen,
            redis,
            mesh,
        };
        // Ready: the consumer lists the provider's instance as usable.
        let ready = poll(READY, || s.consumer_instance().map(|_| ()));
        assert!(
            ready.is_some(),
            "the consumer does not list an instance of node {} within {READY:?}; status: {:#?}",
            s.provider.name,
            status(s.home())
        );
        s
    }

    fn home(&self) -> &Path {
        self.mesh.dir.path()
    }

    /// The node's object in `ambassador status --json`.
    fn node_status(&self, node: &str) -> Option<Value> {
        status(self.home()).into_iter().find(|n| n["node"] == node)
    }

    /// The consumer's instance of redis on the provider's node, from `status --json`.
    fn consumer_instance(&self) -> Option<Value> {
        let st = self.node_status(&self.consumer.name)?;
        let connect = st["connect"]
            .as_array()?
            .iter()
            .find(|c| c["service"] == "redis")?;
        connect["instances"]
            .as_array()?
            .iter()
            .find(|i| i["node"] == self.provider.name.as_str())
            .cloned()
    }
}

/// Labels of the consumer-side series of redis.
const REDIS: &[(&str, &str)] = &[("service", "redis")];

/// What the test sent through the consumer.
struct Traffic {
    connections: u64,
    sent: u64,
    received: u64,
}

/// `CONNECTIONS` client connections, each storing a value of a different length with one
/// `SET`, reading the `+OK`, then closing. Counts the exact bytes written and read.
fn send_traffic(s: &Setup) -> Traffic {
    let mut t = Traffic {
        connections: 0,
        sent: 0,
        received: 0,
    };
    for i in 0..CONNECTIONS {
        let key = format!("obs:{i}");
        let value = vec![b'a' + i as u8; 1000 * (i as usize + 1)];
        let cmd = resp(&[b"SET", key.as_bytes(), &value]);
        let mut c = client(s.listen);
        c.write_all(&cmd).expect("write SET");
        let mut reply = [0u8; 5];
        c.read_exact(&mut reply).expect("read the SET reply");
        assert_eq!(&reply, b"+OK\r\n", "SET through the mesh");
        c.shutdown(Shutdown::Write).expect("half-close");
        let (rest, err) = read_to_end(&mut c);
        assert!(
            err.is_none() && rest.is_empty(),
            "after +OK: {rest:?} {err:?}"
        );
        t.connections += 1;
        t.sent += cmd.len() as u64;
        t.received += reply.len() as u64;
    }
    // The values reached the real Redis.
    for i in 0..CONNECTIONS {
        let len = redis_cli(s.redis.port, &["STRLEN", &format!("obs:{i}")]);
        assert_eq!(len, (1000 * (i + 1)).to_string(), "STRLEN obs:{i} in Redis");
    }
    t
}

// ----- the assertions -----

/// Check 1: The counters of `/metrics` moved by exactly what was sent.
fn metrics_count_the_traffic(s: &Setup, f: &mut Findings) -> Traffic {
    let (c0, p0) = (Scrape::of(s.consumer.admin), Scrape::of(s.provider.admin));
    let t = send_traffic(s);
    // The connections end on the nodes shortly after the client saw EOF.
    let settled = poll(SETTLE, || {
        let (c, p) = (Scrape::of(s.consumer.admin), Scrape::of(s.provider.admin));
        let idle = c.sum("ambassador_connections_active", REDIS) == 0.0
            && p.sum("ambassador_provider_streams_active", REDIS) == 0.0;
        idle.then_some((c, p))
    });
    let Some((c1, p1)) = settled else {
        f.check(false, || {
            format!("connections still counted active {SETTLE:?} after the clients closed")
        });
        return t;
    };
    let delta = |a: &Scrape, b: &Scrape, name: &str, labels: &[(&str, &str)]| {
        b.count(name, labels).saturating_sub(a.count(name, labels))
    };
    let name = "consumer ambassador_connections_opened_total{service=redis} rise";
    let got = delta(&c0, &c1, "ambassador_connections_opened_total", REDIS);
    f.equal(name, got, t.connections);
    let name = "consumer ambassador_connection_sent_bytes_total{service=redis} rise";
    let got = delta(&c0, &c1, "ambassador_connection_sent_bytes_total", REDIS);
    f.equal(name, got, t.sent);
    let name = "consumer ambassador_connection_received_bytes_total{service=redis} rise";
    let got = delta(
        &c0,
        &c1,
        "ambassador_connection_received_bytes_total",
        REDIS,
    );
    f.equal(name, got, t.received);
    let accepted = &[("service", "redis"), ("outcome", "accepted")];
    let name = "provider ambassador_provider_streams_total{outcome=accepted} rise";
    let got = delta(&p0, &p1, "ambassador_provider_streams_total", accepted);
    f.equal(name, got, t.connections);
    let name = "provider ambassador_provider_received_bytes_total{service=redis} rise";
    let got = delta(&p0, &p1, "ambassador_provider_received_bytes_total", REDIS);
    f.equal(name, got, t.sent);
    let name = "provider ambassador_provider_sent_bytes_total{service=redis} rise";
    let got = delta(&p0, &p1, "ambassador_provider_sent_bytes_total", REDIS);
    f.equal(name, got, t.received);

    let rtt = c1.one("ambassador_peer_rtt_seconds", &[("peer", &s.provider.name)]);
    f.check(rtt.is_some_and(|v| v > 0.0 && v < 5.0), || {
        format!(
            "consumer ambassador_peer_rtt_seconds{{peer={}}}: {rtt:?}",
            s.provider.name
        )
    });
    for (side, m) in [("consumer", &c1), ("provider", &p1)] {
        let info: Vec<f64> = m
            .series("ambassador_build_info", &[])
            .map(|s| s.value)
            .collect();
        f.equal(&format!("{side} ambassador_build_info"), info, vec![1.0]);
        let expiry = m.one("ambassador_certificate_expiry_timestamp_seconds", &[]);
        let now = now_unix();
        f.check(expiry.is_some_and(|e| e > now), || {
            format!(
                "{side} ambassador_certificate_expiry_timestamp_seconds {expiry:?} <= now {now}"
            )
        });
    }
    let up = p1.one("ambassador_target_up", REDIS);
    f.equal(
        "provider ambassador_target_up{service=redis}",
        up,
        Some(1.0),
    );
    t
}

/// Check 2: `ambassador status` (JSON and table) and `/status` show the same numbers.
fn status_matches_the_traffic(s: &Setup, f: &mut Findings, t: &Traffic) {
    let Some(inst) = s.consumer_instance() else {
        return f.check(false, || "status lists no instance of the provider".into());
    };
    let num = |v: &Value, k: &str| v[k].as_u64();
    f.equal(
        "status instance total",
        num(&inst, "total"),
        Some(t.connections),
    );
    f.equal("status instance open", num(&inst, "open"), Some(0));
    f.equal(
        "status instance bytes_sent",
        num(&inst, "bytes_sent"),
        Some(t.sent),
    );
    let got = num(&inst, "bytes_received");
    f.equal("status instance bytes_received", got, Some(t.received));
    f.equal(
        "status instance health",
        inst["health"].as_str(),
        Some("healthy"),
    );
    let rtt = inst["rtt_ms"].as_f64();
    f.check(rtt.is_some_and(|r| r > 0.0), || {
        format!("status instance rtt_ms: {}", inst["rtt_ms"])
    });

    let prov = s.node_status(&s.provider.name).expect("provider in status");
    let announce = prov["announce"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["service"] == "redis"))
        .cloned()
        .unwrap_or_default();
    let got = num(&announce, "accepted_streams");
    f.equal("status announce accepted_streams", got, Some(t.connections));
    let got = num(&announce, "bytes_received");
    f.equal("status announce bytes_received", got, Some(t.sent));
    f.equal(
        "status announce target_up",
        announce["target_up"].as_bool(),
        Some(true),
    );

    // The admin endpoint's /status is the same node object as status --json.
    let cons = s.node_status(&s.consumer.name).expect("consumer in status");
    let (code, body) = http_get(s.consumer.admin, "/status");
    f.equal("/status code", code, 200);
    let admin: Value = serde_json::from_str(&body).unwrap_or_default();
    // `--congestion auto` (the default) follows the host's TCP: loss-tolerant on BBR.
    let host_tcp = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control");
    let expected = match host_tcp.as_deref().map(str::trim) {
        Ok(cc) if cc.starts_with("bbr") => "loss-tolerant",
        _ => "cubic",
    };
    f.equal(
        "congestion control (auto)",
        cons["congestion"].as_str(),
        Some(expected),
    );
    for k in [
        "node",
        "mesh",
        "quic",
        "congestion",
        "pid",
        "version",
        "started_unix",
    ] {
        f.equal(
            &format!("/status {k} vs status --json"),
            &admin[k],
            &cons[k],
        );
    }
    let fp = |v: &Value| v["certificate"]["fingerprint"].clone();
    f.equal(
        "/status certificate vs status --json",
        fp(&admin),
        fp(&cons),
    );
    let counts = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
        let instances = v["connect"][0]["instances"].as_array().cloned();
        instances
            .unwrap_or_default()
            .iter()
            .map(|i| {
                let n = i["node"].clone();
                (
                    n,
                    i["total"].clone(),
                    i["bytes_sent"].clone(),
                    i["bytes_received"].clone(),
                )
            })
            .collect()
    };
    f.equal(
        "/status instances vs status --json",
        counts(&admin),
        counts(&cons),
    );

    // The table fits a terminal and names the provider.
    let mut cmd = command(s.home());
    cmd.arg("status");
    let out = run(cmd, Duration::from_secs(10));
    f.equal("status exit code", out.code(), 0);
    for line in out.stdout.lines().filter(|l| l.chars().count() > 80) {
        f.check(false, || {
            format!(
                "status line of {} chars (> 80): {line:?}",
                line.chars().count()
            )
        });
    }
    f.check(out.stdout.contains(&s.provider.name), || {
        format!("status table without {}:\n{}", s.provider.name, out.stdout)
    });
    let said = format!("congestion control: {expected}");
    f.check(out.stdout.contains(&said), || {
        format!("status table without {said:?}:\n{}", out.stdout)
    });
}

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless chromium on `url` with `extra` flags (`--dump-dom`, `--screenshot=..`) and a
/// throw-away profile; returns what it printed.
fn chromium(s: &Setup, extra: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().expect("browser profile dir");
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .env("HOME", s.home());
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code(), 0, "chromium failed: {}", out.stderr);
    out.stdout
}

/// The start tags `<TAG ...>` of `html`, each with what follows up to its `</TAG>`.
fn elements<'a>(html: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = html[at..].find(&open).map(|i| at + i) {
        at = i + open.len();
        if !html[at..].starts_with([' ', '>', '\n', '\t']) {
            continue; // a longer tag name
        }
        let Some(end) = html[at..].find('>').map(|e| at + e) else {
            break;
        };
        let body_end = html[end..].find(&close).map_or(html.len(), |e| end + e);
        out.push((&html[i..=end], &html[end + 1..body_end]));
        at = end;
    }
    out
}

/// An attribute of a start tag (as a browser serialises it: double-quoted).
fn attr(tag: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let start = tag.find(&pat)? + pat.len();
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

fn has_class(tag: &str, class: &str) -> bool {
    attr(tag, "class").is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

/// Text content: the markup without its tags, trimmed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&").trim().to_string()
}

/// The element with `id`, as (start tag, inner markup), whatever its tag.
fn by_id<'a>(html: &'a str, id: &str) -> Option<(&'a str, &'a str)> {
    let pat = format!(" id=\"{id}\"");
    let at = html.find(&pat)?;
    let start = html[..at].rfind('<')?;
    let name_end = start + 1 + html[start + 1..].find([' ', '>'])?;
    let name = &html[start + 1..name_end];
    elements(&html[start..], name).into_iter().next()
}

/// Check 3: The admin page, rendered by a real browser, shows the same numbers.
fn page_shows_the_traffic(s: &Setup, f: &mut Findings, t: &Traffic) {
    if !Path::new(CHROMIUM).exists() {
        println!("SKIPPED: chromium not installed (the admin page check)");
        return;
    }
    let url = format!("http://127.0.0.1:{}/", s.consumer.admin);
    let dom = chromium(s, &["--dump-dom".into()], &url);
    let what = |w: &str| format!("admin page (chromium --dump-dom {url}): {w}");

    // A picture for people, kept out of the repository.
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observability-page.png");
    let _ = std::fs::remove_file(&png);
    let extra = [
        format!("--screenshot={}", png.display()),
        "--window-size=1200,900".to_string(),
    ];
    chromium(s, &extra, &url);
    let bytes = std::fs::read(&png).unwrap_or_default();
    f.check(bytes.starts_with(b"\x89PNG"), || {
        what(&format!("no PNG screenshot at {}", png.display()))
    });
    eprintln!("admin page screenshot: {}", png.display());

    let node = by_id(&dom, "node").map(|(_, inner)| text(inner));
    f.check(
        node.as_ref().is_some_and(|n| n.contains(&s.consumer.name)),
        || what(&format!("#node is {node:?}, not {}", s.consumer.name)),
    );
    for id in ["mesh", "uptime"] {
        f.check(by_id(&dom, id).is_some(), || what(&format!("no #{id}")));
    }
    let row = elements(&dom, "tr").into_iter().find(|(tag, _)| {
        has_class(tag, "instance")
            && attr(tag, "data-service").as_deref() == Some("redis")
            && attr(tag, "data-node").as_deref() == Some(s.provider.name.as_str())
    });
    let Some((_, row)) = row else {
        let rows: Vec<&str> = elements(&dom, "tr").iter().map(|(tag, _)| *tag).collect();
        return f.check(false, || {
            what(&format!(
                "no tr.instance[data-service=redis][data-node={}]; rows: {rows:?}",
                s.provider.name
            ))
        });
    };
    let cells = elements(row, "td");
    let cell = |class: &str| cells.iter().find(|(tag, _)| has_class(tag, class));
    let cell_text = |class: &str| cell(class).map(|(_, inner)| text(inner));
    let cell_bytes = |class: &str| cell(class).and_then(|(tag, _)| attr(tag, "data-bytes"));
    let want = t.connections.to_string();
    f.equal(&what("td.total"), cell_text("total"), Some(want));
    f.equal(&what("td.open"), cell_text("open"), Some("0".into()));
    let got = cell_bytes("bytes-sent");
    f.equal(
        &what("td.bytes-sent[data-bytes]"),
        got,
        Some(t.sent.to_string()),
    );
    let got = cell_bytes("bytes-received");
    f.equal(
        &what("td.bytes-received[data-bytes]"),
        got,
        Some(t.received.to_string()),
    );
    let health = cell_text("health");
    f.check(
        health.as_ref().is_some_and(|h| h.contains("healthy")),
        || what(&format!("td.health is {health:?}")),
    );
}

/// Check 4: A target that goes down is shown, and the connection it costs is counted.
fn target_down_is_counted(s: &mut Setup, f: &mut Findings) {
    s.redis.stop();
    let down = poll(SETTLE, || {
        let up = Scrape::of(s.provider.admin).one("ambassador_target_up", REDIS);
        (up == Some(0.0)).then_some(())
    });
    f.check(down.is_some(), || {
        format!("provider ambassador_target_up{{service=redis}} not 0 within {SETTLE:?} of stopping Redis")
    });
    let announce = s.node_status(&s.provider.name).expect("provider in status");
    let up = announce["announce"][0]["target_up"].as_bool();
    f.equal(
        "status announce target_up after Redis stopped",
        up,
        Some(false),
    );
    // The consumer shows the instance as down (its node says so), still with its node.
    let shown = poll(SETTLE, || {
        let i = s.consumer_instance()?;
        (i["health"] == "down").then_some(i)
    });
    f.check(
        shown
            .as_ref()
            .is_some_and(|i| i["node"] == s.provider.name.as_str()),
        || format!("consumer status does not show the instance down with its node: {shown:?}"),
    );
    let healthy = Scrape::of(s.consumer.admin).one("ambassador_instance_healthy", REDIS);
    f.equal(
        "consumer ambassador_instance_healthy while down",
        healthy,
        Some(0.0),
    );

    let (c0, p0) = (Scrape::of(s.consumer.admin), Scrape::of(s.provider.admin));
    let lost = |c: &Scrape| {
        c.count("ambassador_connections_dropped_total", REDIS)
            + c.count("ambassador_connections_failed_total", REDIS)
    };
    let mut c = client(s.listen);
    let _ = c.write_all(&resp(&[b"PING"])); // may fail once the connection is closed
    let (data, _) = read_to_end(&mut c);
    f.check(data.is_empty(), || {
        format!("a client got {data:?} from a down target")
    });
    let counted = poll(SETTLE, || {
        let c1 = Scrape::of(s.consumer.admin);
        (lost(&c1) > lost(&c0)).then_some(c1)
    });
    f.check(counted.is_some(), || {
        "consumer ambassador_connections_dropped_total + _failed_total did not rise for a connection to a down target".into()
    });
    let p1 = Scrape::of(s.provider.admin);
    let streams = |p: &Scrape, outcome: &str| {
        p.count(
            "ambassador_provider_streams_total",
            &[("service", "redis"), ("outcome", outcome)],
        )
    };
    let moved = |outcome: &str| streams(&p1, outcome) - streams(&p0, outcome);
    f.equal(
        "provider streams accepted for a down target",
        moved("accepted"),
        0,
    );
    // The consumer learns the target's health from the provider and does not even try it;
    // a stream that reaches the provider all the same is refused as target_down, nothing else.
    let total = p1.count("ambassador_provider_streams_total", REDIS)
        - p0.count("ambassador_provider_streams_total", REDIS);
    f.equal(
        "provider streams refused for another reason than target_down",
        total - moved("target_down"),
        0,
    );
}

/// Check 5: `/healthz` answers 503 `draining` while the consumer drains an open connection, and
/// the node exits 0 once it ends.
fn healthz_turns_503_while_draining(s: &mut Setup, f: &mut Findings) {
    s.redis.restart();
    // Back in rotation: a PING goes through again.
    let ping = resp(&[b"PING"]);
    let held = poll(READY, || {
        let mut c = TcpStream::connect(s.listen).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(&ping).ok()?;
        let mut reply = [0u8; 7];
        c.read_exact(&mut reply).ok()?;
        (&reply == b"+PONG\r\n").then_some(c)
    });
    let Some(held) = held else {
        return f.check(false, || {
            format!("no PING through the consumer within {READY:?} of restarting Redis")
        });
    };
    let (code, body) = http_get(s.consumer.admin, "/healthz");
    f.equal("/healthz while serving", (code, body.trim()), (200, "ok"));

    s.consumer.proc.signal("TERM");
    let draining = poll(SETTLE, || {
        let (code, body) = http_get(s.consumer.admin, "/healthz");
        (code == 503).then_some(body)
    });
    match &draining {
        Some(body) => f.check(body.contains("draining"), || {
            format!("/healthz 503 body: {body:?}")
        }),
        None => f.check(false, || {
            format!("/healthz not 503 within {SETTLE:?} of SIGTERM")
        }),
    }
    let gauge = Scrape::of(s.consumer.admin).one("ambassador_draining", &[]);
    f.equal("ambassador_draining while draining", gauge, Some(1.0));
    f.check(s.consumer.proc.try_wait().is_none(), || {
        "the consumer exited while a connection was open (drain timeout 20s)".into()
    });
    drop(held);
    let exit = s.consumer.proc.wait_exit(Duration::from_secs(10));
    f.equal(
        "consumer exit code after its last connection closed",
        exit.and_then(|st| st.code()),
        Some(0),
    );
}

/// Check 6: `--log-format json` writes one JSON object per line, and a connection's lines
/// carry its service, peer node and connection id as top-level keys.
fn json_logs_name_service_peer_and_connection(s: &Setup, f: &mut Findings) {
    let node = unique("json");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut cmd = s.mesh.node_command("connect", &node);
    cmd.arg(format!("redis={listen}"))
        .args(["--log-format", "json", "-v"]);
    let p = Proc::spawn(&format!("connect {node} (json logs)"), cmd);
    p.expect_log(&["\"message\":\"listening\""], READY);
    let ping = resp(&[b"PING"]);
    let answered = poll(READY, || {
        let mut c = client(listen);
        c.write_all(&ping).ok()?;
        c.shutdown(Shutdown::Write).ok()?;
        let (data, _) = read_to_end(&mut c);
        (data == b"+PONG\r\n").then_some(())
    });
    f.check(answered.is_some(), || {
        format!(
            "no PONG through the json-logging consumer; log:\n{}",
            p.log()
        )
    });
    let closed = p.find_log(&["\"message\":\"closed\""], READY);
    let line: Option<Value> = closed.as_deref().and_then(|l| serde_json::from_str(l).ok());
    f.check(
        line.as_ref().is_some_and(|l| {
            l["service"] == "redis"
                && l["peer"] == s.provider.name.as_str()
                && l["conn"].as_u64().is_some()
                && l["level"] == "DEBUG"
        }),
        || format!("the connection's close line lacks service/peer/conn: {closed:?}"),
    );
    let log = p.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).map_or(true, |v| !v.is_object()))
        .collect();
    f.check(bad.is_empty(), || {
        format!("log lines that are not one JSON object each: {bad:?}")
    });
}

#[test]
fn metrics_status_page_and_healthz_show_what_happens() {
    let started = Instant::now();
    let mut s = Setup::start();
    let mut f = Findings::default();
    let traffic = metrics_count_the_traffic(&s, &mut f);
    status_matches_the_traffic(&s, &mut f, &traffic);
    page_shows_the_traffic(&s, &mut f, &traffic);
    json_logs_name_service_peer_and_connection(&s, &mut f);
    target_down_is_counted(&mut s, &mut f);
    healthz_turns_503_while_draining(&mut s, &mut f);
    eprintln!("observability checks took {:?}", started.elapsed());
    f.report();
}

/// The helpers read the hooks the page promises and the text format as written, so that a
/// failed page check is the page's, not the parser's.
#[test]
fn the_page_and_metrics_readers_find_the_hooks() {
    let dom = r#"<html><body><h1 id="node">cons-1</h1><span id="mesh">ab12</span>
<table><tr><th>x</th></tr><tr class="instance ok" data-service="redis" data-node="prov-1">
<td class="open">0</td><td class="total"> 5 </td><td class="bytes-sent" data-bytes="15165">14.8 KiB</td>
<td class="health"><b>healthy</b></td></tr><tr class="announce" data-service="redis"><td class="accepted">5</td></tr></table></body></html>"#;
    assert_eq!(
        by_id(dom, "node").map(|(_, i)| text(i)),
        Some("cons-1".into())
    );
    assert!(by_id(dom, "uptime").is_none());
    let rows = elements(dom, "tr");
    assert_eq!(rows.len(), 3);
    let (tag, row) = rows[1];
    assert!(has_class(tag, "instance") && !has_class(tag, "announce"));
    assert_eq!(attr(tag, "data-node").as_deref(), Some("prov-1"));
    let cells = elements(row, "td");
    let total = cells.iter().find(|(t, _)| has_class(t, "total"));
    assert_eq!(total.map(|(_, i)| text(i)), Some("5".into()));
    let sent = cells.iter().find(|(t, _)| has_class(t, "bytes-sent"));
    assert_eq!(
        sent.and_then(|(t, _)| attr(t, "data-bytes")),
        Some("15165".into())
    );
    let health = cells.iter().find(|(t, _)| has_class(t, "health"));
    assert_eq!(health.map(|(_, i)| text(i)), Some("healthy".into()));

    let m = Scrape(parse_metrics(
        "# TYPE a counter\na_total{service=\"redis\",instance=\"x\\\"y\"} 3\na_total{service=\"redis\",instance=\"z\"} 4\nb 1.5e3\n",
    ));
    assert_eq!(m.count("a_total", REDIS), 7);
    assert_eq!(m.one("a_total", &[("instance", "x\"y")]), Some(3.0));
    assert_eq!(m.one("a_total", REDIS), None);
    assert_eq!(m.one("b", &[]), Some(1500.0));
}
