//! The etcd registry (`--registry etcd://H:P[,H:P]`), beyond one LAN: where it is and how to
//! log in ([`RegistryConfig`]), the client ([`connect`]), one prefix followed by a watch that
//! resumes after a reconnect ([`follow`]), and its two readers: the mesh's own records
//! ([`mesh`], which feeds the registry of instances as mDNS does) and dynamic-ambassador's
//! `/services/...` keys ([`seed`], plain TCP backends). The layout is in [`value`]; the
//! publisher is the node's (`node::registry_publish`).

pub mod mesh;
pub mod seed;
pub mod value;

use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, WatchOptions,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The etcd endpoint of `--discover etcd-keys:...` when no `--registry` is given.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// How long one request (a get, a put, a lease grant) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A secret (a password, a private key) whose `Debug` prints a mask.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// TLS towards etcd: the CA that signs its certificate, and a client certificate if etcd asks
/// for one (PEM texts, read when the configuration is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTls {
    /// The CA certificate(s) etcd's certificate chains to (default: none, the system's are
    /// not used).
    pub ca: Option<String>,
    /// A client certificate and its key.
    pub identity: Option<(String, Secret)>,
}

/// Where the etcd registry is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Its endpoints, `HOST:PORT`.
    pub endpoints: Vec<String>,
    /// TLS (the endpoints are then `https`), if given.
    pub tls: Option<RegistryTls>,
    /// User name and password, if etcd has authentication on.
    pub user: Option<(String, Secret)>,
}

impl RegistryConfig {
    /// The registry on `endpoints`, without TLS or a user.
    pub fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            user: None,
        }
    }

    /// The endpoints as URLs.
    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }

    /// The URL of the endpoint whose turn `turn` is (they take turns in their order).
    fn url_of_turn(&self, turn: usize) -> String {
        let urls = self.urls();
        urls.get(turn % urls.len().max(1))
            .cloned()
            .unwrap_or_default()
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` (each item may repeat the scheme) into `HOST:PORT`
/// endpoints; `None` when it is not that.
pub fn parse_endpoints(text: &str) -> Option<Vec<String>> {
    let rest = text.trim().strip_prefix("etcd://")?;
    let mut out = Vec::new();
    for item in rest.split(',') {
        let item = item.trim();
        let item = item.strip_prefix("etcd://").unwrap_or(item);
        let (host, port) = item.rsplit_once(':')?;
        let host_ok = !host.is_empty()
            && host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
        if !host_ok || port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return None;
        }
        out.push(item.to_string());
    }
    Some(out)
}

/// A client of the registry on one of its endpoints, the one whose turn `turn` is. A session
/// (a watch, a lease) keeps to one member and the next session after a failure takes the next
/// one, so a dead member costs one failed attempt: a client of every endpoint balances each
/// request over all of them, the dead one included, and a session of several requests then
/// fails again and again. Without a user it connects lazily: an endpoint that is down shows at
/// the first request.
pub async fn connect(cfg: &RegistryConfig, turn: usize) -> Result<Client, etcd_client::Error> {
    connect_urls(cfg, vec![cfg.url_of_turn(turn)]).await
}

/// A random first turn among the endpoints, so that nodes spread over the members.
pub fn first_turn() -> usize {
    use std::hash::{BuildHasher, Hasher};
    // Truncation intended: any bits of a randomly keyed hash will do.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as usize
}

/// A client of `urls`, as `cfg` says to log in.
async fn connect_urls(
    cfg: &RegistryConfig,
    urls: Vec<String>,
) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // A registry gone silent (a cut link) is noticed within seconds, not at TCP's pace;
        // etcd answers pings more often than every 5 s, or without a stream, by closing the
        // connection ("too many pings").
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some((user, password)) = &cfg.user {
        opts = opts
            .with_user(user.clone(), password.0.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, &key.0));
        }
        opts = opts.with_tls(t);
    }
    Client::connect(urls, Some(opts)).await
}

/// What a reader of a prefix does with its keys.
pub trait Sink: Send {
    /// Every key under the prefix now (a full read): replaces what it holds.
    fn replace(&mut self, kvs: &[KeyValue]);
    /// A key was put.
    fn put(&mut self, kv: &KeyValue);
    /// A key was deleted (or its lease expired).
    fn delete(&mut self, key: &str);
}

/// Why following a prefix stopped (and starts again).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A request or the watch failed (etcd unreachable, refused...).
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    /// A request took longer than [`REQUEST_TIMEOUT`].
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The watch stream ended.
    #[error("the watch ended")]
    Ended,
}

/// A request bounded by [`REQUEST_TIMEOUT`].
pub async fn bounded<T>(
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FollowError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FollowError::Timeout),
    }
}

/// Retry pauses: from 250 ms, doubling, at most 4 s (well within a lease's 10 s).
#[derive(Debug, Clone)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Self::FIRST)
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);

    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        now
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Where a follower is: the last revision it has seen (0: none yet, read everything), and the
/// highest raft term.
struct Follower<'a, S> {
    cfg: &'a RegistryConfig,
    prefix: &'a str,
    sink: S,
    revision: i64,
    term: u64,
    /// Whose turn it is among the endpoints (the next one after a failure).
    turn: usize,
}

/// Keeps `sink` equal to the keys under `prefix` until `cancel` fires: a full read, then one
/// watch from the next revision. After a failure the sink keeps what it holds (consumers go on
/// with the instances they know) and the watch resumes where it stopped; a compacted revision
/// or a wiped store (its revision or raft term went back) means a full read again.
pub async fn follow<S: Sink>(
    cfg: RegistryConfig,
    prefix: String,
    sink: S,
    cancel: CancellationToken,
) {
    let mut f = Follower {
        cfg: &cfg,
        prefix: &prefix,
        sink,
        revision: 0,
        term: 0,
        turn: first_turn(),
    };
    let mut backoff = Backoff::default();
    loop {
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            o = f.session(&mut backoff) => o,
        };
        let pause = backoff.pause();
        match outcome {
            Ok(()) => continue,
            Err(e) => {
                f.turn = f.turn.wrapping_add(1);
                warn!(prefix = %prefix, error = %e, retry_in = ?pause, "etcd registry unreachable or refused: keeping the instances known, retrying")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

impl<S: Sink> Follower<'_, S> {
    /// One connection: catch up, then watch until it fails (`Err`) or a full read is needed
    /// (`Ok`: start again at once).
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), FollowError> {
        let mut client = connect(self.cfg, self.turn).await?;
        self.catch_up(&mut client).await?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut stream = bounded(client.watch(self.prefix.to_string(), Some(opts))).await?;
        info!(prefix = %self.prefix, revision = self.revision, "watching the etcd registry");
        backoff.reset();
        while let Some(resp) = stream.message().await? {
            self.term = self.term.max(resp.header().map_or(0, |h| h.raft_term()));
            if resp.canceled() {
                let compacted = resp.compact_revision();
                info!(prefix = %self.prefix, compacted, "etcd watch cancelled (revision compacted?): reading everything again");
                self.revision = 0;
                return Ok(());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    etcd_client::EventType::Put => self.sink.put(kv),
                    etcd_client::EventType::Delete => self.sink.delete(&key_text(kv)),
                }
                self.revision = self.revision.max(kv.mod_revision());
            }
        }
        Err(FollowError::Ended)
    }

    /// Reads everything when nothing was seen yet or the store went back (its data wiped);
    /// else the watch resumes from the revision seen last.
    async fn catch_up(&mut self, client: &mut Client) -> Result<(), FollowError> {
        if self.revision > 0 {
            let probe = GetOptions::new().with_prefix().with_count_only();
            let now = bounded(client.get(self.prefix.to_string(), Some(probe))).await?;
            let (store, term) = now
                .header()
                .map_or((0, 0), |h| (h.revision(), h.raft_term()));
            if store >= self.revision && term >= self.term {
                debug!(prefix = %self.prefix, from = self.revision, "resuming the etcd watch");
                return Ok(());
            }
            info!(prefix = %self.prefix, store, seen = self.revision, term, seen_term = self.term, "the etcd store went back (its data wiped?): reading everything again");
        }
        let all = bounded(client.get(
            self.prefix.to_string(),
            Some(GetOptions::new().with_prefix()),
        ))
        .await?;
        self.sink.replace(all.kvs());
        let (revision, term) = all
            .header()
            .map_or((0, 0), |h| (h.revision(), h.raft_term()));
        (self.revision, self.term) = (revision, term);
        Ok(())
    }
}

/// A key as text (keys that are not UTF-8 are shown lossily, and never match a layout).
pub fn key_text(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoints("etcd://10.0.0.5:2379,etcd-2.lan:2379").unwrap(),
            ["10.0.0.5:2379", "etcd-2.lan:2379"]
        );
        assert_eq!(
            parse_endpoints("etcd://[::1]:2379,etcd://h:1").unwrap(),
            ["[::1]:2379", "h:1"]
        );
        for bad in [
            "10.0.0.5:2379",
            "etcd://",
            "etcd://h",
            "etcd://h:0",
            "etcd://h:x",
            "etcd://a b:1",
        ] {
            assert!(parse_endpoints(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let first: Vec<_> = (0..7).map(|_| b.pause().as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(250));
    }

    #[test]
    fn sessions_take_the_endpoints_in_turn() {
        let cfg = RegistryConfig::plain(vec!["a:1".into(), "b:2".into(), "c:3".into()]);
        let turns: Vec<String> = (0..4).map(|t| cfg.url_of_turn(t)).collect();
        assert_eq!(
            turns,
            ["http://a:1", "http://b:2", "http://c:3", "http://a:1"]
        );
    }

    #[test]
    fn secrets_are_masked() {
        let cfg = RegistryConfig {
            user: Some(("me".into(), Secret("hunter2".into()))),
            ..RegistryConfig::plain(vec!["h:1".into()])
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(cfg.urls(), ["http://h:1"]);
    }
}
