//! HTTP credentials injection (`announce --http-header-file FILE`): the provider adds headers
//! (an `Authorization: Bearer ...`) to every request its application gets, so the credentials
//! stay on the application's host. The client never sees them: they are not in any response,
//! nor in a log, status or metric. The stream is then spoken HTTP/1.1 (hyper) on both sides
//! instead of spliced; an upgrade is spliced after its 101.

use std::path::Path;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use quinn::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tracing::debug;

use crate::proxy::stream_io::StreamIo;
use crate::secret_file::{SecretFileError, read_secret};

/// The headers injected into an application's requests. `Debug` shows their names only.
#[derive(Clone)]
pub struct HttpHeaders(Vec<(HeaderName, HeaderValue)>);

impl std::fmt::Debug for HttpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "HttpHeaders({names:?}, values hidden)")
    }
}

impl HttpHeaders {
    /// Parses `Name: value` lines (blank lines and `#` comments skipped); `shown` names the
    /// file in errors, which never quote a value.
    pub fn parse(text: &str, shown: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("{shown}:{}: expected `Name: value`", n + 1);
            let (name, value) = line.split_once(':').ok_or_else(bad)?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
            value.set_sensitive(true);
            out.push((name, value));
        }
        if out.is_empty() {
            return Err(format!("{shown}: no `Name: value` line"));
        }
        Ok(Self(out))
    }

    /// Reads a header file: a secret, so only its owner may read it (unless `insecure`).
    pub fn read_file(path: &Path, insecure: bool) -> Result<Self, String> {
        let shown = path.display().to_string();
        let text = read_secret(path, insecure).map_err(|e| match e {
            SecretFileError::Read(e) => format!("cannot read {shown}: {e}"),
            SecretFileError::Permissions(mode) => format!(
                "{shown} is readable by others (mode {mode:o}): chmod 600 it, or give --insecure-key-permissions"
            ),
        })?;
        Self::parse(&text, &shown)
    }

    /// Adds the headers to a request (replacing what the client sent under those names).
    fn add<B>(&self, req: &mut Request<B>) {
        for (name, value) in &self.0 {
            req.headers_mut().insert(name.clone(), value.clone());
        }
    }

    /// Removes the headers from a response (an application that echoes them back).
    fn hide<B>(&self, resp: &mut Response<B>) {
        for (name, _) in &self.0 {
            resp.headers_mut().remove(name);
        }
    }
}

/// Serves one stream as HTTP/1.1, each request sent on to `tcp` (the application) with the
/// headers added, until either side closes.
pub(crate) async fn serve(
    tcp: TcpStream,
    send: SendStream,
    recv: RecvStream,
    headers: Arc<HttpHeaders>,
) {
    let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(c) => c,
        Err(e) => return debug!(error = %e, "HTTP to the application failed"),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "application connection ended");
        }
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let (sender, headers) = (sender.clone(), headers.clone());
        async move {
            headers.add(&mut req);
            let client_side = hyper::upgrade::on(&mut req);
            let mut resp = {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req).await?
            };
            headers.hide(&mut resp);
            if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                let app_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(crate::http::splice_upgrade(client_side, app_side));
            }
            Ok::<_, hyper::Error>(resp)
        }
    });
    let io = TokioIo::new(StreamIo { send, recv });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(error = %e, "HTTP stream ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_files_parse_and_never_show_values() {
        let h = HttpHeaders::parse(
            "# app token\nAuthorization: Bearer s3cret\nX-Team: a\n",
            "f",
        )
        .unwrap();
        assert_eq!(h.0.len(), 2);
        assert!(!format!("{h:?}").contains("s3cret"));
        let e = HttpHeaders::parse("Authorization Bearer s3cret", "f").unwrap_err();
        assert!(e.contains("f:1") && !e.contains("s3cret"), "{e}");
        assert!(HttpHeaders::parse("\n# nothing\n", "f").is_err());
        let mut req = Request::builder()
            .header("authorization", "forged")
            .body(())
            .unwrap();
        h.add(&mut req);
        assert_eq!(req.headers()["authorization"], "Bearer s3cret");
        let mut resp = Response::builder()
            .header("authorization", "Bearer s3cret")
            .body(())
            .unwrap();
        h.hide(&mut resp);
        assert!(!resp.headers().contains_key("authorization"));
    }
}
