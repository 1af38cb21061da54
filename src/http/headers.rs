//! What the front changes in a request before the application sees it: hop-by-hop headers
//! go, `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Via` come, and an
//! HTTP/2 request becomes the HTTP/1.1 request the application is spoken to in.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Uri, Version};

use crate::names::HostName;

/// Headers that concern one connection only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The host a request is for: HTTP/2's `:authority` (the URI's), else `Host`.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<HostName> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let host = authority.or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })?;
    HostName::of_request(&host)
}

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header: a WebSocket).
pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
}

/// Appends `value` to the comma-separated header `name`.
fn append(h: &mut HeaderMap, name: &'static str, value: &str) {
    let joined = match h.get(name).and_then(|v| v.to_str().ok()) {
        Some(old) => format!("{old}, {value}"),
        None => value.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(name, v);
    }
}

/// Makes `req` the request the application gets: HTTP/1.1 with an origin-form target and its
/// `Host`; hop-by-hop headers stripped (an upgrade's `Connection: upgrade` and `Upgrade`
/// kept); forwarding headers added.
pub(super) fn prepare<B>(req: &mut Request<B>, client: SocketAddr, host: &HostName, upgrade: bool) {
    let version = req.version();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| host.to_string());
    let upgrade_to = req.headers().get(header::UPGRADE).cloned();
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    h.remove(header::UPGRADE);
    if upgrade && let Some(to) = upgrade_to {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, to);
    }
    if let Ok(v) = HeaderValue::from_str(&authority) {
        h.insert(header::HOST, v);
    }
    append(h, "x-forwarded-for", &client.ip().to_string());
    if !h.contains_key("x-forwarded-host") {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            h.insert("x-forwarded-host", v);
        }
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let via = match version {
        Version::HTTP_2 => "2 ambassador",
        Version::HTTP_10 => "1.0 ambassador",
        _ => "1.1 ambassador",
    };
    append(h, "via", via);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = path.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Makes the application's response the client's: hop-by-hop headers stripped (a 101 keeps
/// its `Connection: upgrade` and `Upgrade`), the client's HTTP version, and `Via`.
pub(super) fn prepare_response<B>(resp: &mut hyper::Response<B>, version: Version) {
    let switching = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
    let upgrade_to = resp.headers().get(header::UPGRADE).cloned();
    let from = resp.version();
    let h = resp.headers_mut();
    strip_hop_by_hop(h);
    h.remove(header::UPGRADE);
    if switching && let Some(to) = upgrade_to {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, to);
    }
    let via = if from == Version::HTTP_10 {
        "1.0 ambassador"
    } else {
        "1.1 ambassador"
    };
    append(h, "via", via);
    *resp.version_mut() = version;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_made_ready_for_the_application() {
        let mut req = Request::builder()
            .uri("/a?b=1")
            .header("host", "Blog.Example.com:8080")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let host = request_host(&req).unwrap();
        assert_eq!(host.as_str(), "blog.example.com");
        prepare(&mut req, "192.0.2.7:5000".parse().unwrap(), &host, false);
        let h = req.headers();
        assert!(!h.contains_key("connection") && !h.contains_key("keep-alive"));
        assert!(!h.contains_key("x-secret-hop"), "named by Connection");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "Blog.Example.com:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 ambassador");
        assert_eq!(h["host"], "Blog.Example.com:8080");
        assert_eq!(req.uri(), "/a?b=1");
    }

    #[test]
    fn an_http2_request_becomes_http11_with_its_authority_as_host() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://www.blog.example.com./x")
            .body(())
            .unwrap();
        let host = request_host(&req).unwrap();
        assert_eq!(host.as_str(), "www.blog.example.com");
        prepare(&mut req, "192.0.2.7:5000".parse().unwrap(), &host, false);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()["host"], "www.blog.example.com.");
        assert_eq!(req.headers()["via"], "2 ambassador");
    }

    #[test]
    fn a_websocket_upgrade_keeps_its_headers() {
        let mut req = Request::builder()
            .uri("/ws")
            .header("host", "chat")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&req));
        let host = request_host(&req).unwrap();
        prepare(&mut req, "192.0.2.7:5000".parse().unwrap(), &host, true);
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(req.headers()["upgrade"], "websocket");
    }
}
