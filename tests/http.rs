//! The HTTP front on loopback, black-box: two applications (real Python HTTP servers) behind
//! two providers, one front. Routing by host, keep-alive across hosts, h2c, forwarding headers,
//! 404 and 503, credentials injection, and the requests counted in `/metrics`. The multi-host
//! cases (nginx, WebSocket, 1 GiB each way, a killed provider) are in netns-tests/http.rs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mesh, Proc, READY, free_tcp_port, unique};

/// A Python HTTP/1.1 server that answers every GET with a JSON object of its name, the path
/// and the request's headers, and an `Authorization: leak` response header.
const ECHO: &str = r#"
import http.server, json, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            import time
            time.sleep(3)
        body = json.dumps({"name": name, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Authorization", "leak")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// A child process killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server(name: &str) -> (Server, u16) {
    let port = free_tcp_port();
    let child = Command::new("python3")
        .args(["-c", ECHO, name, &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + READY;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the {name} server does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), port)
}

/// `curl -s -i ARGS...`: the whole response (head and body).
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON body of a response.
fn body(resp: &str) -> serde_json::Value {
    let (_, b) = resp.split_once("\r\n\r\n").unwrap_or(("", ""));
    serde_json::from_str(b).unwrap_or(serde_json::Value::Null)
}

/// Polls `f` until it is true or `READY` passes.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + READY;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Two requests for different hosts on one client connection (Python's http.client): the
/// names of the servers that answered, and whether the connection stayed the same.
fn keep_alive(port: u16) -> String {
    let script = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
names = []
for host in ["blog.example.com", "shop.example.com", "blog.example.com"]:
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    import json
    names.append(json.loads(r.read())["name"])
    if r.getheader("connection", "").lower() == "close":
        names.append("closed")
print(",".join(names), c.sock is not None)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the tests share: two applications, a down one, and the front with its admin port.
struct Setup {
    _nodes: Vec<Proc>,
    _servers: Vec<Server>,
    front: u16,
    admin: u16,
    _mesh: Mesh,
}

fn setup() -> Setup {
    let mesh = Mesh::new();
    let (blog, blog_port) = echo_server("blog");
    let (shop, shop_port) = echo_server("shop");
    let headers = mesh.dir.path().join("shop.headers");
    std::fs::write(&headers, "Authorization: Bearer s3cret-token\n").unwrap();
    std::fs::set_permissions(&headers, std::fs::Permissions::from_mode(0o600)).unwrap();
    let blog_node = mesh.announce(
        &unique("blog"),
        &[format!("blog=127.0.0.1:{blog_port}")],
        &["--http-host", "blog.example.com"],
    );
    let shop_node = mesh.announce(
        &unique("shop"),
        &[format!("shop=127.0.0.1:{shop_port}")],
        &[
            "--http-host",
            "shop.example.com",
            "--http-header-file",
            headers.to_str().unwrap(),
        ],
    );
    // Announced, but nothing listens on its target: down.
    let gone = free_tcp_port();
    let down_node = mesh.announce(
        &unique("down"),
        &[format!("down=127.0.0.1:{gone}")],
        &["--http-host", "down.example.com"],
    );
    let (front, admin) = (free_tcp_port(), free_tcp_port());
    let mut cmd = mesh.node_command("connect", &unique("front"));
    cmd.args(["--http", &front.to_string(), "--admin", &admin.to_string()])
        .args(["--http-timeout", "700ms"]);
    let front_node = Proc::spawn("connect --http", cmd);
    front_node.expect_log(&["HTTP front"], READY);
    let s = Setup {
        _nodes: vec![blog_node, shop_node, down_node, front_node],
        _servers: vec![blog, shop],
        front,
        admin,
        _mesh: mesh,
    };
    let url = s.url();
    let routed = eventually(|| {
        ["blog", "shop"].iter().all(|app| {
            let host = format!("Host: {app}.example.com");
            body(&curl(&["-H", &host, &url]))["name"] == *app
        })
    });
    assert!(routed, "the front does not route to both applications");
    s
}

impl Setup {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.front)
    }
}

#[test]
fn the_http_front_routes_by_host_and_answers_clearly() {
    let s = setup();
    let url = s.url();
    // Case, a trailing dot and the port do not matter.
    let r = curl(&[
        "-H",
        "Host: BLOG.Example.com.:8080",
        &format!("{url}a/b?c=1"),
    ]);
    let b = body(&r);
    assert_eq!(b["name"], "blog", "{r}");
    assert_eq!(b["path"], "/a/b?c=1");
    // Forwarding headers.
    let h = &b["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{r}");
    assert_eq!(h["x-forwarded-host"], "BLOG.Example.com.:8080");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["via"].as_str().is_some_and(|v| v.contains("ambassador")));
    // Keep-alive: three requests, two hosts, one connection.
    assert_eq!(keep_alive(s.front), "blog,shop,blog True");
    // HTTP/2 cleartext with prior knowledge.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args([
            "--http2-prior-knowledge",
            "-H",
            "Host: shop.example.com",
            &url,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    // Injected credentials: the application gets them (the client's own replaced), the
    // client never sees them.
    let r = curl(&[
        "-H",
        "Host: shop.example.com",
        "-H",
        "Authorization: forged",
        &url,
    ]);
    assert_eq!(
        body(&r)["headers"]["authorization"],
        "Bearer s3cret-token",
        "{r}"
    );
    let head = r
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(!head.contains("authorization"), "{head}");
    // No application for the host: 404, naming no announced host.
    let r = curl(&["-H", "Host: nothing.example.com", &url]);
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(
        !r.contains("blog.example.com") && !r.contains("shop"),
        "{r}"
    );
    // An application with no healthy instance: 503 with Retry-After.
    let r = curl(&["-H", "Host: down.example.com", &url]);
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: 1"), "{r}");
    // No response head within --http-timeout: 504.
    let r = curl(&["-H", "Host: blog.example.com", &format!("{url}slow")]);
    assert!(r.starts_with("HTTP/1.1 504"), "{r}");
    // Every answer is counted, by application and status class.
    let metrics = curl(&[&format!("http://127.0.0.1:{}/metrics", s.admin)]);
    let count = |needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("ambassador_http_requests_total{") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(count(r#"app="blog""#) >= 4.0, "{metrics}");
    assert!(
        count(r#"app="",instance="",class="4xx""#) >= 1.0,
        "{metrics}"
    );
    assert!(
        count(r#"app="down",instance="",class="5xx""#) >= 1.0,
        "{metrics}"
    );
}
