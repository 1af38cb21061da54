//! DNS SRV discovery: backends from SRV records served by an existing system (Consul, CoreDNS,
//! Kubernetes, dnsmasq...), re-resolved when their TTL ends (with a floor), through
//! hickory-resolver. Changes replace the endpoint set; open connections are not touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BackendKind, Endpoint, EndpointSet};

/// Shortest pause between two resolutions, whatever the TTL.
pub const TTL_FLOOR: Duration = Duration::from_secs(1);
/// Longest pause between two resolutions.
const TTL_CAP: Duration = Duration::from_secs(300);
/// Pause after a failed resolution (the previous set stays).
const RETRY: Duration = Duration::from_secs(2);

/// A resolver for SRV discovery: the given DNS server, or the system's configuration.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let mut opts = ResolverOpts::default();
    // We re-resolve on TTL ourselves; a cache would only hide changes.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let builder = match server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    Ok(builder.with_options(opts).build())
}

/// Resolves `name` once: every SRV target's addresses with the record's port and weight, and
/// the TTL of the answer.
pub async fn resolve(
    resolver: &TokioResolver,
    name: &str,
    kind: BackendKind,
) -> Result<(Vec<Endpoint>, Duration), ResolveError> {
    let srv = resolver.srv_lookup(name).await?;
    let ttl = srv
        .as_lookup()
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    // Lowest priority value wins (RFC 2782); weight spreads load inside it.
    let best = srv.iter().map(|r| r.priority()).min();
    let mut out = Vec::new();
    for rec in srv.iter().filter(|r| Some(r.priority()) == best) {
        let target = rec.target().to_utf8();
        let ips = resolver.lookup_ip(target.as_str()).await?;
        for ip in ips.iter() {
            out.push(Endpoint {
                addr: kind.addr(SocketAddr::new(ip, rec.port())),
                weight: u32::from(rec.weight()).max(1),
            });
        }
    }
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    Ok((out, ttl))
}

/// Keeps `set` equal to what `name` resolves to, until `cancel` fires.
pub async fn run(
    resolver: TokioResolver,
    name: String,
    kind: BackendKind,
    set: Arc<EndpointSet>,
    cancel: CancellationToken,
) {
    loop {
        let pause = match resolve(&resolver, &name, kind).await {
            Ok((endpoints, ttl)) => {
                if set.replace(endpoints.clone()) {
                    let list = endpoints
                        .iter()
                        .map(|e| e.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    info!(%name, backends = %list, "SRV backends changed");
                }
                ttl.clamp(TTL_FLOOR, TTL_CAP)
            }
            Err(e) => {
                warn!(%name, error = %e, "SRV lookup failed; keeping the previous backends");
                RETRY
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
