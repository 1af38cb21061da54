//! `ambassador ls`: browse the mesh like `avahi-browse` does, and print what is announced.

use std::fmt::Write as _;
use std::time::Duration;

use mdns_sd::ServiceEvent;
use serde::Serialize;

use crate::cli::{Common, LsArgs};
use crate::config::{existing_mesh_key, registry_flags};
use crate::discovery::mdns::{Mdns, instance_from_resolved, run_queries};
use crate::discovery::query::Resolved;
use crate::discovery::{Instance, Registry};
use crate::error::Failure;
use crate::identity::MeshRoot;
use crate::names::MeshId;

/// One row of the listing.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The instance as discovery saw it.
    #[serde(flatten)]
    pub instance: Instance,
    /// Whether its mesh id is ours (`None` when this host has no mesh key).
    pub mesh_match: Option<bool>,
    /// Another record announces the same instance name with another certificate: two nodes
    /// were given one `--node` (both usable, told apart by certificate).
    pub name_conflict: bool,
}

/// This host's mesh id, if a key is configured or the default key exists. Never creates a key.
fn own_mesh_id(common: &Common) -> Result<Option<MeshId>, Failure> {
    existing_mesh_key(common)?
        .map(|k| {
            MeshRoot::derive(&k)
                .map(|root| root.mesh_id().clone())
                .map_err(|e| Failure::Runtime(e.into()))
        })
        .transpose()
}

/// Browses for `timeout` and returns every instance seen (and not withdrawn meanwhile).
pub async fn browse(interfaces: &[String], timeout: Duration) -> Result<Vec<Instance>, Failure> {
    let mdns = Mdns::new(interfaces, None).map_err(|e| Failure::Runtime(e.into()))?;
    let rx = mdns.browse().map_err(|e| Failure::Runtime(e.into()))?;
    // The registry merges repeated resolutions (IPv4, IPv6, loopback) as a running node does.
    let seen = Registry::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let events = async {
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, rx.recv_async()).await {
            match ev {
                ServiceEvent::ServiceResolved(rs) => {
                    if let Ok(inst) = instance_from_resolved(&rs) {
                        seen.upsert(inst);
                    }
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    seen.remove(&fullname);
                }
                _ => {}
            }
        }
    };
    // One-shot unicast queries too: every responder answers them at once, even two nodes
    // sharing one name (whose multicast answers suppress each other).
    let cancel = tokio_util::sync::CancellationToken::new();
    let answers = |r: Resolved| {
        if let Ok(inst) = r.instance {
            seen.upsert(inst);
        }
    };
    let queries = async {
        let _ = tokio::time::timeout_at(deadline, run_queries(interfaces, answers, cancel)).await;
    };
    tokio::join!(events, queries);
    mdns.shutdown().await;
    Ok(seen.all())
}

/// With `--registry`, the mesh's records in etcd joined to `found` (one instance named alike
/// by both sources is one row); an unreachable registry is a warning, not a failure.
async fn with_registry(
    common: &Common,
    mesh: Option<&MeshId>,
    found: Vec<Instance>,
) -> Result<Vec<Instance>, Failure> {
    let Some(cfg) = registry_flags(common)? else {
        return Ok(found);
    };
    let Some(mesh) = mesh else {
        tracing::warn!(
            "no mesh key on this host: the etcd registry is not read (its keys are per mesh)"
        );
        return Ok(found);
    };
    let seen = Registry::default();
    for i in found {
        seen.upsert(i);
    }
    match crate::discovery::etcd::mesh::read(&cfg, mesh).await {
        Ok(list) => {
            for i in list {
                seen.upsert(i);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the etcd registry: listing mDNS only"),
    }
    Ok(seen.all())
}

/// The rows as a table for a person.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<24} {:>6} {:>6}  {:<10} {:<6} ADDRESSES",
        "SERVICE", "NODE", "PORT", "QUIC", "MESH", "HEALTH"
    );
    for r in rows {
        let i = &r.instance;
        let mesh = match r.mesh_match {
            Some(true) => "ours".to_string(),
            Some(false) => format!("other:{}", &i.mesh.as_str()[..6]),
            None => i.mesh.as_str()[..6].to_string(),
        };
        let addrs = i
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let health = if i.up { "up" } else { "down" };
        let conflict = if r.name_conflict {
            "  (name conflict: another node uses this name)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:>6} {:>6}  {:<10} {:<6} {addrs}{conflict}",
            i.service.as_str(),
            i.node.as_str(),
            i.port,
            i.quic_port,
            mesh,
            health
        );
    }
    out
}

/// Runs `ambassador ls`: mDNS for `--timeout`, and the etcd registry with `--registry`.
pub async fn run(common: &Common, args: &LsArgs) -> Result<(), Failure> {
    let mesh = own_mesh_id(common)?;
    let all = if common.no_mdns {
        if registry_flags(common)?.is_none() {
            return Err(Failure::usage(
                "with mDNS off (--no-mdns) `ls` has only --registry etcd://HOST:PORT to read: add it",
            ));
        }
        Vec::new()
    } else {
        browse(&common.interfaces, args.timeout).await?
    };
    let all = with_registry(common, mesh.as_ref(), all).await?;
    let shared = |i: &Instance| {
        all.iter()
            .any(|o| o.fullname == i.fullname && o.fingerprint != i.fingerprint)
    };
    let rows: Vec<Row> = all
        .iter()
        .map(|instance| Row {
            mesh_match: mesh.as_ref().map(|m| *m == instance.mesh),
            name_conflict: shared(instance),
            instance: instance.clone(),
        })
        .collect();
    if args.json {
        return crate::commands::write_json(&rows);
    }
    let out = table(&rows);
    if rows.is_empty() {
        eprintln!("no ambassador service found within {:?}", args.timeout);
    }
    crate::commands::write_stdout(out.as_bytes())
}
